"""The ``jobsight`` command. A wiring module: it asks each component to register its subcommands.

Component ``cli`` modules import only the standard library at module level and import their heavy
dependencies inside their ``run`` functions, so ``jobsight --help`` stays fast.

Exit codes: 0 success; 1 a runtime failure; 2 bad usage or configuration; 3 a required backend
(NVML, a sysfs root) is unavailable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from jobsight import __version__
from jobsight.errors import BackendUnavailable, ConfigError, InvalidInput, JobsightError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BACKEND = 3


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at module level: the wiring floor is the only place the kernel reaches
    # into components, and only to start them.
    from api import cli as api_cli
    from collectors.logs import cli as logs_cli
    from dashboards import cli as dashboards_cli
    from exporters.gpu import cli as gpu_cli
    from exporters.node import cli as node_cli
    from exporters.rdma import cli as rdma_cli
    from launch import agent, stack
    from schedulers.kubernetes import cli as kube_cli
    from schedulers.slurm import cli as slurm_cli

    parser = argparse.ArgumentParser(
        prog="jobsight", description="Job-centric observability for GPU training clusters."
    )
    parser.add_argument("--version", action="version", version=f"jobsight {__version__}")
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    exporter = commands.add_parser("exporter", help="run one Prometheus exporter")
    exporter_kinds = exporter.add_subparsers(dest="exporter", metavar="KIND", required=True)
    gpu_cli.register(exporter_kinds)
    rdma_cli.register(exporter_kinds)
    node_cli.register(exporter_kinds)

    agent.register(commands)

    collector = commands.add_parser("collector", help="run a collector")
    collector_kinds = collector.add_subparsers(dest="collector", metavar="KIND", required=True)
    logs_cli.register_collector(collector_kinds)

    logs = commands.add_parser("logs", help="work with the stored logs and events")
    logs_actions = logs.add_subparsers(dest="logs_action", metavar="ACTION", required=True)
    logs_cli.register_logs(logs_actions)

    slurm_cli.register(commands)
    kube_cli.register(commands)
    api_cli.register(commands)
    dashboards_cli.register(commands)
    stack.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO; that is noise on a console, not news.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        code: int = args.func(args)
    except (ConfigError, InvalidInput) as exc:
        print(f"jobsight: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BackendUnavailable as exc:
        print(f"jobsight: error: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    except JobsightError as exc:
        print(f"jobsight: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
