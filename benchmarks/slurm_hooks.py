"""What jobsight's Slurm hooks add to a job's start and end: ``srun true`` timed on a real Slurm
(two slurmd on this host, fake GPUs) without hooks and then with all four hooks
(``Prolog``/``Epilog`` writing the job map, ``PrologSlurmctld``/``EpilogSlurmctld`` spooling the
job and starting the detached delivery to a local HTTP server standing in for the API). Both
clusters run in this one process, one after the other, so the ratio compares like with like.

Goal (issue "Slurm, for real"): the hooks add at most 50 ms to a job's start/end.

    .venv/bin/python benchmarks/slurm_hooks.py [--runs 30]
"""

from __future__ import annotations

import argparse
import stat
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import percentile
from tests.schedulers.slurm.cluster import SlurmCluster, slurm_cluster
from tests.support import REPO_ROOT, RecordingHTTPServer


def _time_sruns(cluster: SlurmCluster, runs: int) -> list[float]:
    cluster.run("srun", "-N1", "--gres=gpu:1", "true")  # warm-up: first contact of each daemon
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        cluster.run("srun", "-N1", "--gres=gpu:1", "true")
        times.append(time.perf_counter() - started)
    return times


def _hook(root: Path, api_url: str | None) -> Path:
    config = root / "slurm.yaml"
    config.write_text(
        (f"api_url: {api_url}\n" if api_url else "") + f"token: bench-token\njob_map_dir: {root}/%n/jobs\n"
        f"spool_dir: {root}/spool\nslurm_conf: {root}/slurm/slurm.conf\n"
    )
    hook = root / "hook"
    hook.write_text(f"#!/bin/sh\nexport JOBSIGHT_SLURM_CONFIG={config} PYTHONPATH={REPO_ROOT}\n"
                    f"exec {sys.executable} -m schedulers.slurm hook\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    return hook


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="jobsight-bench-slurm-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        with slurm_cluster(root / "plain" / "slurm") as cluster:
            results["without hooks"] = _time_sruns(cluster, args.runs)
        noop = root / "noop-hook"
        noop.write_text("#!/bin/sh\nexit 0\n")
        noop.chmod(0o755)
        with slurm_cluster(root / "noop" / "slurm", hook=noop) as cluster:
            results["with exit-0 hooks"] = _time_sruns(cluster, args.runs)
        with RecordingHTTPServer(methods=("PUT",), record=False) as api:
            hooked = root / "hooked"
            hooked.mkdir()
            with slurm_cluster(hooked / "slurm", hook=_hook(hooked, api.url)) as cluster:
                results["with jobsight hooks"] = _time_sruns(cluster, args.runs)
    base = statistics.median(results["without hooks"])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"srun -N1 --gres=gpu:1 true, {args.runs} runs each ({when})")
    print(f"{'':22} {'median ms':>10} {'p90 ms':>8} {'ratio':>6}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:22} {median * 1000:10.1f} {percentile(values, 0.9) * 1000:8.1f} {median / base:6.2f}")
    ours = statistics.median(results["with jobsight hooks"])
    print(f"added by jobsight's hooks (median): {(ours - base) * 1000:.1f} ms over no hooks, "
          f"{(ours - statistics.median(results['with exit-0 hooks'])) * 1000:.1f} ms over exit-0 hooks "
          "(goal: at most 50 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
