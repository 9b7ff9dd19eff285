"""The node_exporter-compatible collectors on the fixture tree, and on broken copies of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporters.node.collectors import COLLECTOR_NAMES, NodeConfig, build_collectors
from exporters.node.cpu import CpuCollector, parse_cpu_list
from exporters.node.diskstats import DiskstatsCollector
from exporters.node.filters import NameFilter
from exporters.node.loadavg import LoadavgCollector
from exporters.node.meminfo import MeminfoCollector, parse_meminfo
from exporters.node.netdev import NetdevCollector
from exporters.node.pressure import PressureCollector
from exporters.node.stat import StatCollector
from exporters.node.uname import Uname, UnameCollector
from exporters.node.vmstat import VmstatCollector
from jobsight.errors import ConfigError
from tests.exporters.node.helpers import PROCFS, ROOTFS, SYSFS, UDEV, copy_fixtures, samples, scrape


def _config(procfs: Path = PROCFS, sysfs: Path = SYSFS, **kwargs: object) -> NodeConfig:
    return NodeConfig(procfs=str(procfs), sysfs=str(sysfs), rootfs=str(ROOTFS), udev_data=str(UDEV),
                      **kwargs)  # type: ignore[arg-type]


def _success(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return found[("node_scrape_collector_success", (("collector", name),))]


def test_cpu_seconds_are_user_hz_ticks_over_100() -> None:
    found = samples(scrape({"cpu": CpuCollector(str(PROCFS), str(SYSFS))}))
    # cpu3's line in the fixture: user 162639, idle 5668859, guest 32, guest_nice 29 ticks.
    assert found[("node_cpu_seconds_total", (("cpu", "3"), ("mode", "user")))] == 162639 / 100
    assert found[("node_cpu_seconds_total", (("cpu", "3"), ("mode", "idle")))] == 5668859 / 100
    assert found[("node_cpu_guest_seconds_total", (("cpu", "3"), ("mode", "nice")))] == 29 / 100
    # The aggregate "cpu " line is not a CPU.
    assert not any(labels and labels[0] == ("cpu", "") for _, labels in found)


def test_cpu_guest_can_be_switched_off() -> None:
    found = samples(scrape({"cpu": CpuCollector(str(PROCFS), str(SYSFS), guest=False)}))
    assert not any(name == "node_cpu_guest_seconds_total" for name, _ in found)


def test_cpu_counter_that_goes_backwards_keeps_its_last_value(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    collector = CpuCollector(str(procfs), str(sysfs))
    key = ("node_cpu_seconds_total", (("cpu", "0"), ("mode", "idle")))
    assert samples(scrape({"cpu": collector}))[key] == 1087069 / 100
    stat = procfs / "stat"
    stat.write_text(stat.read_text().replace("cpu0 44490 19 21045 1087069", "cpu0 44490 19 21045 1087000"))
    assert samples(scrape({"cpu": collector}))[key] == 1087069 / 100


def test_cpu_list_format() -> None:
    assert parse_cpu_list("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert parse_cpu_list("") == []
    with pytest.raises(ValueError):
        parse_cpu_list("zero")


def test_meminfo_names_and_units() -> None:
    info = parse_meminfo("MemTotal:  100 kB\nActive(anon):  2 kB\nHugePages_Total:  7\n\n")
    assert info == {"MemTotal_bytes": 102400.0, "Active_anon_bytes": 2048.0, "HugePages_Total": 7.0}
    found = samples(scrape({"meminfo": MeminfoCollector(str(PROCFS))}))
    assert found[("node_memory_MemAvailable_bytes", ())] == 9861760 * 1024
    assert found[("node_memory_HugePages_Total", ())] == 0


def test_loadavg_stat_pressure_vmstat_values() -> None:
    found = samples(scrape({
        "loadavg": LoadavgCollector(str(PROCFS)), "stat": StatCollector(str(PROCFS)),
        "pressure": PressureCollector(str(PROCFS)), "vmstat": VmstatCollector(str(PROCFS)),
    }))
    assert found[("node_load15", ())] == 0.39
    assert found[("node_boot_time_seconds", ())] == 1418183276
    assert found[("node_intr_total", ())] == 8885917
    assert found[("node_forks_total", ())] == 26442
    assert found[("node_procs_blocked", ())] == 1
    assert found[("node_pressure_memory_waiting_seconds_total", ())] == 1003 / 1000 / 1000
    assert found[("node_pressure_io_stalled_seconds_total", ())] == 159229614 / 1000 / 1000
    assert found[("node_vmstat_oom_kill", ())] == 3
    # Only the default fields: nr_free_pages is not one of them.
    assert ("node_vmstat_nr_free_pages", ()) not in found


def test_vmstat_fields_regex() -> None:
    found = samples(scrape({"vmstat": VmstatCollector(str(PROCFS), fields="^nr_dirty$")}))
    assert [name for name, _ in found if name.startswith("node_vmstat_")] == ["node_vmstat_nr_dirty"]
    with pytest.raises(ConfigError, match="not a valid regex"):
        VmstatCollector(str(PROCFS), fields="(")


def test_netdev_counters_and_filters() -> None:
    found = samples(scrape({"netdev": NetdevCollector(str(PROCFS))}))
    assert found[("node_network_receive_drop_total", (("device", "ib0"),))] == 12
    assert found[("node_network_receive_multicast_total", (("device", "ib0"),))] == 2104
    assert found[("node_network_transmit_bytes_total", (("device", "eth0"),))] == 9315587528
    only_ib = samples(scrape({"netdev": NetdevCollector(str(PROCFS), NameFilter(include="^ib"))}))
    assert {dict(labels)["device"] for name, labels in only_ib if name.startswith("node_network")} == {"ib0"}
    no_lo = samples(scrape({"netdev": NetdevCollector(str(PROCFS), NameFilter(exclude="^lo$"))}))
    assert ("node_network_receive_bytes_total", (("device", "lo"),)) not in no_lo
    with pytest.raises(ConfigError, match="mutually exclusive"):
        NameFilter(exclude="a", include="b")


def test_diskstats_units_default_exclusions_and_udev_info() -> None:
    found = samples(scrape({"diskstats": DiskstatsCollector(str(PROCFS), str(UDEV))}))
    devices = {dict(labels)["device"] for name, labels in found if name == "node_disk_io_now"}
    assert devices == {"sda", "nvme0n1", "dm-0", "sr0"}  # partitions and loop devices are left out
    assert found[("node_disk_read_bytes_total", (("device", "sda"),))] == 1003346126 * 512
    assert found[("node_disk_write_time_seconds_total", (("device", "sda"),))] == 224466572 * (1.0 / 1000.0)
    assert found[("node_disk_discarded_sectors_total", (("device", "nvme0n1"),))] == 3104
    # An 18-field line (kernel 4.18-5.4) has discard but no flush fields; a 14-field one neither.
    assert ("node_disk_flush_requests_total", (("device", "nvme0n1"),)) not in found
    assert ("node_disk_discards_completed_total", (("device", "dm-0"),)) not in found
    info = {dict(labels)["device"]: dict(labels) for name, labels in found if name == "node_disk_info"}
    assert info["sda"]["serial"] == "S3Z9NB0K123456A"
    assert info["sda"]["model"] == "Samsung_SSD_860_EVO_1TB"
    assert info["sr0"]["model"] == ""  # no udev file: empty labels, as node_exporter
    assert found[("node_disk_ata_write_cache_enabled", (("device", "sda"),))] == 1


def test_uname_labels() -> None:
    fake = Uname("Linux", "gpu-node-7", "6.1.0", "#1 SMP", "x86_64", "(none)")
    found = samples(scrape({"uname": UnameCollector(lambda: fake)}))
    labels = dict(next(labels for name, labels in found if name == "node_uname_info"))
    assert labels == {"sysname": "Linux", "nodename": "gpu-node-7", "release": "6.1.0", "version": "#1 SMP",
                      "machine": "x86_64", "domainname": "(none)"}


@pytest.mark.parametrize(
    ("broken", "collector", "change"),
    [
        ("meminfo", "meminfo", None),
        ("meminfo", "meminfo", "MemTotal:  lots kB\n"),
        ("loadavg", "loadavg", "0.1\n"),
        ("stat", "stat", "cpu0 1 2 3 4\nctxt many\n"),
        ("net/dev", "netdev", "header\nheader\n  eth0: 1 2 3\n"),
        ("diskstats", "diskstats", "   8 0 sda 1 2 3\n"),
        ("pressure/memory", "pressure", None),
        ("vmstat", "vmstat", "oom_kill\n"),
        ("1/mounts", "filesystem", "/dev/sda1 /\n"),
    ],
)
def test_a_missing_or_garbage_file_fails_only_its_collector(
    tmp_path: Path, broken: str, collector: str, change: str | None
) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    target = procfs / broken
    if change is None:
        target.unlink()
    else:
        target.write_text(change)
    if broken == "1/mounts":
        (procfs / "mounts").write_text(change or "")  # no fallback to a good file either
    found = samples(scrape(build_collectors(_config(procfs, sysfs))))
    assert _success(found, collector) == 0.0
    for other in COLLECTOR_NAMES:
        if other != collector:
            assert _success(found, other) == 1.0, other
    # The failed collector's families are left out entirely, never half-published or zeroed.
    prefix = {"meminfo": "node_memory_", "loadavg": "node_load", "netdev": "node_network_",
              "diskstats": "node_disk_", "pressure": "node_pressure_", "vmstat": "node_vmstat_",
              "filesystem": "node_filesystem_", "stat": "node_forks_total"}[collector]
    assert not any(name.startswith(prefix) for name, _ in found)


def test_collector_switches_choose_what_runs() -> None:
    collectors = build_collectors(_config(enabled=("meminfo", "jobs")))
    assert list(collectors) == ["meminfo", "jobs"]
    found = samples(scrape(collectors))
    ran = {dict(labels)["collector"] for name, labels in found if name == "node_scrape_collector_success"}
    assert ran == {"meminfo", "jobs"}
    assert not any(name.startswith("node_cpu") for name, _ in found)
