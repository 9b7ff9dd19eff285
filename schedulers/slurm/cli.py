"""``jobsight slurm hook`` and ``jobsight slurm flush``.

Heavy imports stay inside the run functions (house rule for component ``cli`` modules): a Prolog
waits for this process, so its start-up is part of every job's start.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def run_hook_command(args: argparse.Namespace) -> int:
    from schedulers.slurm.hook import run_hook

    return run_hook(os.environ)


def run_flush_command(args: argparse.Namespace) -> int:
    if args.wait > 0:
        # Started detached by a hook: a background delivery must not take CPU from the job
        # start it runs beside (on a small controller or a shared node).
        os.nice(10)
    if args.delay > 0:
        # Before the imports, which cost more CPU than the delivery: the job start goes first.
        import time

        time.sleep(args.delay)

    from jobsight.errors import JobsightError
    from schedulers.slurm.config import config_path, load_config
    from schedulers.slurm.flush import flush

    path = args.config or config_path(os.environ)
    try:
        report = flush(load_config(path), wait_seconds=args.wait, lock_fd=args.lock_fd)
    except JobsightError as exc:
        print(f"jobsight slurm flush: {exc}", file=sys.stderr)
        return 1
    if report.handed_over:
        print(f"jobsight slurm flush: {report.error}", file=sys.stderr)
        return 0
    line = f"delivered {report.delivered}, rejected {report.rejected}, pending {report.pending}"
    if report.error:
        line += f" ({report.error})"
    print(f"jobsight slurm flush: {line}", file=sys.stderr)
    return 0 if report.pending == 0 else 1


def run_wrapper_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schedulers.slurm.wrapper import wrapper_script

    sys.stdout.write(wrapper_script(config=Path(args.config) if args.config else None))
    return 0


def add_arguments(slurm: Any) -> None:
    actions = slurm.add_subparsers(dest="slurm_action", metavar="ACTION", required=True)
    hook = actions.add_parser(
        "hook", help="run as Slurm's Prolog, Epilog, PrologSlurmctld or EpilogSlurmctld (no arguments)",
        description="Reads SLURM_SCRIPT_CONTEXT and the job from the environment, the config from "
                    "$JOBSIGHT_SLURM_CONFIG or /etc/jobsight/slurm.yaml. Always exits 0.",
    )
    hook.set_defaults(func=run_hook_command)
    flush = actions.add_parser("flush", help="deliver the job records the controller hooks spooled")
    flush.add_argument("--config", metavar="FILE", default=None,
                       help="default: $JOBSIGHT_SLURM_CONFIG or /etc/jobsight/slurm.yaml")
    flush.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="keep trying for this long while records are pending (default: one round)")
    flush.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                       help="wait this long before the first delivery (the hooks use 1 s)")
    flush.add_argument("--lock-fd", type=int, default=None, metavar="FD",
                       help="the spool's delivery lock, claimed and handed over by the hook that "
                            "starts this process (internal)")
    flush.set_defaults(func=run_flush_command)
    wrapper = actions.add_parser(
        "wrapper", help="print the script to install as Slurm's Prolog, Epilog, PrologSlurmctld and "
                        "EpilogSlurmctld, for this installation",
        description="Prints a /bin/sh script that runs `jobsight slurm hook` with this Python, started "
                    "without site (-I -S) for speed, with this installation's import paths written in.",
    )
    wrapper.add_argument("--config", metavar="FILE", default=None,
                         help="export JOBSIGHT_SLURM_CONFIG=FILE in the script (default: the hook reads "
                              "/etc/jobsight/slurm.yaml)")
    wrapper.set_defaults(func=run_wrapper_command)


def register(commands: Any) -> None:
    slurm = commands.add_parser("slurm", help="Slurm hooks: job maps and job registration")
    add_arguments(slurm)
