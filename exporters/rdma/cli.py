"""``jobsight exporter rdma``: RDMA/InfiniBand port metrics from sysfs.

Standard library only at module level; the collector is imported in :func:`build`. ``jobsight
agent`` calls :func:`add_arguments` and :func:`build` to serve this collector next to others.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobsight.serving import ExporterParts

DEFAULT_LISTEN = ":9401"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "rdma",
        help="RDMA/InfiniBand port metrics from /sys/class/infiniband (node_exporter names)",
        description="Serve node_exporter's node_infiniband_* metrics, plus jobsight_rdma_port_info "
        "and jobsight_rdma_read_errors_total, read from <path.sysfs>/class/infiniband.",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="web_listen_address",
        default=DEFAULT_LISTEN,
        help=f"address to serve /metrics and /healthz on (default: {DEFAULT_LISTEN})",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The collector's flags, without ``--web.listen-address``. ``--path.sysfs`` is shared with the
    node exporter inside ``jobsight agent``: if a sibling already defined it, that one is used."""
    # Already there (same dest and default) when the node exporter added it first.
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument(
            "--path.sysfs", dest="path_sysfs", default="/sys", help="sysfs mount point (default: /sys)"
        )
    parser.add_argument(
        "--collector.infiniband.device-include",
        dest="infiniband_device_include",
        default=None,
        metavar="REGEX",
        help="only devices whose name matches this regular expression (unanchored)",
    )
    parser.add_argument(
        "--collector.infiniband.device-exclude",
        dest="infiniband_device_exclude",
        default=None,
        metavar="REGEX",
        help="leave out devices whose name matches this regular expression (unanchored); "
        "mutually exclusive with --collector.infiniband.device-include",
    )
    parser.add_argument(
        "--collector.infiniband.expected-rate",
        dest="infiniband_expected_rate",
        action="append",
        default=None,
        metavar="[REGEX=]GBPS",
        help="the rate the ports of the devices matching REGEX (all devices without one) should train "
        "at, in Gb/s as ibstat prints it (400 for 4X NDR): published as "
        "jobsight_rdma_port_expected_rate_bytes_per_second for RDMALinkDegraded; repeatable, the first "
        "match wins (default: none; the alert then compares ports of the same board)",
    )


def build(args: argparse.Namespace) -> ExporterParts:
    """The RDMA collector as ``ExporterParts`` (collector ``rdma``, self-metrics prefix ``jobsight``).

    Raises ConfigError for bad filters and BackendUnavailable when the sysfs root is not a directory.
    """
    import os

    from exporters.rdma.collector import RdmaCollector
    from exporters.rdma.expected import parse_expected_rates
    from exporters.rdma.filters import DeviceFilter
    from exporters.rdma.sysfs import InfinibandReader
    from jobsight.errors import BackendUnavailable
    from jobsight.serving import ExporterParts

    device_filter = DeviceFilter(args.infiniband_device_include, args.infiniband_device_exclude)
    expected_rates = parse_expected_rates(args.infiniband_expected_rate)
    root = args.path_sysfs
    if not os.path.isdir(root):
        raise BackendUnavailable(f"--path.sysfs={root!r} is not a directory")
    reader = InfinibandReader(root)

    def health() -> tuple[bool, str]:
        if not os.path.isdir(root):
            return False, f"rdma: sysfs root {root} is gone"
        return True, f"rdma: ok ({len(reader.device_names())} devices)"

    return ExporterParts(
        collectors={"rdma": RdmaCollector(reader, device_filter, expected_rates)}, prefix="jobsight",
        health=health,
    )


def run(args: argparse.Namespace) -> int:
    from jobsight.serving import parse_listen_address, serve_parts

    listen = parse_listen_address(args.web_listen_address)
    return serve_parts([build(args)], listen)
