"""``jobsight dashboards generate`` writes the Grafana JSON; ``jobsight dashboards push`` installs
the committed JSON into a Grafana. Standard library only at module level."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

TOKEN_ENV = "JOBSIGHT_GRAFANA_TOKEN"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dashboards", help="generate or install the Grafana dashboards")
    actions = parser.add_subparsers(dest="dashboards_action", metavar="ACTION", required=True)

    generate = actions.add_parser("generate", help="write the dashboards' Grafana JSON")
    generate.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory to write <uid>.json into (default: the package's dashboards/json)",
    )
    generate.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files in --out differ from what would be generated",
    )
    generate.set_defaults(func=run_generate)

    push = actions.add_parser(
        "push", help="install the dashboards into Grafana (folder, datasource, overwrite)"
    )
    push.add_argument("--grafana-url", required=True, help="e.g. http://grafana:3000")
    push.add_argument(
        "--token",
        default=None,
        help=f"Grafana service-account token (default: ${TOKEN_ENV}; prefer the variable, argv is visible)",
    )
    push.add_argument("--folder", default="jobsight", help="folder to install into, created if missing")
    push.add_argument("--datasource-uid", default="prometheus", help="uid of the Prometheus datasource")
    push.add_argument(
        "--from-dir", type=Path, default=None, help="install the JSON files of this directory instead"
    )
    push.add_argument("--timeout", type=float, default=10.0, help="seconds per Grafana request")
    push.set_defaults(func=run_push)


def run_generate(args: argparse.Namespace) -> int:
    from dashboards.render import COMMITTED_DIR, build_all, dumps, file_name, write_all

    out: Path = args.out or COMMITTED_DIR
    if args.check:
        stale = [
            file_name(uid)
            for uid, model in build_all().items()
            if not (out / file_name(uid)).is_file()
            or (out / file_name(uid)).read_text(encoding="utf-8") != dumps(model)
        ]
        for name in stale:
            print(f"out of date: {out / name}")
        return 1 if stale else 0
    for path in write_all(out):
        print(path)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from dashboards.push import push_dashboards
    from dashboards.render import COMMITTED_DIR, load_committed
    from jobsight.errors import ConfigError
    from jobsight.grafana import make_client

    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ConfigError(f"no Grafana token: pass --token or set {TOKEN_ENV}")
    source: Path = args.from_dir or COMMITTED_DIR
    dashboards = load_committed(source)
    if not dashboards:
        raise ConfigError(f"no dashboard JSON files in {source}")
    client = make_client(args.grafana_url, token, timeout=args.timeout)
    base = args.grafana_url.rstrip("/")
    for pushed in push_dashboards(client, dashboards, folder=args.folder, datasource_uid=args.datasource_uid):
        print(f"{pushed.uid}: version {pushed.version} {base}{pushed.url}")
    return 0
