"""The script Slurm runs as its four hooks, written for this installation.

A Prolog's run is part of every job's start, so the wrapper starts Python the quickest safe way:
``-I`` (isolated: no ``PYTHON*`` variables, no user site, no current directory on the path) and
``-S`` (no ``site``: the ``.pth`` files of a venv, an editable install's finder, and whatever
dependencies put there run on every start, 10-15 ms here). The directories that hold jobsight
and PyYAML are written into the script instead, as this installation has them.
"""

from __future__ import annotations

import json
import shlex
import sys
from importlib.util import find_spec
from pathlib import Path

import schedulers


def import_paths() -> list[str]:
    """Where ``schedulers`` / ``jobsight`` and ``yaml`` are imported from, in that order. PyYAML is
    found, not imported: a controller hook calls this to start the delivery process."""
    found: list[str] = []
    yaml_spec = find_spec("yaml")
    for init in (schedulers.__file__, yaml_spec.origin if yaml_spec else None):
        if not init:
            continue
        root = str(Path(init).resolve().parent.parent)
        if root not in found:
            found.append(root)
    return found


def fast_python(entry: str, python: str = sys.executable) -> list[str]:
    """The command that runs ``entry`` (``module:function``, its return value the exit status)
    with ``python -I -S`` and this installation's import paths."""
    module, _, function = entry.partition(":")
    # json.dumps: double-quoted paths, so that the script's shell word needs no escapes.
    boot = (f"import sys; sys.path[:0] = {json.dumps(import_paths())}; "
            f"from {module} import {function}; raise SystemExit({function}())")
    return [python, "-I", "-S", "-c", boot]


def wrapper_script(python: str = sys.executable, config: Path | None = None) -> str:
    """``#!/bin/sh`` that runs the hook with ``python``; ``config`` sets JOBSIGHT_SLURM_CONFIG
    (default: the hook's own default, /etc/jobsight/slurm.yaml)."""
    lines = [
        "#!/bin/sh",
        "# Slurm's Prolog, Epilog, PrologSlurmctld and EpilogSlurmctld: one script for all four (the hook",
        "# tells them apart by SLURM_SCRIPT_CONTEXT); it always exits 0. Written by `jobsight slurm",
        "# wrapper` for this installation: write it again after moving or upgrading it (docs/slurm.md).",
    ]
    if config is not None:
        lines.append(f"export JOBSIGHT_SLURM_CONFIG={shlex.quote(str(config))}")
    command = fast_python("schedulers.slurm.hook:main", python)
    lines.append("exec " + " ".join(shlex.quote(arg) for arg in command))
    return "\n".join(lines) + "\n"
