"""The node exporter's collectors by name, built from parsed flags. Names are node_exporter's
(``cpu``, ``meminfo``, ...) plus ``jobs``, so ``--collector.NAME`` and the ``collector`` label of
``node_scrape_collector_*`` mean the same as there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from exporters.node.cpu import CpuCollector
from exporters.node.diskstats import DEFAULT_DEVICE_EXCLUDE, DiskstatsCollector
from exporters.node.filesystem import (
    DEFAULT_FS_TYPES_EXCLUDE,
    DEFAULT_MOUNT_POINTS_EXCLUDE,
    FilesystemCollector,
)
from exporters.node.filters import NameFilter
from exporters.node.jobs import JobsCollector
from exporters.node.loadavg import LoadavgCollector
from exporters.node.meminfo import MeminfoCollector
from exporters.node.netdev import NetdevCollector
from exporters.node.pressure import PressureCollector
from exporters.node.stat import StatCollector
from exporters.node.uname import UnameCollector
from exporters.node.vmstat import DEFAULT_FIELDS, VmstatCollector
from jobsight.identity import DEFAULT_JOB_ENV_VARS, ProcessJobResolver
from jobsight.serving import Collector

COLLECTOR_NAMES: tuple[str, ...] = (
    "cpu", "diskstats", "filesystem", "loadavg", "meminfo", "netdev", "pressure", "stat", "uname", "vmstat",
    "jobs",
)


@dataclass(frozen=True)
class NodeConfig:
    """Everything the collectors read from outside: roots, filters, the job environment."""

    procfs: str = "/proc"
    sysfs: str = "/sys"
    rootfs: str = "/"
    udev_data: str = "/run/udev/data"
    enabled: tuple[str, ...] = COLLECTOR_NAMES
    cpu_guest: bool = True
    diskstats_exclude: str | None = DEFAULT_DEVICE_EXCLUDE
    diskstats_include: str | None = None
    netdev_exclude: str | None = None
    netdev_include: str | None = None
    mount_points_exclude: str | None = DEFAULT_MOUNT_POINTS_EXCLUDE
    fs_types_exclude: str | None = DEFAULT_FS_TYPES_EXCLUDE
    vmstat_fields: str = DEFAULT_FIELDS
    job_env_vars: tuple[str, ...] = DEFAULT_JOB_ENV_VARS
    # Believe JOBSIGHT_JOB_ID/SLURM_JOB_ID of processes in no scheduler cgroup: any user can set
    # them, so off unless the site opts in (docs/security.md, "Job identity").
    trust_environment: bool = False


def build_collectors(config: NodeConfig) -> dict[str, Collector]:
    """The enabled collectors, in :data:`COLLECTOR_NAMES` order; bad filters raise ConfigError."""
    factories: dict[str, Callable[[], Collector]] = {
        "cpu": lambda: CpuCollector(config.procfs, config.sysfs, guest=config.cpu_guest),
        "diskstats": lambda: DiskstatsCollector(
            config.procfs, config.udev_data,
            NameFilter(config.diskstats_exclude, config.diskstats_include, what="diskstats device"),
        ),
        "filesystem": lambda: FilesystemCollector(
            config.procfs, config.rootfs, config.mount_points_exclude, config.fs_types_exclude
        ),
        "loadavg": lambda: LoadavgCollector(config.procfs),
        "meminfo": lambda: MeminfoCollector(config.procfs),
        "netdev": lambda: NetdevCollector(
            config.procfs, NameFilter(config.netdev_exclude, config.netdev_include, what="netdev device")
        ),
        "pressure": lambda: PressureCollector(config.procfs),
        "stat": lambda: StatCollector(config.procfs),
        "uname": lambda: UnameCollector(),
        "vmstat": lambda: VmstatCollector(config.procfs, config.vmstat_fields),
        "jobs": lambda: JobsCollector(
            config.procfs, config.sysfs,
            ProcessJobResolver(
                config.procfs, config.job_env_vars, trust_environment=config.trust_environment
            ),
        ),
    }
    return {name: factories[name]() for name in COLLECTOR_NAMES if name in config.enabled}
