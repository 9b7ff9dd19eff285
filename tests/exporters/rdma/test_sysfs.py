"""The sysfs reader: kernel formats, per-file problems, the static cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from exporters.rdma.sysfs import (
    InfinibandReader,
    ReadProblem,
    Unsupported,
    parse_counter,
    parse_rate,
    parse_state,
)
from jobsight.errors import BackendUnavailable


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0\n", 0),
        ("4631917\n", 4631917),
        ("18446744073709551615\n", 2**64 - 1),
        ("  12  ", 12),
    ],
)
def test_parse_counter_accepts_u64(text: str, expected: int) -> None:
    assert parse_counter(text) == expected


@pytest.mark.parametrize("text", ["garbage", "-1", "", "1 2", "18446744073709551616", "+5", "1.5", "٣"])
def test_parse_counter_rejects_non_u64(text: str) -> None:
    with pytest.raises(ValueError):
        parse_counter(text)


def test_parse_counter_no_pma_is_unsupported() -> None:
    with pytest.raises(Unsupported):
        parse_counter("N/A (no PMA)\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4: ACTIVE\n", 4), ("1: DOWN", 1), ("5: LinkUp\n", 5), ("0: NOP", 0), ("3: Disabled", 3)],
)
def test_parse_state(text: str, expected: int) -> None:
    assert parse_state(text) == expected


@pytest.mark.parametrize("text", ["ACTIVE", "4: ACTIVE: more", "x: ACTIVE", "-1: DOWN", ": DOWN"])
def test_parse_state_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_state(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the values procfs' own tests use
        ("100 Gb/sec (4X EDR)\n", 12_500_000_000),
        ("25 Gb/sec (1X EDR)", 3_125_000_000),
        ("2.5 Gb/sec (1X SDR)", 312_500_000),
        ("500 Gb/sec (4X HDR)", 62_500_000_000),
        ("0 GB/sec", 0),
        ("10 Gb/sec (4X)", 1_250_000_000),
    ],
)
def test_parse_rate(text: str, expected: int) -> None:
    assert parse_rate(text) == expected


def test_parse_rate_rounds_through_float32_like_procfs() -> None:
    # procfs parses with bitSize 32: the float32 nearest 13.64 is 13.640000343322754 (0x415A3D71),
    # times 125e6 is 1705000042.9, truncated. float64 would give 1705000000.
    assert parse_rate("13.64 Gb/sec (4X FDR10)") == 1_705_000_042
    assert int(13.64 * 125_000_000) == 1_705_000_000


@pytest.mark.parametrize("text", ["fast", "100", "Gb/sec 100", "1e3 Gb/sec", "nan Gb/sec", ".5 Gb/sec", ""])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_reads_good_fixture(good_root: Path) -> None:
    reader = InfinibandReader(good_root)
    assert reader.device_names() == ["hfi1_0", "i40iw0", "mlx4_0", "mlx5_0", "mlx5_1"]
    mlx5_1 = reader.read_device("mlx5_1")
    assert (mlx5_1.board_id, mlx5_1.firmware_version, mlx5_1.hca_type) == (
        "MT_0000000359",
        "22.36.1010",
        "MT4125",
    )
    assert [p.port for p in mlx5_1.ports] == ["1", "2"]
    port1 = mlx5_1.ports[0]
    assert (port1.state_id, port1.phys_state_id, port1.rate_bytes_per_second) == (4, 5, 12_500_000_000)
    assert (port1.link_layer, port1.netdev) == ("Ethernet", "enp65s0f0np0")
    assert port1.counters["hw_counters"]["np_ecn_marked_roce_packets"] == 51077
    assert port1.counters["counters"]["port_xmit_data"] == 4_197_052_100_007 + 11  # raw words, unscaled
    # a counter node_exporter does not know (kernel 6.x) is not read at all
    assert "req_transport_retries_exceeded" not in port1.counters["hw_counters"]
    assert mlx5_1.problems == []


def test_hfi1_has_no_hca_type_and_ignores_driver_specific_counters(good_root: Path) -> None:
    hfi1 = InfinibandReader(good_root).read_device("hfi1_0")
    assert hfi1.hca_type == ""
    assert hfi1.problems == []
    assert set(hfi1.ports[0].counters["hw_counters"]) == {"lifespan"}


def test_no_pma_counters_are_problems_not_values(good_root: Path) -> None:
    i40iw = InfinibandReader(good_root).read_device("i40iw0")
    assert i40iw.ports[0].counters == {}
    assert len(i40iw.problems) == 22
    assert {p.reason for p in i40iw.problems} == {"unsupported"}
    assert (
        ReadProblem("i40iw0", "1", "counters/symbol_error", "unsupported", "N/A (no PMA)") in i40iw.problems
    )


def test_broken_device_reports_each_bad_file(broken_root: Path) -> None:
    mlx5_0 = InfinibandReader(broken_root).read_device("mlx5_0")
    found = {(p.file, p.reason) for p in mlx5_0.problems}
    assert found == {
        ("state", "unparsable"),
        ("counters/symbol_error", "unparsable"),
        ("counters/link_downed", "unreadable"),  # a directory: EISDIR
        ("hw_counters/out_of_buffer", "unparsable"),
        ("hw_counters/packet_seq_err", "unparsable"),
    }
    port = mlx5_0.ports[0]
    assert port.state_id is None
    assert port.phys_state_id == 5  # the neighbours of a bad file are still read
    assert "symbol_error" not in port.counters["counters"]
    assert port.counters["counters"]["port_rcv_errors"] >= 0
    assert port.counters["hw_counters"]["out_of_sequence"] == 12


def test_missing_rate_and_ports(broken_root: Path) -> None:
    reader = InfinibandReader(broken_root)
    mlx5_1 = reader.read_device("mlx5_1")
    assert mlx5_1.ports[0].rate_bytes_per_second is None
    assert ReadProblem("mlx5_1", "1", "rate", "missing", "No such file or directory") in mlx5_1.problems
    assert mlx5_1.ports[0].state_id == 4
    mlx5_3 = reader.read_device("mlx5_3")
    assert mlx5_3.ports == []
    assert [(p.file, p.reason) for p in mlx5_3.problems] == [("ports", "missing")]
    mlx5_4 = reader.read_device("mlx5_4")
    assert [p.port for p in mlx5_4.ports] == ["1"]
    assert [(p.file, p.reason) for p in mlx5_4.problems] == [("ports/lost+found", "unparsable")]


def test_absent_optional_attributes_are_empty_without_problems(broken_root: Path) -> None:
    mlx5_2 = InfinibandReader(broken_root).read_device("mlx5_2")
    assert (mlx5_2.board_id, mlx5_2.firmware_version, mlx5_2.hca_type) == ("", "", "")
    assert mlx5_2.problems == []


def test_dangling_symlink_counter_is_missing(tmp_path: Path, good_root: Path) -> None:
    root = tmp_path / "sys"
    shutil.copytree(good_root / "class/infiniband/mlx5_0", root / "class/infiniband/mlx5_0")
    counter = root / "class/infiniband/mlx5_0/ports/1/counters/port_rcv_errors"
    counter.unlink()
    counter.symlink_to(tmp_path / "nowhere")
    device = InfinibandReader(root).read_device("mlx5_0")
    assert [(p.file, p.reason) for p in device.problems] == [("counters/port_rcv_errors", "missing")]


def test_no_class_directory_means_no_devices(tmp_path: Path) -> None:
    assert InfinibandReader(tmp_path).device_names() == []


def test_unlistable_class_directory_is_backend_unavailable(tmp_path: Path) -> None:
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "infiniband").write_text("not a directory\n")
    with pytest.raises(BackendUnavailable, match="cannot list"):
        InfinibandReader(tmp_path).device_names()


def test_netdev_is_first_gid_with_one_in_numeric_order(tmp_path: Path) -> None:
    ndevs = tmp_path / "class/infiniband/mlx5_0/ports/1/gid_attrs/ndevs"
    ndevs.mkdir(parents=True)
    (ndevs / "10").write_text("late0\n")
    (ndevs / "2").write_text("\n")  # a GID without a netdev
    (ndevs / "9").write_text("eth9\n")
    (ndevs / "3").mkdir()  # unreadable: skipped, not a problem
    device = InfinibandReader(tmp_path).read_device("mlx5_0")
    assert device.ports[0].netdev == "eth9"
    assert not [p for p in device.problems if "gid_attrs" in p.file]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _copy_device(src: Path, dst: Path, name: str) -> Path:
    target = dst / "class/infiniband" / name
    shutil.copytree(src / "class/infiniband" / name, target)
    return target


def test_static_files_are_cached_for_ttl_counters_never(tmp_path: Path, good_root: Path) -> None:
    device_dir = _copy_device(good_root, tmp_path, "mlx5_1")
    clock = FakeClock()
    reader = InfinibandReader(tmp_path, static_ttl=60.0, clock=clock)
    first = reader.read_device("mlx5_1")
    assert first.firmware_version == "22.36.1010"
    (device_dir / "fw_ver").write_text("22.99.0001\n")
    (device_dir / "ports/1/counters/symbol_error").write_text("777\n")
    os.remove(device_dir / "ports/1/gid_attrs/ndevs/1")
    clock.now += 59
    cached = reader.read_device("mlx5_1")
    assert cached.firmware_version == "22.36.1010"
    assert cached.ports[0].netdev == "enp65s0f0np0"
    assert cached.ports[0].counters["counters"]["symbol_error"] == 777
    clock.now += 2
    fresh = reader.read_device("mlx5_1")
    assert fresh.firmware_version == "22.99.0001"
    assert fresh.ports[0].netdev == "enp65s0f0np0"  # GID 2 has the same netdev


def test_static_cache_off(tmp_path: Path, good_root: Path) -> None:
    device_dir = _copy_device(good_root, tmp_path, "mlx5_0")
    reader = InfinibandReader(tmp_path, static_ttl=0)
    assert reader.read_device("mlx5_0").ports[0].link_layer == "InfiniBand"
    (device_dir / "ports/1/link_layer").write_text("Ethernet\n")
    assert reader.read_device("mlx5_0").ports[0].link_layer == "Ethernet"


def test_failed_static_read_is_not_cached(tmp_path: Path, good_root: Path) -> None:
    device_dir = _copy_device(good_root, tmp_path, "mlx5_0")
    (device_dir / "ports/1/link_layer").unlink()
    reader = InfinibandReader(tmp_path, static_ttl=60.0, clock=FakeClock())
    first = reader.read_device("mlx5_0")
    assert first.ports[0].link_layer == ""
    assert [(p.file, p.reason) for p in first.problems] == [("link_layer", "missing")]
    (device_dir / "ports/1/link_layer").write_text("InfiniBand\n")
    assert reader.read_device("mlx5_0").ports[0].link_layer == "InfiniBand"


def test_static_cache_forgets_devices_that_went_away(tmp_path: Path) -> None:
    from exporters.rdma.simulate import write_fabric

    write_fabric(tmp_path, hcas=40, ports=1, hw_counters=False)
    class_dir = tmp_path / "class/infiniband"
    clock = FakeClock()
    reader = InfinibandReader(tmp_path, static_ttl=60.0, clock=clock)
    for generation in range(6):
        # new names for all 40 devices each minute, as VFs that come and go would have
        for old in list(class_dir.iterdir()):
            old.rename(class_dir / f"vf{generation}_{old.name.rsplit('_', 1)[1]}")
        for name in reader.device_names():
            assert reader.read_device(name).firmware_version == "28.39.1002"
        clock.now += 61
    # 5 static entries per device (200 live); pruning keeps the map within twice the larger of the
    # live set and the 256-entry floor; without it the map would hold all 6 generations (1200).
    assert len(reader._static._values) <= 2 * 256
