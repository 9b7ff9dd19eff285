"""``python -m schedulers.slurm hook|flush``: the same commands as ``jobsight slurm``, without the
rest of the CLI, for the hooks' start-up time and for the detached flush the hooks start."""

from __future__ import annotations

import argparse
import logging
import sys

from schedulers.slurm.cli import add_arguments


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m schedulers.slurm")
    add_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
