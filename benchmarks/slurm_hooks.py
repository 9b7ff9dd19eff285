"""What jobsight's Slurm hooks add to a job's start and end, on a real Slurm (two slurmd on this
host, fake GPUs): ``srun -N1 --gres=gpu:1 true`` timed without hooks, with hooks that only ``exit 0``,
and with jobsight's four hooks (``Prolog``/``Epilog`` writing the job map,
``PrologSlurmctld``/``EpilogSlurmctld`` spooling the job, with and without the detached delivery to
a local HTTP server standing in for the API). All clusters run in this one process, one after
the other, so the ratios compare like with like.

Each hook runs under a tracing wrapper that records when it started and ended, so the figures
also say what the hooks themselves take on the job's critical path: its start waits for
PrologSlurmctld, then the node's Prolog (``PrologFlags=Alloc``); its end for the Epilog and
EpilogSlurmctld, which run at the same time. ``srun`` magnifies a start that is not done at once:
it polls for the nodes' readiness after 0.1 s, then 0.2 s more, 0.3 s more... ("Waiting for nodes
to boot (delay looping 450 times @ 0.100000 secs x index)" in ``srun -vv``).

Goal (issue "Slurm, for real"): the hooks add at most 50 ms to a job's start/end.

    .venv/bin/python benchmarks/slurm_hooks.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import shlex
import stat
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import percentile
from schedulers.slurm.wrapper import wrapper_script
from tests.schedulers.slurm.cluster import SlurmCluster, slurm_cluster
from tests.support import RecordingHTTPServer


def _time_sruns(cluster: SlurmCluster, runs: int) -> list[float]:
    cluster.run("srun", "-N1", "--gres=gpu:1", "true")  # warm-up: first contact of each daemon
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        cluster.run("srun", "-N1", "--gres=gpu:1", "true")
        times.append(time.perf_counter() - started)
    return times


def _hook(root: Path, api_url: str, as_json: bool = False) -> Path:
    """The hook as docs/slurm.md installs it; ``as_json``: its settings written as JSON (which is
    YAML too), which the hook reads without importing PyYAML."""
    settings = {"api_url": api_url, "token": "bench-token", "job_map_dir": f"{root}/%n/jobs",
                "spool_dir": f"{root}/spool", "slurm_conf": f"{root}/slurm/slurm.conf"}
    config = root / ("slurm.json" if as_json else "slurm.yaml")
    config.write_text(json.dumps(settings, indent=2) if as_json else yaml.safe_dump(settings))
    hook = root / "hook"
    hook.write_text(wrapper_script(config=config))  # as `jobsight slurm wrapper` writes it
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hook


def _traced(root: Path, hook: Path | None) -> tuple[Path, Path]:
    """A wrapper around ``hook`` (none: ``exit 0``) that appends ``<context> <start> <end>`` to a
    trace file; both clocks are read the same way with or without a hook, so they cancel out."""
    trace = root / "trace.log"
    trace.touch()
    trace.chmod(0o666)  # the controller hooks run as SlurmUser
    wrapper = root / "traced-hook"
    wrapper.write_text(f"#!/bin/sh\nstart=$(date +%s.%N)\n{shlex.quote(str(hook)) if hook else 'true'}\n"
                       f"echo \"$SLURM_SCRIPT_CONTEXT $start $(date +%s.%N)\" >> {trace}\nexit 0\n")
    wrapper.chmod(0o755)
    return wrapper, trace


def _hook_times(trace: Path) -> dict[str, float]:
    """Median run time of each hook context, in seconds."""
    runs: dict[str, list[float]] = {}
    for line in trace.read_text().splitlines():
        context, start, end = line.split()
        runs.setdefault(context, []).append(float(end) - float(start))
    return {context: statistics.median(values) for context, values in runs.items()}


def _run_cluster(root: Path, hook: Path | None, runs: int) -> tuple[list[float], dict[str, float]]:
    root.mkdir(parents=True, exist_ok=True)
    wrapper, trace = _traced(root, hook)
    with slurm_cluster(root / "slurm", hook=wrapper) as cluster:
        times = _time_sruns(cluster, runs)
    return times, _hook_times(trace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    hooks: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="jobsight-bench-slurm-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        with slurm_cluster(root / "plain" / "slurm") as cluster:
            results["without hooks"] = _time_sruns(cluster, args.runs)
        results["exit-0 hooks"], hooks["exit-0 hooks"] = _run_cluster(root / "noop", None, args.runs)
        with RecordingHTTPServer(methods=("PUT",), record=False) as api:
            for name, as_json in (("jobsight, YAML config", False), ("jobsight, JSON config", True)):
                hooked = root / ("json" if as_json else "yaml")
                hooked.mkdir()
                results[name], hooks[name] = _run_cluster(hooked, _hook(hooked, api.url, as_json), args.runs)
    base = statistics.median(results["without hooks"])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"srun -N1 --gres=gpu:1 true, {args.runs} runs each ({when})")
    print(f"{'':22} {'median ms':>10} {'p90 ms':>8} {'ratio':>6}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:22} {median * 1000:10.1f} {percentile(values, 0.9) * 1000:8.1f} {median / base:6.2f}")
    print("\nhook run times as Slurm runs them (median ms), and what the job waits for")
    print(f"{'':22} {'PrologSlurmctld':>15} {'Prolog':>7} {'Epilog':>7} {'EpilogSlurmctld':>15} "
          f"{'start':>6} {'end':>6}")
    for name, times in hooks.items():
        def ms(context: str, times: dict[str, float] = times) -> float:
            return times.get(context, 0.0) * 1000
        start = ms("prolog_slurmctld") + ms("prolog_slurmd")
        end = max(ms("epilog_slurmd"), ms("epilog_slurmctld"))
        print(f"{name:22} {ms('prolog_slurmctld'):15.1f} {ms('prolog_slurmd'):7.1f} "
              f"{ms('epilog_slurmd'):7.1f} {ms('epilog_slurmctld'):15.1f} {start:6.1f} {end:6.1f}")
    noop = hooks["exit-0 hooks"]
    for name in ("jobsight, YAML config", "jobsight, JSON config"):
        mine = hooks[name]
        added_start = (mine.get("prolog_slurmctld", 0) + mine.get("prolog_slurmd", 0)
                       - noop.get("prolog_slurmctld", 0) - noop.get("prolog_slurmd", 0)) * 1000
        added_end = (max(mine.get("epilog_slurmd", 0), mine.get("epilog_slurmctld", 0))
                     - max(noop.get("epilog_slurmd", 0), noop.get("epilog_slurmctld", 0))) * 1000
        srun = (statistics.median(results[name]) - statistics.median(results["exit-0 hooks"])) * 1000
        print(f"{name}: {added_start:.1f} ms added to a job's start, {added_end:.1f} ms to its end over "
              f"exit-0 hooks (goal: at most 50 ms each); srun true {srun:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
