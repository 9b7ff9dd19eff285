"""Placeholder: this component's command line is being written."""

from __future__ import annotations

import argparse
from typing import Any


def register_collector(subparsers: Any) -> None:
    parser = subparsers.add_parser("logs", help="(not yet available)")
    parser.set_defaults(func=run)


def register_logs(subparsers: Any) -> None:
    parser = subparsers.add_parser("export", help="(not yet available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("jobsight: the log collector is not available in this build yet")
    return 1
