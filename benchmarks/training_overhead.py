"""What jobsight.training costs a training loop, and what receiving it costs the agent.

1. ``tracker.step()`` and ``with tracker.phase(...)`` per call (median over batches), with the
   agent up, down (nothing listening), slow (answers after 5 s, longer than the export timeout)
   and failing (HTTP 500), while the tracker exports every 50 ms so its export thread competes
   for the interpreter the whole time. Goal (issue "Training progress from inside the job"):
   ``step()`` ≤ 20 µs median.
2. A loop of 100 ms steps with each of those agents: the wall time over the sleeps, in percent of
   the step (goal: a failing exporter costs < 1 % of a 100 ms step).
3. Agent ingestion: a real ``jobsight agent`` (OTLP receiver only) and 64 trackers (64 ranks, each
   exporting every second, stepping 10 times a second); the agent's CPU per 1,000 steps and per
   request; then the requests per second it answers when 8 clients post pre-encoded requests of
   those 64 ranks back to back.

    .venv/bin/python benchmarks/training_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks.common import cpu_seconds, free_port, percentile
from jobsight import training

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def fake_agent(mode: str) -> Iterator[str]:
    """An OTLP endpoint that is down, slow or failing; yields its metrics URL."""
    if mode == "down":
        yield f"http://127.0.0.1:{free_port()}/v1/metrics"
        return
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if mode == "slow":
                release.wait(5.0)
            self.send_response(500 if mode == "500" else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/metrics"
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@contextmanager
def real_agent() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``jobsight agent`` with only the OTLP receiver; yields its OTLP metrics URL and process."""
    web, otlp = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch",
            "agent",
            f"--web.listen-address=127.0.0.1:{web}",
            "--no-collector.gpu",
            "--no-collector.node",
            "--no-collector.rdma",
            f"--otlp.listen-address=127.0.0.1:{otlp}",
            "--hostname=bench",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{web}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the agent did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{otlp}/v1/metrics", proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def per_call_us(call: Callable[[], None], batches: int, per_batch: int) -> list[float]:
    out = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(per_batch):
            call()
        out.append((time.perf_counter() - start) / per_batch * 1e6)
    return out


def micro(url: str, batches: int) -> tuple[float, float, float, int]:
    tracker = training.start(
        job_id="bench", rank=0, endpoint=url, export_interval_s=0.05, export_timeout_s=0.5
    )
    try:

        def step() -> None:
            tracker.step(samples=32, tokens=65536, loss=1.0)

        def phase() -> None:
            with tracker.phase("compute"):
                pass

        per_call_us(step, 5, 1000)  # warm-up
        steps = per_call_us(step, batches, 2000)
        phases = per_call_us(phase, batches, 2000)
        return (
            statistics.median(steps),
            percentile(steps, 0.99),
            statistics.median(phases),
            tracker.failed_exports,
        )
    finally:
        tracker.close(timeout_s=0.5)


def loop_overhead(url: str, steps: int, step_s: float = 0.1) -> float:
    """Percent of wall time over ``steps`` sleeps of ``step_s``, with phases and a step each."""
    tracker = training.start(
        job_id="bench-loop", rank=0, endpoint=url, export_interval_s=0.5, export_timeout_s=0.5
    )
    try:
        start = time.perf_counter()
        slept = 0.0
        for _ in range(steps):
            with tracker.phase("compute"):
                t = time.perf_counter()
                time.sleep(step_s)
                slept += time.perf_counter() - t
            tracker.step(samples=32, loss=1.0)
        return (time.perf_counter() - start - slept) / (steps * step_s) * 100
    finally:
        tracker.close(timeout_s=0.5)


def ingestion(seconds: float, ranks: int = 64) -> dict[str, float]:
    with real_agent() as (url, proc):
        trackers = [
            training.start(
                job_id="bench-64", rank=r, endpoint=url, export_interval_s=1.0, export_timeout_s=2.0
            )
            for r in range(ranks)
        ]
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        steps = 0
        while time.perf_counter() - t0 < seconds:
            tick = time.perf_counter()
            for tracker in trackers:
                with tracker.phase("compute"):
                    pass
                tracker.step(samples=8)
            steps += ranks
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))
        for tracker in trackers:
            tracker.flush(2.0)
        cpu = cpu_seconds(proc.pid) - cpu0
        failed = sum(t.failed_exports for t in trackers)
        for tracker in trackers:
            tracker.close(timeout_s=0.5)

        # Capacity: the same ranks' requests, pre-encoded, posted back to back by 8 clients.
        bodies = [_encoded_request(r) for r in range(ranks)]
        counts = [0] * 8
        stop = time.perf_counter() + seconds

        def client(i: int) -> None:
            with httpx.Client(headers={"Content-Type": "application/x-protobuf"}) as http:
                n = 0
                while time.perf_counter() < stop:
                    http.post(url, content=bodies[n % ranks]).raise_for_status()
                    n += 1
                counts[i] = n

        cpu1 = cpu_seconds(proc.pid)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        burst_cpu = cpu_seconds(proc.pid) - cpu1
        total = sum(counts)
        return {
            "steps": steps,
            "agent_cpu_s": cpu,
            "cpu_ms_per_1k_steps": cpu / steps * 1000 * 1000,
            "failed_exports": failed,
            "requests_per_s": total / seconds,
            "cpu_ms_per_request": burst_cpu / total * 1000,
        }


def _encoded_request(rank: int) -> bytes:
    """What one rank's tracker sends, encoded by the SDK's own OTLP encoder."""
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        shutdown_on_exit=False,
        resource=Resource.create({training.ATTR_JOB_ID: "bench-burst", training.ATTR_RANK: rank}),
    )
    meter = provider.get_meter("bench")
    hist = meter.create_histogram(
        training.STEP_DURATION, explicit_bucket_boundaries_advisory=training.DURATION_BUCKETS_S
    )
    phase = meter.create_histogram(
        training.PHASE_DURATION, explicit_bucket_boundaries_advisory=training.DURATION_BUCKETS_S
    )
    for _ in range(10):
        hist.record(0.1)
        phase.record(0.06, {"phase": "compute"})
    for name in (training.STEPS, training.SAMPLES, training.TOKENS):
        meter.create_counter(name).add(10)
    meter.create_gauge(training.LAST_STEP).set(time.time())
    meter.create_gauge(training.LOSS).set(1.0)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return encode_metrics(data).SerializeToString()


def main() -> int:
    # The tracker says once per agent that exports fail; here that is the point, not news.
    logging.getLogger("jobsight.training").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer batches and shorter runs")
    args = parser.parse_args()
    batches, loop_steps, seconds = (10, 20, 5.0) if args.quick else (40, 50, 20.0)
    print(f"jobsight.training overhead ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})")
    print("\n1. per call, exporting every 50 ms (median over batches of 2,000 calls)")
    print(f"{'agent':<8} {'step() p50':>11} {'step() p99':>11} {'phase() p50':>12} {'failed exports':>15}")
    with real_agent() as (url, _):
        conditions: list[tuple[str, str | None]] = [
            ("up", url),
            ("down", None),
            ("slow", None),
            ("500", None),
        ]
        for mode, given in conditions:
            if given is not None:
                s50, s99, p50, failed = micro(given, batches)
            else:
                with fake_agent(mode) as fake:
                    s50, s99, p50, failed = micro(fake, batches)
            print(f"{mode:<8} {s50:>9.2f}µs {s99:>9.2f}µs {p50:>10.2f}µs {failed:>15}")
        print(f"\n2. a loop of {loop_steps} steps of 100 ms: wall time over the sleeps, % of a step")
        for mode, given in conditions:
            if given is not None:
                pct = loop_overhead(given, loop_steps)
            else:
                with fake_agent(mode) as fake:
                    pct = loop_overhead(fake, loop_steps)
            print(f"{mode:<8} {pct:.3f} %")
    print(f"\n3. agent ingestion: 64 ranks, 10 steps/s each, exporting every second, {seconds:.0f} s")
    figures = ingestion(seconds)
    print(
        f"   steps {figures['steps']:.0f}, agent CPU {figures['agent_cpu_s']:.2f} s, "
        f"{figures['cpu_ms_per_1k_steps']:.2f} ms CPU per 1,000 steps, "
        f"failed exports {figures['failed_exports']:.0f}"
    )
    print(
        f"   capacity, 8 clients posting the 64 ranks' requests: {figures['requests_per_s']:.0f} requests/s, "
        f"{figures['cpu_ms_per_request']:.3f} ms agent CPU per request"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
