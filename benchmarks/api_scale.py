"""What one job's API answers cost as the cluster grows, and a long job's summary.

Case ``ratio``: the same 8-GPU job (``train-7`` of ``tests/scale/cluster.py``, on two hosts it
shares with another job) over a 6-hour window, on a 64-GPU and on a 2,048-GPU synthetic cluster
(OpenMetrics written here, turned into TSDB blocks by the real ``promtool tsdb create-blocks-from
openmetrics``, served by a real Prometheus with its default query limits). Measured: the median
latency of ``/v1/jobs/{id}/metrics?name=gpu_util`` and ``/v1/jobs/{id}/summary`` through
``jobsight api`` (one process, results cache off: every request asks Prometheus), sequentially, for
the current API and for the API as it was before the queries were bounded by the job
(``--baseline-rev``, run from ``git archive``), side by side in one run. Goal: large / small <= 1.3.

Case ``long``: a 16-GPU job over 14 days in a 512-GPU cluster (one sample a minute; hosts without
the job carry only job info and utilisation, which is what the unbounded queries read most), under
Prometheus' default limits: the summary from raw samples and from the 5-minute rollups of
``alerts/rules/rollups.yaml`` (backfilled with ``promtool tsdb create-blocks-from rules``), their
times and how far apart their figures are, and the baseline API's summary.

    .venv/bin/python benchmarks/api_scale.py [--case all|ratio|long] [--sizes 64,2048] [--hours 6]
        [--step 30] [--repeat 5] [--long-days 14] [--long-gpus 512] [--long-step 60] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.api.promdata import run_prometheus  # noqa: E402
from tests.scale.cluster import JOB, Cluster  # noqa: E402
from tests.support import Proc, free_port, require_binary, wait_for_http  # noqa: E402

TOKEN = "bench-admin-token-0123456789"
# The last commit whose catalog and summary selected every GPU of the cluster and joined to the job.
BASELINE_REV = "6a4fc9d"
GOAL = 1.3
LONG_JOB = tuple(
    [("h0000", g) for g in range(4, 8)] + [("h0001", g) for g in range(8)] + [("h0002", g) for g in range(4)]
)


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    status: int
    detail: str = ""


@contextmanager
def prometheus(tsdb: Path, workdir: Path) -> Iterator[str]:
    """Prometheus with its default limits (--query.max-samples 50 M, 2 min timeout)."""
    with run_prometheus(tsdb, workdir, max_samples=None, ready_timeout=600) as running:
        yield running.url


@contextmanager
def api(
    prom_url: str, workdir: Path, label: str, code: Path | None, window: tuple[float, float], **settings: Any
) -> Iterator[str]:
    """``jobsight api`` from this checkout (``code`` None) or from an older tree, cache off, with
    the job registered (no hosts or GPUs: the API finds them)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "store_url": f"sqlite:///{workdir / 'api.db'}",
        "prometheus_url": prom_url,
        "query_cache_seconds": 0,
        "tokens": [{"token": TOKEN, "tenant": "ops", "admin": True}],
        "dependency_timeout_seconds": 120,
        **settings,
    }
    path = workdir / "api.json"
    path.write_text(json.dumps(config))
    port = free_port()
    # The baseline tree predates the launch package: its CLI is ``python -m jobsight``.
    module = "launch" if code is None else "jobsight"
    env = {**os.environ, "PYTHONPATH": str(code)} if code is not None else None
    proc = Proc(
        [sys.executable, "-m", module, "api", "--config", str(path), "--listen", f"127.0.0.1:{port}"],
        workdir / "api.log",
        env=env,
        cwd=code,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", timeout=120, proc=proc)
        job = {"status": "succeeded", "exit_code": 0, "started_at": window[0], "ended_at": window[1]}
        httpx.put(f"{base}/v1/jobs/{JOB}", json=job, headers=auth(), timeout=60).raise_for_status()
        print(f"  {label}: {base}", flush=True)
        yield base
    finally:
        proc.stop()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def timed(
    client: httpx.Client, url: str, repeat: int, params: dict[str, Any] | None = None, warm: bool = True
) -> Timing:
    if warm:
        client.get(url, params=params, headers=auth())  # warm-up: connection, page cache
    took: list[float] = []
    status, detail = 200, ""
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        response = client.get(url, params=params, headers=auth())
        took.append(1000 * (time.perf_counter() - started))
        if response.status_code != 200:
            status, detail = response.status_code, response.text[:300]
    return Timing(statistics.median(took), min(took), status, detail)


def build(cluster: Cluster, workdir: Path, chunk_hours: float | None = None) -> Path:
    started = time.perf_counter()
    tsdb = cluster.write_tsdb(workdir, chunk_hours)
    print(f"  {cluster.gpus} GPUs: TSDB built in {time.perf_counter() - started:.0f} s", flush=True)
    return tsdb


def baseline_tree(rev: str, workdir: Path) -> Path | None:
    """The API as of ``rev``, unpacked from ``git archive``; None where git cannot give it."""
    target = workdir / f"baseline-{rev}"
    try:
        archive = subprocess.run(
            ["git", "archive", rev], capture_output=True, check=True, cwd=REPO, timeout=120
        )
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        print(f"no baseline ({exc}); measuring the current API only")
        return None
    target.mkdir()
    tar_path = workdir / "baseline.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(target, filter="data")
    tar_path.unlink()
    return target


def ratio_case(args: argparse.Namespace, root: Path, baseline: Path | None) -> dict[str, Any]:
    sizes = [int(size) for size in args.sizes.split(",")]
    end = float(int(time.time()) // 60 * 60 - 900)
    window = (end - args.hours * 3600, end)
    print(
        f"ratio: 8-GPU job, {args.hours:g} h window, clusters of {sizes} GPUs, one sample every {args.step} s"
    )
    results: dict[str, dict[int, dict[str, Timing]]] = {"current": {}, "baseline": {}}
    with ExitStack() as stack, httpx.Client(timeout=300) as client:
        apis: dict[tuple[str, int], str] = {}
        for size in sizes:
            workdir = root / f"ratio-{size}"
            workdir.mkdir()
            tsdb = build(
                Cluster(gpus=size, start=window[0] - 600, end=window[1] + 300, step=args.step), workdir
            )
            prom_url = stack.enter_context(prometheus(tsdb, workdir))
            apis["current", size] = stack.enter_context(
                api(prom_url, workdir / "current", f"current, {size}", None, window)
            )
            if baseline is not None:
                apis["baseline", size] = stack.enter_context(
                    api(prom_url, workdir / "baseline", f"baseline, {size}", baseline, window)
                )
        # Every size is measured once everything runs, one request of each after the other, so that
        # whatever else this machine does weighs on both sides of a ratio alike.
        samples: dict[tuple[str, int, str], list[Timing]] = {}
        for _ in range(max(1, args.repeat)):
            for (label, size), base in apis.items():
                for endpoint, url, params in (
                    ("metrics", f"{base}/v1/jobs/{JOB}/metrics", {"name": "gpu_util"}),
                    ("summary", f"{base}/v1/jobs/{JOB}/summary", None),
                ):
                    samples.setdefault((label, size, endpoint), []).append(
                        timed(client, url, 1, params, warm=not samples.get((label, size, endpoint)))
                    )
        for (label, size, endpoint), timings in samples.items():
            failed = [t for t in timings if t.status != 200]
            results[label].setdefault(size, {})[endpoint] = Timing(
                statistics.median(t.median_ms for t in timings),
                min(t.min_ms for t in timings),
                failed[0].status if failed else 200,
                failed[0].detail if failed else "",
            )
    small, large = sizes[0], sizes[-1]
    print(f"\n| API | endpoint | {small} GPUs (ms) | {large} GPUs (ms) | ratio | goal <= {GOAL} |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    out: dict[str, Any] = {"sizes": sizes, "hours": args.hours, "step": args.step, "rows": []}
    for label in ("current", "baseline"):
        if not results[label]:
            continue
        for endpoint in ("metrics", "summary"):
            a, b = results[label][small][endpoint], results[label][large][endpoint]
            ratio = b.median_ms / a.median_ms
            refused = f" (HTTP {a.status}/{b.status})" if a.status != 200 or b.status != 200 else ""
            verdict = ("met" if ratio <= GOAL else "not met") if label == "current" else "-"
            name = "/metrics?name=gpu_util" if endpoint == "metrics" else "/summary"
            print(
                f"| {label} | {name} | {a.median_ms:.0f} | {b.median_ms:.0f} | "
                f"{ratio:.2f}{refused} | {verdict} |"
            )
            out["rows"].append(
                {"api": label, "endpoint": endpoint, "small": asdict(a), "large": asdict(b), "ratio": ratio}
            )
    return out


def long_case(args: argparse.Namespace, root: Path, baseline: Path | None) -> dict[str, Any]:
    days, gpus, step = args.long_days, args.long_gpus, args.long_step
    end = float(int(time.time()) // 300 * 300 - 900)
    window = (end - days * 86400, end)
    workdir = root / "long"
    workdir.mkdir()
    print(
        f"\nlong: {len(LONG_JOB)}-GPU job over {days:g} days in a {gpus}-GPU cluster, "
        f"one sample every {step} s"
    )
    cluster = Cluster(
        gpus=gpus,
        start=window[0] - 600,
        end=window[1] + 300,
        step=step,
        wave=True,
        job=LONG_JOB,
        light_bystanders=True,
    )
    tsdb = build(cluster, workdir, chunk_hours=24)
    backfill = workdir / "rollups"
    with prometheus(tsdb, workdir) as prom_url:
        started = time.perf_counter()
        result = subprocess.run(
            [
                require_binary("promtool"),
                "tsdb",
                "create-blocks-from",
                "rules",
                f"--start={int(window[0]) - 600}",
                f"--end={int(window[1]) + 300}",
                f"--url={prom_url}",
                f"--output-dir={backfill}",
                str(REPO / "alerts" / "rules" / "rollups.yaml"),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if result.returncode != 0:
            raise SystemExit(f"promtool create-blocks-from rules failed: {result.stderr[-2000:]}")
        print(f"  rollups backfilled in {time.perf_counter() - started:.0f} s", flush=True)
    for block in backfill.iterdir():
        if block.is_dir():
            shutil.move(str(block), tsdb / block.name)
    rows: dict[str, Timing] = {}
    bodies: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack, httpx.Client(timeout=300) as client:
        prom_url = stack.enter_context(prometheus(tsdb, workdir))
        apis = {
            "current, rollups": stack.enter_context(
                api(
                    prom_url,
                    workdir / "rollups-api",
                    "rollups",
                    None,
                    window,
                    summary_rollup_after_seconds=3600,
                )
            ),
            "current, raw samples": stack.enter_context(
                api(prom_url, workdir / "raw-api", "raw", None, window, summary_rollup_after_seconds=0)
            ),
        }
        if baseline is not None:
            apis["baseline"] = stack.enter_context(
                api(prom_url, workdir / "baseline-api", "baseline", baseline, window)
            )
        for label, base in apis.items():
            rows[label] = timed(client, f"{base}/v1/jobs/{JOB}/summary", args.repeat)
            response = client.get(f"{base}/v1/jobs/{JOB}/summary", headers=auth())
            if response.status_code == 200:
                bodies[label] = response.json()
    print(
        f"\n| summary of the {days:g}-day job | median ms | HTTP | read from | GPUs | util_mean "
        "| energy (MJ) |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for label, timing in rows.items():
        body = bodies.get(label, {})
        overall = body.get("overall", {})
        util = overall.get("util_mean")
        energy = overall.get("energy_joules")
        rollup = body.get("rollup_step_seconds")
        source = "-" if not body else (f"{rollup:g} s rollups" if rollup else "raw samples")
        print(
            f"| {label} | {timing.median_ms:.0f} | {timing.status} | {source} | {overall.get('gpus', '-')} | "
            f"{'-' if util is None else f'{util:.3f}'} | {'-' if energy is None else f'{energy / 1e6:.1f}'} |"
        )
        if timing.status != 200:
            print(f"  {label}: {timing.detail}")
    differences: dict[str, float] = {}
    if "current, rollups" in bodies and "current, raw samples" in bodies:
        fast = {(g["host"], g["gpu"]): g for g in bodies["current, rollups"]["gpus"]}
        slow = {(g["host"], g["gpu"]): g for g in bodies["current, raw samples"]["gpus"]}
        for field in ("util_mean", "util_max", "power_mean_watts", "energy_joules", "idle_fraction"):
            worst = 0.0
            for key, g in slow.items():
                a, b = g.get(field), fast.get(key, {}).get(field)
                if a is not None and b is not None and max(abs(a), abs(b)) > 0:
                    worst = max(worst, abs(a - b) / max(abs(a), abs(b)))
            differences[field] = worst
        print(
            "\nlargest relative difference per GPU, rollups vs raw: "
            + ", ".join(f"{k} {100 * v:.3f} %" for k, v in differences.items())
        )
    return {
        "days": days,
        "gpus": gpus,
        "step": step,
        "job_gpus": len(LONG_JOB),
        "rows": {k: asdict(v) for k, v in rows.items()},
        "differences": differences,
    }


def write_month(path: Path, gpus: int, start: float, end: float, since: float, until: float) -> int:
    """What ``alerts/rules/rollups.yaml`` records for a job holding ``gpus`` GPUs from ``start`` to
    ``end`` (utilisation mean and max, power mean, every 5 minutes), and its job info (hourly: the
    API needs the series in the label index, not its samples). Returns the number of samples."""
    import math

    rollup_times = [
        t for t in (start + i * 300.0 for i in range(int((end - start) // 300) + 1)) if since <= t < until
    ]
    info_times = [
        t for t in (start + i * 3600.0 for i in range(int((end - start) // 3600) + 1)) if since <= t < until
    ]
    devices = [(f"h{i // 8:04d}", i % 8) for i in range(gpus)]
    written = 0
    with open(path, "w") as fh:

        def family(name: str, times: list[float], value: Any, extra: str = "") -> None:
            nonlocal written
            fh.write(f"# TYPE {name} gauge\n")
            for h, g in devices:
                labels = f'Hostname="{h}",gpu="{g}"{extra.format(h=h, g=g)}'
                base = float((int(h[1:]) * 7 + g * 11) % 90 + 5)
                fh.writelines(f"{name}{{{labels}}} {value(base, t)!r} {t:.3f}\n" for t in times)
                written += len(times)

        def wave(base: float, t: float) -> float:
            return base + 4.0 * math.sin(2 * math.pi * (t - start) / 86400.0)

        family(
            "jobsight_gpu_job_info", info_times, lambda b, t: 1.0, ',UUID="GPU-{h}-{g}",job_id="' + JOB + '"'
        )
        family("gpu:DCGM_FI_DEV_GPU_UTIL:avg5m", rollup_times, wave)
        family("gpu:DCGM_FI_DEV_GPU_UTIL:max5m", rollup_times, lambda b, t: wave(b, t) + 3.0)
        family("gpu:DCGM_FI_DEV_POWER_USAGE:avg5m", rollup_times, lambda b, t: 100.0 + wave(b, t))
        fh.write("# EOF\n")
    return written


def month_case(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """A job on every GPU of a ``--month-gpus`` cluster for ``--month-days``: its summary from the
    rollups, under Prometheus' default limits. The TSDB holds the rollups as the rules record them
    (three of the eleven GPU statistics: a month of 2,048 GPUs' raw samples does not fit here)."""
    from tests.scale.cluster import prometheus_with_query_log

    days, gpus = args.month_days, args.month_gpus
    end = float(int(time.time()) // 300 * 300 - 900)
    window = (end - days * 86400, end)
    workdir = root / "month"
    workdir.mkdir()
    print(f"\nmonth: a {gpus}-GPU job over {days:g} days, summary from the 5-minute rollups", flush=True)
    started = time.perf_counter()
    source = workdir / "month.om"
    tsdb = workdir / "tsdb"
    tsdb.mkdir()
    samples = 0
    # One 2-hour block per promtool run: it reads its whole input once per 2-hour block.
    day = window[0] - window[0] % 7200
    while day <= window[1]:
        samples += write_month(source, gpus, window[0], window[1], day, day + 7200)
        subprocess.run(
            [require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)],
            check=True,
            capture_output=True,
            timeout=7200,
        )
        day += 7200
    source.unlink()
    print(f"  {samples:,} samples into TSDB blocks in {time.perf_counter() - started:.0f} s", flush=True)
    with (
        prometheus_with_query_log(tsdb, workdir) as prom,
        api(prom.url, workdir / "api", "rollups", None, window) as base,
        httpx.Client(timeout=600) as client,
    ):
        timing = timed(client, f"{base}/v1/jobs/{JOB}/summary", args.repeat)
        body = client.get(f"{base}/v1/jobs/{JOB}/summary", headers=auth()).json()
        logged = [json.loads(line) for line in prom.query_log.read_text().splitlines() if line.strip()]
    # Per summary: the queries that read the GPUs' series (they name hosts); the rest read the
    # job's own per-job series (training telemetry).
    summaries = max(1, args.repeat) + 2
    hardware = sum(1 for entry in logged if "Hostname=" in entry["params"]["query"])
    queries = f"{hardware // summaries} on the GPUs + {(len(logged) - hardware) // summaries} per-job"
    overall = body.get("overall", {})
    print(
        f"\n| summary of the {days:g}-day, {gpus}-GPU job | median ms | HTTP | read from | GPUs | util_mean "
        "| queries per summary |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    print(
        f"| rollups, Prometheus default limits | {timing.median_ms:.0f} | {timing.status} | "
        f"{body.get('rollup_step_seconds')} s rollups | {overall.get('gpus')} | "
        f"{overall.get('util_mean'):.3f} | {queries} |"
    )
    return {
        "days": days,
        "gpus": gpus,
        "samples": samples,
        "timing": asdict(timing),
        "rollup_step_seconds": body.get("rollup_step_seconds"),
        "gpus_answered": overall.get("gpus"),
        "queries_per_summary": queries,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("all", "ratio", "long", "month"), default="all")
    parser.add_argument("--sizes", default="64,2048", help="cluster sizes in GPUs (multiples of 8)")
    parser.add_argument("--hours", type=float, default=6.0, help="the ratio case's job window")
    parser.add_argument("--step", type=float, default=30.0, help="the ratio case's scrape interval, seconds")
    parser.add_argument("--repeat", type=int, default=5, help="requests per endpoint and API (median)")
    parser.add_argument("--long-days", type=float, default=14.0)
    parser.add_argument("--long-gpus", type=int, default=512)
    parser.add_argument(
        "--long-step", type=float, default=60.0, help="the long case's scrape interval, seconds"
    )
    parser.add_argument(
        "--baseline-rev", default=BASELINE_REV, help="git revision of the unbounded API; '' for none"
    )
    parser.add_argument("--month-days", type=float, default=30.0)
    parser.add_argument("--month-gpus", type=int, default=2048)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="jobsight-bench-scale-") as tmp:
        root = Path(tmp)
        baseline = baseline_tree(args.baseline_rev, root) if args.baseline_rev else None
        if args.case in ("all", "ratio"):
            figures["ratio"] = ratio_case(args, root, baseline)
        if args.case in ("all", "long"):
            figures["long"] = long_case(args, root, baseline)
        if args.case in ("all", "month"):
            figures["month"] = month_case(args, root)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    met = all(
        row["ratio"] <= GOAL for row in figures.get("ratio", {}).get("rows", []) if row["api"] == "current"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
