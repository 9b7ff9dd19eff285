"""A synthetic RDMA fabric in a sysfs tree, for demos (``jobsight up``), benchmarks and tests.

:func:`write_fabric` lays out ``<root>/class/infiniband/mlx5_<i>/`` for ``hcas`` ConnectX-7-like
HCAs with ``ports`` ports each, in the kernel's formats: PMA ``counters/``, mlx5 ``hw_counters/``
(with the RoCE congestion counters on Ethernet ports) and ``gid_attrs/ndevs`` for RoCE netdevs.
:func:`advance` moves the counters on as if ``seconds`` of traffic had passed, and
:func:`set_link` takes a port down or up. Point the exporter at ``root`` with ``--path.sysfs``.

Files are replaced atomically (write a hidden temporary file, then rename), so an exporter
scraping at the same time never reads a half-written value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from exporters.rdma.names import PORT_COUNTERS
from exporters.rdma.sysfs import CLASS_DIR, U64_MAX, parse_rate

LINK_LAYERS = ("InfiniBand", "Ethernet")
_RATE_NAMES = {100: "4X EDR", 200: "4X HDR", 400: "4X NDR", 800: "4X XDR"}
MTU_BYTES = 4096
SIMULATED_BOARD_ID = "jobsight-simulated"

# mlx5 q-counters and extended error counters (present on every mlx5 port).
MLX5_COUNTERS = (
    "rx_write_requests", "rx_read_requests", "rx_atomic_requests", "rx_dct_connect", "out_of_buffer",
    "out_of_sequence", "duplicate_request", "rnr_nak_retry_err", "packet_seq_err", "implied_nak_seq_err",
    "local_ack_timeout_err", "resp_local_length_error", "resp_cqe_error", "req_cqe_error",
    "req_remote_invalid_request", "req_remote_access_errors", "resp_remote_access_errors",
    "resp_cqe_flush_error", "req_cqe_flush_error", "req_transport_retries_exceeded",
    "req_rnr_retries_exceeded",
)  # fmt: skip
# RoCE acceleration and congestion-control counters (Ethernet ports only).
MLX5_ROCE_COUNTERS = (
    "roce_adp_retrans", "roce_adp_retrans_to", "roce_slow_restart", "roce_slow_restart_cnps",
    "roce_slow_restart_trans", "rp_cnp_ignored", "rp_cnp_handled", "np_ecn_marked_roce_packets",
    "np_cnp_sent", "rx_icrc_encapsulated",
)  # fmt: skip


@dataclass(frozen=True)
class SimPort:
    device: str
    port: str
    link_layer: str
    netdev: str


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def _netdev(hca: int, port: int) -> str:
    return f"enp{65 + hca}s0f{port - 1}np{port - 1}"


def write_fabric(
    root: str | Path,
    hcas: int = 2,
    ports: int = 1,
    *,
    link_layer: str = "Ethernet",
    rate_gbps: int = 200,
    hw_counters: bool = True,
) -> list[SimPort]:
    """Write ``hcas`` x ``ports`` active ports with zeroed counters under ``<root>/class/infiniband``
    (``root`` plays /sys). ``link_layer`` is ``Ethernet`` (RoCE, with netdevs and congestion
    counters) or ``InfiniBand``; ``hw_counters=False`` leaves out the mlx5 driver counters (as on
    non-mlx5 HCAs). Returns the ports written; rewriting resets the counters."""
    if link_layer not in LINK_LAYERS:
        raise ValueError(f"link_layer must be one of {LINK_LAYERS}, not {link_layer!r}")
    if hcas < 1 or ports < 1:
        raise ValueError("hcas and ports must be at least 1")
    base = Path(root) / CLASS_DIR
    written = []
    for hca in range(hcas):
        device = f"mlx5_{hca}"
        dev_dir = base / device
        # Clearly labelled: node_infiniband_info{board_id="jobsight-simulated"} on every dashboard.
        _write(dev_dir / "board_id", SIMULATED_BOARD_ID)
        _write(dev_dir / "fw_ver", "28.39.1002")
        _write(dev_dir / "hca_type", "MT4129")
        _write(dev_dir / "node_type", "1: CA")
        _write(dev_dir / "node_guid", f"b83f:d203:00{hca:02x}:0000")
        for number in range(1, ports + 1):
            port_dir = dev_dir / "ports" / str(number)
            _write(port_dir / "state", "4: ACTIVE")
            _write(port_dir / "phys_state", "5: LinkUp")
            _write(port_dir / "rate", f"{rate_gbps} Gb/sec ({_RATE_NAMES.get(rate_gbps, '4X')})")
            _write(port_dir / "link_layer", link_layer)
            _write(port_dir / "lid", f"0x{(hca * ports + number) if link_layer == 'InfiniBand' else 0:x}")
            for spec in PORT_COUNTERS:
                _write(port_dir / "counters" / spec.file, "0")
            if hw_counters:
                hw = MLX5_COUNTERS + (MLX5_ROCE_COUNTERS if link_layer == "Ethernet" else ())
                for name in hw:
                    _write(port_dir / "hw_counters" / name, "0")
                _write(port_dir / "hw_counters" / "lifespan", "10")
            netdev = ""
            if link_layer == "Ethernet":
                netdev = _netdev(hca, number)
                for gid, kind in ((0, "IB/RoCE v1"), (1, "RoCE v2")):
                    _write(port_dir / "gid_attrs" / "ndevs" / str(gid), netdev)
                    _write(port_dir / "gid_attrs" / "types" / str(gid), kind)
            written.append(SimPort(device, str(number), link_layer, netdev))
    return written


def _ports(root: str | Path, devices: Iterable[str] | None) -> list[Path]:
    base = Path(root) / CLASS_DIR
    wanted = set(devices) if devices is not None else None
    found = []
    for dev_dir in sorted(base.iterdir()):
        if wanted is not None and dev_dir.name not in wanted:
            continue
        found.extend(sorted((dev_dir / "ports").iterdir()))
    return found


def _bump(path: Path, amount: int) -> None:
    if amount <= 0 or not path.exists():
        return
    value = int(path.read_text().strip() or 0)
    _write(path, str((value + amount) & U64_MAX))


def advance(
    root: str | Path,
    seconds: float,
    *,
    utilisation: float = 0.5,
    congestion: float = 0.0,
    errors: float = 0.0,
    devices: Iterable[str] | None = None,
) -> None:
    """Move every active port's counters on by ``seconds`` of traffic.

    ``utilisation`` (0-1) of the port rate is sent and received; ``congestion`` (0-1) is the share
    of packets ECN-marked (RoCE: ECN marks, CNPs sent and handled) and drives ``port_xmit_wait``;
    ``errors`` is link and transport errors per second (symbol errors, out-of-sequence,
    packet-sequence and ack-timeout errors). ``devices`` limits it to some HCAs. Down ports only
    see their counters stand still.
    """
    if seconds < 0:
        raise ValueError("seconds must not be negative")
    for port_dir in _ports(root, devices):
        if not (port_dir / "state").read_text().startswith("4:"):
            continue
        rate = parse_rate((port_dir / "rate").read_text())
        data_bytes = int(rate * utilisation * seconds)
        packets = data_bytes // MTU_BYTES
        counters = port_dir / "counters"
        hw = port_dir / "hw_counters"
        for direction in ("xmit", "rcv"):
            _bump(counters / f"port_{direction}_data", data_bytes // 4)  # the PMA counts 4-octet words
            _bump(counters / f"port_{direction}_packets", packets)
            _bump(counters / f"unicast_{direction}_packets", packets)
        _bump(counters / "port_xmit_wait", int(congestion * seconds * 1_000_000))
        _bump(hw / "rx_write_requests", packets // 2)
        _bump(hw / "rx_read_requests", packets // 8)
        marked = int(packets * congestion * 0.01)
        _bump(hw / "np_ecn_marked_roce_packets", marked)
        _bump(hw / "np_cnp_sent", marked * 98 // 100)
        _bump(hw / "rp_cnp_handled", marked * 97 // 100)
        error_count = int(errors * seconds)
        _bump(counters / "symbol_error", error_count)
        _bump(hw / "out_of_sequence", error_count)
        _bump(hw / "packet_seq_err", error_count // 2)
        _bump(hw / "local_ack_timeout_err", error_count // 4)


def set_link(root: str | Path, device: str, port: int | str, up: bool) -> None:
    """Take a port down (``1: DOWN`` / ``3: Disabled``, and ``link_downed`` + 1) or bring it back up."""
    port_dir = Path(root) / CLASS_DIR / device / "ports" / str(port)
    if not port_dir.is_dir():
        raise ValueError(f"no simulated port {device}/{port} under {root}")
    was_up = (port_dir / "state").read_text().startswith("4:")
    _write(port_dir / "state", "4: ACTIVE" if up else "1: DOWN")
    _write(port_dir / "phys_state", "5: LinkUp" if up else "3: Disabled")
    if was_up and not up:
        _bump(port_dir / "counters" / "link_downed", 1)
