"""The collector on fixture trees, read through a fresh CollectorRegistry per test."""

from __future__ import annotations

import shutil
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from exporters.rdma import names
from exporters.rdma.collector import RdmaCollector
from exporters.rdma.filters import DeviceFilter
from exporters.rdma.sysfs import InfinibandReader
from tests.support import promtool_check_metrics


def _registry(
    root: Path, device_filter: DeviceFilter | None = None
) -> tuple[CollectorRegistry, RdmaCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = RdmaCollector(InfinibandReader(root), device_filter)
    registry.register(collector)
    return registry, collector


def _raw(root: Path, *parts: str) -> int:
    return int(root.joinpath("class/infiniband", *parts).read_text())


def _port(device: str, port: str = "1") -> dict[str, str]:
    return {"device": device, "port": port}


def test_port_gauges(good_root: Path) -> None:
    registry, _ = _registry(good_root)
    get = registry.get_sample_value
    assert get(names.STATE_METRIC, _port("mlx5_1", "2")) == 1
    assert get(names.PHYS_STATE_METRIC, _port("mlx5_1", "2")) == 3
    assert get(names.STATE_METRIC, _port("mlx5_0")) == 4
    assert get(names.RATE_METRIC, _port("mlx5_0")) == 200 * 125_000_000
    assert get(names.RATE_METRIC, _port("mlx5_1", "2")) == 312_500_000


def test_info_metric_keeps_empty_optional_attributes(good_root: Path) -> None:
    registry, _ = _registry(good_root)
    labels = {"device": "hfi1_0", "board_id": "Intel Omni-Path Host Fabric Interface Adapter 100 Series",
              "firmware_version": "1.27.0", "hca_type": ""}  # fmt: skip
    assert registry.get_sample_value(names.INFO_METRIC, labels) == 1


def test_data_counters_are_words_times_four(good_root: Path) -> None:
    registry, _ = _registry(good_root)
    words = _raw(good_root, "mlx5_0", "ports/1/counters/port_xmit_data")
    assert registry.get_sample_value(
        "node_infiniband_port_data_transmitted_bytes_total", _port("mlx5_0")
    ) == float(words * 4)
    packets = _raw(good_root, "mlx5_0", "ports/1/counters/port_xmit_packets")
    assert (
        registry.get_sample_value("node_infiniband_port_packets_transmitted_total", _port("mlx5_0"))
        == packets
    )


def test_legacy_counters_ext(good_root: Path) -> None:
    registry, _ = _registry(good_root)
    words = _raw(good_root, "mlx4_0", "ports/2/counters_ext/port_rcv_data_64")
    assert registry.get_sample_value(
        "node_infiniband_legacy_data_received_bytes_total", _port("mlx4_0", "2")
    ) == (words * 4)
    assert registry.get_sample_value(
        "node_infiniband_legacy_multicast_packets_received_total", _port("mlx4_0", "2")
    ) == _raw(good_root, "mlx4_0", "ports/2/counters_ext/port_multicast_rcv_packets")
    # only the old layout has them
    assert (
        registry.get_sample_value("node_infiniband_legacy_data_received_bytes_total", _port("mlx5_0")) is None
    )


def test_mlx5_hw_counters_and_lifespan(good_root: Path) -> None:
    registry, _ = _registry(good_root)
    get = registry.get_sample_value
    for file, metric in [
        ("np_ecn_marked_roce_packets", "node_infiniband_np_ecn_marked_roce_packets_received_total"),
        ("np_cnp_sent", "node_infiniband_np_cnp_packets_sent_total"),
        ("rp_cnp_handled", "node_infiniband_rp_cnp_packets_handled_total"),
        ("out_of_buffer", "node_infiniband_out_of_buffer_drops_total"),
        ("out_of_sequence", "node_infiniband_out_of_sequence_packets_received_total"),
        ("packet_seq_err", "node_infiniband_packet_sequence_errors_total"),
        ("local_ack_timeout_err", "node_infiniband_local_ack_timeout_errors_total"),
    ]:
        assert get(metric, _port("mlx5_1", "2")) == _raw(good_root, "mlx5_1", "ports/2/hw_counters", file), (
            metric
        )
    # lifespan 12 ms -> 0 s: node_exporter's integer division, kept for identical values
    assert get(names.LIFESPAN_METRIC, _port("mlx5_0")) == 0
    # congestion counters exist only where the driver has them (RoCE), never as 0 elsewhere
    assert get("node_infiniband_np_cnp_packets_sent_total", _port("mlx5_0")) is None
    assert get("node_infiniband_out_of_buffer_drops_total", _port("hfi1_0")) is None


def test_port_info_link_layer_and_netdev(good_root: Path) -> None:
    registry, _ = _registry(good_root)
    get = registry.get_sample_value

    def info(device: str, link_layer: str, netdev: str) -> float | None:
        labels = {"device": device, "port": "1", "link_layer": link_layer, "netdev": netdev}
        return get(names.PORT_INFO_METRIC, labels)

    assert info("mlx5_1", "Ethernet", "enp65s0f0np0") == 1
    assert info("mlx5_0", "InfiniBand", "ib0") == 1
    assert info("hfi1_0", "InfiniBand", "") == 1


def test_no_pma_drops_series_and_counts(good_root: Path) -> None:
    registry, _ = _registry(good_root)
    errors = {"device": "i40iw0", "port": "1", "file": "counters/symbol_error"}
    assert registry.get_sample_value(names.READ_ERRORS_METRIC, errors) == 1  # first scrape
    assert registry.get_sample_value("node_infiniband_symbol_error_total", _port("i40iw0")) is None
    assert registry.get_sample_value(names.STATE_METRIC, _port("i40iw0")) == 4


def test_read_errors_persist_and_grow_across_scrapes(broken_root: Path) -> None:
    registry, _ = _registry(broken_root)
    key = {"device": "mlx5_0", "port": "1", "file": "counters/symbol_error"}
    assert registry.get_sample_value(names.READ_ERRORS_METRIC, key) == 1
    assert registry.get_sample_value(names.READ_ERRORS_METRIC, key) == 2
    assert (
        registry.get_sample_value(names.READ_ERRORS_METRIC, {**key, "file": "rate", "device": "mlx5_1"}) == 3
    )


def test_one_bad_file_drops_only_its_series(broken_root: Path) -> None:
    registry, _ = _registry(broken_root)
    get = registry.get_sample_value
    assert get("node_infiniband_symbol_error_total", _port("mlx5_0")) is None
    assert get("node_infiniband_link_downed_total", _port("mlx5_0")) is None
    assert get(names.STATE_METRIC, _port("mlx5_0")) is None
    assert get(names.PHYS_STATE_METRIC, _port("mlx5_0")) == 5
    assert get("node_infiniband_port_errors_received_total", _port("mlx5_0")) == _raw(
        broken_root, "mlx5_0", "ports/1/counters/port_rcv_errors"
    )
    assert get("node_infiniband_out_of_sequence_packets_received_total", _port("mlx5_0")) == 12
    # missing rate: no rate series, the rest of the port is there
    assert get(names.RATE_METRIC, _port("mlx5_1")) is None
    assert get(names.STATE_METRIC, _port("mlx5_1")) == 4
    assert get(names.RATE_METRIC, _port("mlx5_2")) == 400 * 125_000_000


def test_a_device_that_fails_entirely_does_not_hide_the_others(broken_root: Path, tmp_path: Path) -> None:
    class ExplodingReader(InfinibandReader):
        def read_device(self, name: str):  # type: ignore[no-untyped-def]
            if name == "mlx5_1":
                raise RuntimeError("driver bug")
            return super().read_device(name)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RdmaCollector(ExplodingReader(broken_root)))
    failed = {"device": "mlx5_1", "port": "", "file": ""}
    assert registry.get_sample_value(names.READ_ERRORS_METRIC, failed) == 1  # first scrape
    assert registry.get_sample_value(names.STATE_METRIC, _port("mlx5_2")) == 4
    assert registry.get_sample_value(names.STATE_METRIC, _port("mlx5_1")) is None


def test_include_and_exclude(good_root: Path) -> None:
    registry, _ = _registry(good_root, DeviceFilter(include="^mlx5_"))
    output = generate_latest(registry).decode()
    assert 'device="mlx5_1"' in output
    assert 'device="hfi1_0"' not in output and 'device="i40iw0"' not in output
    registry, _ = _registry(good_root, DeviceFilter(exclude="i40iw"))
    output = generate_latest(registry).decode()
    assert 'device="i40iw0"' not in output  # nor its N/A read errors
    assert 'device="hfi1_0"' in output


def test_device_removed_takes_its_series_with_it(good_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "sys"
    shutil.copytree(good_root, root)
    registry, _ = _registry(root)
    assert registry.get_sample_value(names.STATE_METRIC, _port("mlx5_0")) == 4
    shutil.rmtree(root / "class/infiniband/mlx5_0")
    assert registry.get_sample_value(names.STATE_METRIC, _port("mlx5_0")) is None
    assert registry.get_sample_value(names.STATE_METRIC, _port("mlx5_1")) == 4


def test_host_without_rdma_has_only_the_error_family(tmp_path: Path) -> None:
    registry, _ = _registry(tmp_path)
    output = generate_latest(registry).decode()
    assert "node_infiniband" not in output
    assert f"# TYPE {names.READ_ERRORS_METRIC} counter" in output


def test_wrapped_scaling_matches_uint64(tmp_path: Path) -> None:
    counters = tmp_path / "class/infiniband/mlx5_0/ports/1/counters"
    counters.mkdir(parents=True)
    (counters / "port_rcv_data").write_text(f"{2**63 + 5}\n")
    registry, _ = _registry(tmp_path)
    # procfs does *4 in uint64: (2^63 + 5) * 4 mod 2^64 = 20
    assert registry.get_sample_value("node_infiniband_port_data_received_bytes_total", _port("mlx5_0")) == 20


def test_exposition_passes_promtool(good_root: Path, broken_root: Path) -> None:
    for root in (good_root, broken_root):
        registry, _ = _registry(root)
        assert promtool_check_metrics(generate_latest(registry).decode()) == []


def test_docs_list_every_metric_name() -> None:
    from tests.support import REPO_ROOT

    doc = (REPO_ROOT / "docs/metrics/rdma.md").read_text()
    missing = [name for name in names.all_metric_names() if f"`{name}`" not in doc]
    assert missing == []


def test_unlistable_class_directory_fails_the_collector_not_the_scrape(tmp_path: Path) -> None:
    from jobsight.serving import CollectorSet

    (tmp_path / "class").mkdir()
    (tmp_path / "class/infiniband").write_text("not a directory\n")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorSet({"rdma": RdmaCollector(InfinibandReader(tmp_path))}))
    assert registry.get_sample_value("jobsight_scrape_collector_success", {"collector": "rdma"}) == 0


def test_concurrent_scrapes_count_every_error_once_each(broken_root: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    collector = RdmaCollector(InfinibandReader(broken_root))
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: list(collector.collect()), range(20)))
    counts = collector.read_errors.snapshot()
    assert counts[("mlx5_0", "1", "counters/symbol_error")] == 20
    assert set(counts.values()) == {20}
