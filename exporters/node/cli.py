"""``jobsight exporter node``: node_exporter's core collectors plus per-job accounting.

Standard library only at module level; the collectors are imported when the command runs.
:func:`add_arguments` and :func:`build` are also what ``jobsight agent`` uses to serve these
collectors next to the GPU and RDMA ones.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobsight.serving import ExporterParts

DEFAULT_LISTEN = ":9402"

# Kept here (not imported from collectors.py) so that building the parser stays cheap.
COLLECTORS: tuple[tuple[str, str], ...] = (
    ("cpu", "CPU time per mode (node_cpu_seconds_total)"),
    ("diskstats", "block device I/O (node_disk_*)"),
    ("filesystem", "filesystem space and inodes (node_filesystem_*)"),
    ("loadavg", "load averages (node_load1/5/15)"),
    ("meminfo", "memory (node_memory_*)"),
    ("netdev", "network interface counters (node_network_*_total)"),
    ("pressure", "pressure stall information (node_pressure_*)"),
    ("stat", "boot time, context switches, forks, interrupts (node_boot_time_seconds, ...)"),
    ("uname", "kernel and host names (node_uname_info)"),
    ("vmstat", "selected /proc/vmstat fields (node_vmstat_*)"),
    ("jobs", "per-job CPU, memory, I/O and processes (jobsight_job_*)"),
)


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """Add an option unless another exporter sharing this parser (inside ``jobsight agent``)
    already added it under the same dest; a real clash still fails loudly."""
    try:
        parser.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        existing = [a for a in parser._actions if set(flags) & set(a.option_strings)]
        if not existing or existing[0].dest != kwargs.get("dest"):
            raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every node exporter flag except ``--web.listen-address``."""
    _add(parser, "--path.procfs", dest="path_procfs", default="/proc", metavar="DIR",
         help="procfs mount point (default: /proc)")
    _add(parser, "--path.sysfs", dest="path_sysfs", default="/sys", metavar="DIR",
         help="sysfs mount point (default: /sys)")
    _add(parser, "--path.rootfs", dest="path_rootfs", default="/", metavar="DIR",
         help="root of the host filesystem, for filesystem statistics (default: /)")
    _add(parser, "--path.udev.data", dest="path_udev_data", default="/run/udev/data", metavar="DIR",
         help="udev database, for node_disk_info (default: /run/udev/data)")
    for name, what in COLLECTORS:
        parser.add_argument(
            f"--collector.{name}", dest=f"collector_{name}", action=argparse.BooleanOptionalAction,
            default=True, help=f"{what} (default: enabled)",
        )
    # argparse spells the negative --no-collector.cpu, as node_exporter does.
    parser.add_argument("--collector.cpu.guest", dest="cpu_guest", action=argparse.BooleanOptionalAction,
                        default=True, help="publish node_cpu_guest_seconds_total (default: enabled)")
    parser.add_argument("--collector.diskstats.device-exclude", dest="diskstats_exclude", default=None,
                        metavar="REGEX", help="block devices to leave out (default: partitions, loop, ram)")
    parser.add_argument("--collector.diskstats.device-include", dest="diskstats_include", default=None,
                        metavar="REGEX", help="only these block devices")
    parser.add_argument("--collector.netdev.device-exclude", dest="netdev_exclude", default=None,
                        metavar="REGEX", help="network devices to leave out")
    parser.add_argument("--collector.netdev.device-include", dest="netdev_include", default=None,
                        metavar="REGEX", help="only these network devices")
    parser.add_argument("--collector.filesystem.mount-points-exclude", dest="mount_points_exclude",
                        default=None, metavar="REGEX", help="mount points to leave out")
    parser.add_argument("--collector.filesystem.fs-types-exclude", dest="fs_types_exclude", default=None,
                        metavar="REGEX", help="filesystem types to leave out")
    parser.add_argument("--collector.vmstat.fields", dest="vmstat_fields", default=None, metavar="REGEX",
                        help="/proc/vmstat fields to publish (default: oom_kill, pgpg*, pswp*, *fault)")
    # _add: the GPU exporter's attribution may offer the same switch inside ``jobsight agent``.
    _add(parser, "--collector.jobs.trust-environment", dest="jobs_trust_environment",
         action=argparse.BooleanOptionalAction, default=False,
         help="also take a process's job from its environment (--job-env-var) when it is in no Slurm job "
              "or Kubernetes pod cgroup; any user can set these variables, so enable only where users "
              "are trusted not to name others' jobs (default: disabled)")
    _add(parser, "--job-env-var", dest="job_env_vars", action="append", default=None, metavar="NAME",
         help="environment variable naming a process's job, read only with "
              "--collector.jobs.trust-environment; repeatable (default: JOBSIGHT_JOB_ID, SLURM_JOB_ID)")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "node", help="node metrics (node_exporter names) and per-job accounting",
        description="Serve node_exporter's cpu, meminfo, loadavg, netdev, diskstats, filesystem, pressure, "
                    "stat, uname and vmstat metrics, and jobsight_job_* per-job accounting.",
    )
    parser.add_argument("--web.listen-address", dest="web_listen_address", default=DEFAULT_LISTEN,
                        metavar="HOST:PORT", help=f"address to serve /metrics on (default: {DEFAULT_LISTEN})")
    add_arguments(parser)
    parser.set_defaults(func=run)


def build(args: argparse.Namespace) -> ExporterParts:
    """The node collectors selected by ``args``, with self-metrics prefix ``node``."""
    import os

    from exporters.node.collectors import NodeConfig, build_collectors
    from exporters.node.diskstats import DEFAULT_DEVICE_EXCLUDE
    from exporters.node.filesystem import DEFAULT_FS_TYPES_EXCLUDE, DEFAULT_MOUNT_POINTS_EXCLUDE
    from exporters.node.vmstat import DEFAULT_FIELDS
    from jobsight.errors import BackendUnavailable
    from jobsight.identity import DEFAULT_JOB_ENV_VARS
    from jobsight.serving import ExporterParts

    # A root that is not there is an unavailable backend (exit 3), as for the other exporters;
    # a file missing inside a root only fails the collector that needs it.
    for flag, path in (("--path.procfs", args.path_procfs), ("--path.sysfs", args.path_sysfs),
                       ("--path.rootfs", args.path_rootfs)):
        if not os.path.isdir(path):
            raise BackendUnavailable(f"{flag}={path!r} is not a directory")
    enabled = tuple(name for name, _ in COLLECTORS if getattr(args, f"collector_{name}", True))

    def pick(value: str | None, default: str | None) -> str | None:
        return default if value is None else value

    config = NodeConfig(
        procfs=args.path_procfs,
        sysfs=args.path_sysfs,
        rootfs=args.path_rootfs,
        udev_data=getattr(args, "path_udev_data", "/run/udev/data"),
        enabled=enabled,
        cpu_guest=getattr(args, "cpu_guest", True),
        # An include filter replaces the default exclude; node_exporter refuses both at once.
        diskstats_exclude=pick(
            args.diskstats_exclude, None if args.diskstats_include else DEFAULT_DEVICE_EXCLUDE
        ),
        diskstats_include=args.diskstats_include,
        netdev_exclude=args.netdev_exclude,
        netdev_include=args.netdev_include,
        mount_points_exclude=pick(args.mount_points_exclude, DEFAULT_MOUNT_POINTS_EXCLUDE),
        fs_types_exclude=pick(args.fs_types_exclude, DEFAULT_FS_TYPES_EXCLUDE),
        vmstat_fields=args.vmstat_fields or DEFAULT_FIELDS,
        job_env_vars=tuple(args.job_env_vars) if args.job_env_vars else DEFAULT_JOB_ENV_VARS,
        trust_environment=bool(getattr(args, "jobs_trust_environment", False)),
    )
    stat_path = os.path.join(config.procfs, "stat")

    def health() -> tuple[bool, str]:
        # procfs is what nearly every collector reads; if it is gone, say so on /healthz.
        if os.access(stat_path, os.R_OK):
            return True, "node: ok"
        return False, f"node: {stat_path} is not readable"

    return ExporterParts(collectors=build_collectors(config), prefix="node", health=health)


def run(args: argparse.Namespace) -> int:
    from jobsight.serving import parse_listen_address, serve_parts

    listen = parse_listen_address(args.web_listen_address)
    return serve_parts([build(args)], listen)
