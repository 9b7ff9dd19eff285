from __future__ import annotations

from pathlib import Path

import pytest

from exporters.rdma import names
from exporters.rdma.collector import RdmaCollector
from exporters.rdma.simulate import advance, set_link, write_fabric
from exporters.rdma.sysfs import InfinibandReader


def _collector(root: Path) -> RdmaCollector:
    return RdmaCollector(InfinibandReader(root, static_ttl=0))


def _values(collector: RdmaCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def _get(
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


def test_fabric_layout_reads_cleanly(tmp_path: Path) -> None:
    ports = write_fabric(tmp_path, hcas=3, ports=2, link_layer="Ethernet", rate_gbps=400)
    assert [(p.device, p.port) for p in ports] == [(f"mlx5_{h}", str(n)) for h in range(3) for n in (1, 2)]
    collector = _collector(tmp_path)
    values = _values(collector)
    assert collector.read_errors.snapshot() == {}
    assert _get(values, names.RATE_METRIC, device="mlx5_2", port="2") == 400 * 125_000_000
    assert _get(values, names.PORT_INFO_METRIC, device="mlx5_1", port="2", link_layer="Ethernet",
                netdev=ports[3].netdev) == 1  # fmt: skip
    assert _get(values, "node_infiniband_np_cnp_packets_sent_total", device="mlx5_0", port="1") == 0
    assert _get(values, names.LIFESPAN_METRIC, device="mlx5_0", port="1") == 0


def test_infiniband_fabric_has_no_roce_counters_or_netdev(tmp_path: Path) -> None:
    write_fabric(tmp_path, hcas=1, ports=1, link_layer="InfiniBand")
    values = _values(_collector(tmp_path))
    assert _get(values, "node_infiniband_np_cnp_packets_sent_total", device="mlx5_0", port="1") is None
    assert (
        _get(values, names.PORT_INFO_METRIC, device="mlx5_0", port="1", link_layer="InfiniBand", netdev="")
        == 1
    )


def test_fabric_without_hw_counters(tmp_path: Path) -> None:
    write_fabric(tmp_path, hcas=1, ports=1, hw_counters=False)
    advance(tmp_path, 1, congestion=0.5, errors=10)  # no hw_counters files to bump: nothing breaks
    values = _values(_collector(tmp_path))
    assert _get(values, names.LIFESPAN_METRIC, device="mlx5_0", port="1") is None
    assert _get(values, "node_infiniband_symbol_error_total", device="mlx5_0", port="1") == 10
    assert not any(name.startswith("node_infiniband_out_of") for name, _ in values)


def test_advance_moves_counters_by_rate_and_utilisation(tmp_path: Path) -> None:
    write_fabric(tmp_path, hcas=2, ports=1, rate_gbps=200)
    collector = _collector(tmp_path)
    advance(tmp_path, 10, utilisation=0.25, congestion=0.5, errors=3)
    values = _values(collector)
    sent = _get(values, "node_infiniband_port_data_transmitted_bytes_total", device="mlx5_1", port="1")
    assert sent == 200 * 125_000_000 * 0.25 * 10  # bytes; stored as words and multiplied back
    assert _get(values, "node_infiniband_symbol_error_total", device="mlx5_0", port="1") == 30
    marked = _get(
        values, "node_infiniband_np_ecn_marked_roce_packets_received_total", device="mlx5_0", port="1"
    )
    assert marked is not None and marked > 0
    advance(tmp_path, 10, utilisation=0.25, devices=["mlx5_0"])
    again = _values(collector)
    assert (
        _get(again, "node_infiniband_port_data_transmitted_bytes_total", device="mlx5_0", port="1")
        == 2 * sent
    )
    assert _get(again, "node_infiniband_port_data_transmitted_bytes_total", device="mlx5_1", port="1") == sent


def test_set_link_down_counts_link_downed_and_freezes_traffic(tmp_path: Path) -> None:
    write_fabric(tmp_path, hcas=1, ports=2)
    set_link(tmp_path, "mlx5_0", 2, up=False)
    set_link(tmp_path, "mlx5_0", 2, up=False)  # already down: no second link_downed
    advance(tmp_path, 5)
    values = _values(_collector(tmp_path))
    assert _get(values, names.STATE_METRIC, device="mlx5_0", port="2") == 1
    assert _get(values, names.PHYS_STATE_METRIC, device="mlx5_0", port="2") == 3
    assert _get(values, "node_infiniband_link_downed_total", device="mlx5_0", port="2") == 1
    assert _get(values, "node_infiniband_port_data_transmitted_bytes_total", device="mlx5_0", port="2") == 0
    assert _get(values, "node_infiniband_port_data_transmitted_bytes_total", device="mlx5_0", port="1") > 0  # type: ignore[operator]
    set_link(tmp_path, "mlx5_0", 2, up=True)
    assert _get(_values(_collector(tmp_path)), names.STATE_METRIC, device="mlx5_0", port="2") == 4


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="link_layer"):
        write_fabric(tmp_path, link_layer="iWARP")
    with pytest.raises(ValueError, match="at least 1"):
        write_fabric(tmp_path, hcas=0)
    write_fabric(tmp_path)
    with pytest.raises(ValueError, match="negative"):
        advance(tmp_path, -1)
    with pytest.raises(ValueError, match="no simulated port"):
        set_link(tmp_path, "mlx5_9", 1, up=False)


def test_simulated_devices_say_so(tmp_path: Path) -> None:
    write_fabric(tmp_path, hcas=1)
    values = _values(_collector(tmp_path))
    info = [labels for name, labels in values if name == names.INFO_METRIC]
    assert info and all(dict(labels)["board_id"] == "jobsight-simulated" for labels in info)
