"""``jobsight collector logs`` and ``jobsight logs export``. Standard library only at module level;
the collector's modules are imported when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register_collector(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "logs", help="tail log files, container logs and kernel messages into the store/Elasticsearch",
        description="Job-tagged log and event collector. See docs/logs-collector.md.",
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML config file")
    parser.add_argument("--listen", "--web.listen-address", dest="listen", default=None,
                        help="address for /metrics and /healthz (overrides `listen` in the config; "
                             "default 127.0.0.1:9404; port 0 picks a free port)")
    parser.add_argument("--web.config.file", dest="web_config_file", default=None, metavar="FILE",
                        help="TLS and basic auth, exporter-toolkit's format (docs/kubernetes.md)")
    parser.set_defaults(func=run_collector)


def register_logs(subparsers: Any) -> None:
    parser = subparsers.add_parser("export", help="print stored records as JSON lines",
                                   description="Print every stored record as one JSON object per line.")
    parser.add_argument("--store", required=True, type=Path, help="store directory (config `store.path`)")
    parser.add_argument("--job-id", dest="job_id", default=None, help="only this job's records")
    parser.set_defaults(func=run_export)


def run_collector(args: argparse.Namespace) -> int:
    from collectors.logs.app import run_collector as run

    return run(args.config, args.listen, getattr(args, "web_config_file", None))


def run_export(args: argparse.Namespace) -> int:
    from collectors.logs.export import export

    try:
        export(args.store, args.job_id)
    except BrokenPipeError:
        return 0  # `| head`: the reader has what it wanted
    return 0
