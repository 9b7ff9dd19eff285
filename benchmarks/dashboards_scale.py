"""What one job's dashboard costs Prometheus as the cluster grows: the job dashboard opened on the
API's link for a failed 16-GPU job (job start - 5 min ... end + 5 min), on a 64-GPU and on a
2,048-GPU synthetic cluster, measured as Prometheus' own count of the samples it read
(``stats=all``, ``totalQueryableSamples``) summed over every panel and annotation query and the two
job-scoped variable queries, the way Grafana asks them (instant for stats and tables, range with
the scrape interval as step for graphs and annotations).

Each cluster's history (``tests/dashboards/synthetic_tsdb.py``: the failed job with a lost GPU,
a GPU shared by two jobs, a bystander job on every other host) is written as OpenMetrics, turned
into TSDB blocks by the real ``promtool tsdb create-blocks-from openmetrics`` and served by a real
Prometheus (Debian's 2.42). The dashboard as it was before the job-scoped variables
(``--baseline-rev``, read with ``git show``) is measured in the same run for comparison.

Goal (issue "Dashboards that still show a job after it failed"): the same job's panels on 2,048
GPUs cost at most 1.3x what they cost on 64 GPUs.

    .venv/bin/python benchmarks/dashboards_scale.py [--sizes 64,2048] [--step 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from alerts.config import RULES_DIR
from dashboards.queries import VariableValue, resolve_variables
from dashboards.render import load_committed
from tests.dashboards.synthetic_tsdb import (
    FAILED_JOB,
    GPUS_PER_HOST,
    WINDOW,
    Answer,
    View,
    ask_dashboard,
    build_tsdb,
    grafana_builtins,
    instant_query,
    start_prometheus,
    view,
)
from tests.support import REPO_ROOT

# The commit before the job dashboard was bounded by the job (its queries joined every GPU).
BASELINE_REV = "7ba4c5d~1"
GOAL = 1.3


@dataclass(frozen=True)
class Cost:
    queries: int
    samples: int
    picker_samples: int  # of the job_id picker, which lists every job: it grows with the cluster
    series: int
    empty: int
    failed: int  # answered with an error (the old overview where two jobs share a GPU)
    seconds: float


def _measure(
    ask: Callable[[], list[Answer]], repeat: int, *, may_fail: bool = False
) -> tuple[Cost, list[tuple[float, str]]]:
    """The cost of one dashboard load, and the slowest queries of the last load. A failing query
    stops the benchmark unless ``may_fail`` (a baseline that is known to break)."""
    timings = []
    answers: list[Answer] = []
    slowest: list[tuple[float, str]] = []
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        answers = ask()
        timings.append(time.perf_counter() - started)
        slowest = sorted(((a.seconds, a.title) for a in answers), reverse=True)[:3]
    failed = [a for a in answers if a.status != 200]
    if failed and not may_fail:
        raise SystemExit(f"queries failed: {[(a.title, a.body.get('error')) for a in failed]}")
    return Cost(
        queries=len(answers),
        samples=sum(a.samples for a in answers),
        picker_samples=sum(a.samples for a in answers if a.title == "variable: job_id"),
        series=sum(len(a.result) for a in answers),
        empty=sum(1 for a in answers if a.status == 200 and not a.result),
        failed=len(failed),
        seconds=statistics.median(timings),
    ), slowest


def _baseline(rev: str, uid: str) -> dict[str, Any] | None:
    """The committed JSON of dashboard ``uid`` at git revision ``rev``, if git can show it."""
    try:
        shown = subprocess.run(
            ["git", "show", f"{rev}:dashboards/json/{uid}.json"],
            capture_output=True, check=True, cwd=REPO_ROOT, timeout=60,
        )
        model: dict[str, Any] = json.loads(shown.stdout)
        return model
    except (subprocess.CalledProcessError, FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"no baseline for {uid} at {rev} ({exc}); measuring the current one only")
        return None


def _backfill_recording_rules(base: str, data: Path, out: Path, origin: int, step: int) -> None:
    """Evaluate alerts/rules/recording.yaml over the history with the real promtool (against the
    Prometheus at ``base``) and add the blocks to ``data``: what Prometheus would have recorded."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "promtool", "tsdb", "create-blocks-from", "rules", "--quiet",
            f"--url={base}", f"--start={origin}", f"--end={origin + WINDOW}",
            f"--eval-interval={step}s", f"--output-dir={out}",
            str(RULES_DIR / "recording.yaml"),
        ],
        check=True, capture_output=True, timeout=1800,
    )
    for block in out.iterdir():
        if block.is_dir():
            block.rename(data / block.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,2048", help="cluster sizes in GPUs (multiples of 8)")
    parser.add_argument("--step", type=int, default=30, help="scrape interval and graph step, seconds")
    parser.add_argument("--repeat", type=int, default=3, help="dashboard loads per size (median time)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the old dashboard")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    committed = load_committed()
    current = committed["jobsight-job"]
    baseline = _baseline(args.baseline_rev, "jobsight-job")
    overview_before = _baseline(args.baseline_rev, "jobsight-overview")

    origin = int(time.time()) - 2 * 3600
    origin -= origin % args.step
    window = view(origin)
    results: dict[int, dict[str, Cost]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="jobsight-bench-dash-") as tmp,
        httpx.Client(timeout=120) as client,
    ):
        root = Path(tmp)
        for gpus in sizes:
            hosts = gpus // GPUS_PER_HOST
            started = time.perf_counter()
            samples = build_tsdb(root / f"tsdb-{gpus}", hosts, origin, step=args.step)
            built = time.perf_counter() - started
            proc, base = start_prometheus(root / f"tsdb-{gpus}", root)
            try:
                data = root / f"tsdb-{gpus}"
                _backfill_recording_rules(base, data, root / f"rules-{gpus}", origin, args.step)
                proc.stop()
                proc, base = start_prometheus(root / f"tsdb-{gpus}", root)
                builtins = grafana_builtins(window, args.step)
                given: dict[str, VariableValue] = {"job_id": FAILED_JOB, **builtins}
                variables = resolve_variables(current, given, instant_query(client, base, window.end))
                # Warm the page cache once so that the first measured load is not the odd one out.
                ask_dashboard(client, base, current, variables, window, args.step)
                boards = {"current": (current, variables)}
                if baseline is not None:
                    boards["before"] = (baseline, given)
                costs = {}
                for name, (model, values) in boards.items():
                    load = partial(
                        ask_dashboard, client, base, model, values, window, args.step, variables_too=True
                    )
                    costs[name] = _measure(load, args.repeat, may_fail=name == "before")
                # The overview over the history's hour, read from the recorded series (backfilled
                # above by promtool from the same rules Prometheus runs), and as it was before.
                hour = View(origin, origin + WINDOW)
                overviews = {"overview": committed["jobsight-overview"]}
                if overview_before is not None:
                    overviews["overview before"] = overview_before
                for name, model in overviews.items():
                    values = dict(grafana_builtins(hour, args.step))
                    ask = partial(ask_dashboard, client, base, model, values, hour, args.step)
                    known_broken = name != "overview"
                    load = partial(ask, variables_too=True)
                    costs[name] = _measure(load, args.repeat, may_fail=known_broken)
            finally:
                proc.stop()
            results[gpus] = {name: cost for name, (cost, _) in costs.items()}
            print(f"{gpus} GPUs ({hosts} hosts): {samples:,} samples imported in {built:.1f} s")
            for name, (cost, slowest) in costs.items():
                print(
                    f"  {name:8} {cost.queries} queries, {cost.samples:,} samples read "
                    f"({cost.picker_samples:,} by the job picker), "
                    f"{cost.series:,} series returned, {cost.empty} empty, {cost.failed} failed, "
                    f"median {cost.seconds * 1000:.0f} ms/load; slowest: "
                    + ", ".join(f"{title} {seconds * 1000:.0f} ms" for seconds, title in slowest)
                )
    small, large = min(sizes), max(sizes)
    print()
    for name in ("current", "before"):
        if name not in results[small]:
            continue
        ratio = results[large][name].samples / max(1, results[small][name].samples)
        panels = (results[large][name].samples - results[large][name].picker_samples) / max(
            1, results[small][name].samples - results[small][name].picker_samples
        )
        print(
            f"{name}: samples read on {large} GPUs / on {small} GPUs = {ratio:.2f}"
            f" ({panels:.2f} without the job picker)"
        )
    ratio = results[large]["current"].samples / max(1, results[small]["current"].samples)
    met = ratio <= GOAL
    print(f"goal <= {GOAL}: {'met' if met else 'NOT met'} ({ratio:.2f})")
    if args.json:
        args.json.write_text(
            json.dumps({str(g): {n: c.__dict__ for n, c in r.items()} for g, r in results.items()}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
