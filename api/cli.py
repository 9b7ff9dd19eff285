"""``jobsight api [--config FILE] [--listen HOST:PORT]``: serve the job API with uvicorn.

Only the standard library is imported at module level; FastAPI, uvicorn and the rest load inside
:func:`run`. uvicorn handles SIGTERM/SIGINT: it stops accepting, finishes in-flight requests and
runs the app's shutdown (which stops TensorBoards and the notification worker).
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "api", help="serve the job API (FastAPI)",
        description="Serve the jobsight job API. Settings come from --config (YAML) and JOBSIGHT_API_* "
                    "environment variables; see docs/api.md.",
    )
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML settings file")
    parser.add_argument("--listen", metavar="HOST:PORT", default=None,
                        help="address to serve on (default: the config's listen, else 127.0.0.1:8000)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from api.server import server_config
    from api.settings import load_settings
    from jobsight.serving import parse_listen_address

    # One line per outgoing Prometheus query is noise at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = load_settings(args.config, listen=args.listen)
    address = parse_listen_address(settings.listen)
    app = create_app(settings)
    limits = settings.server
    config = server_config(app, address.host, address.port, limit_concurrency=limits.limit_concurrency,
                           read_timeout=limits.request_read_timeout_seconds,
                           keep_alive=limits.keep_alive_seconds, max_header_bytes=limits.max_header_bytes,
                           backlog=limits.backlog)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal under the handler
    # that was installed before it started. Ignoring SIGTERM there makes a requested stop end with
    # exit code 0 instead of death by signal; while serving, uvicorn's own handler is in place.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    uvicorn.Server(config).run()
    return 0
