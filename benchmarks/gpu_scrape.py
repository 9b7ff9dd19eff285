"""Scrape cost of `jobsight exporter gpu`, over HTTP against the real process.

    .venv/bin/python benchmarks/gpu_scrape.py [--scrapes N] [--gpus N] [--nvml]

Default: 8 simulated GPUs with jobs. Prints a markdown table: scrape latency p50/p99, exporter
CPU seconds per scrape (background collection subtracted, measured on the same process while
idle), exposition size.

With ``--nvml`` (only on a GPU machine), the same run also measures, side by side:
- the exporter on real NVML (scrape latency, and the background read of every GPU);
- ``nvidia-smi --query-gpu=<the same fields> --format=csv`` once per scrape;
- raw nvidia-ml-py calls reading the same values for every GPU (the floor);
and prints the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere: import the checkout

from benchmarks.common import cpu_seconds, free_port, percentile, timed_get  # noqa: E402

# nvidia-smi fields matching what one exporter read gives.
SMI_FIELDS = (
    "index,uuid,pci.bus_id,name,utilization.gpu,utilization.memory,clocks.sm,clocks.mem,temperature.gpu,"
    "temperature.memory,power.draw,memory.total,memory.used,memory.free,memory.reserved,"
    "clocks_event_reasons.active,ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.volatile.total,"
    "ecc.errors.corrected.aggregate.total,ecc.errors.uncorrected.aggregate.total,"
    "encoder.stats.averageFps,pcie.link.gen.current"
)


class Exporter:
    def __init__(self, flags: Sequence[str]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "launch", "--log.level", "warning", "exporter", "gpu",
             "--web.listen-address", f"127.0.0.1:{self.port}", *flags],
            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise SystemExit(f"exporter exited: {err}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("exporter did not answer within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# What Prometheus 2.x sends: it prefers OpenMetrics and accepts gzip.
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
PLAIN_HEADERS = {"Accept": "text/plain", "Accept-Encoding": "identity"}


def measure_exporter(flags: Sequence[str], scrapes: int, idle_s: float,
                     headers: dict[str, str]) -> dict[str, float]:
    exporter = Exporter(flags)
    try:
        with httpx.Client(timeout=10, headers=headers) as client:
            for _ in range(20):  # warm-up
                client.get(exporter.url)
            cpu0, t0 = cpu_seconds(exporter.proc.pid), time.monotonic()
            time.sleep(idle_s)
            background_cpu_per_s = (cpu_seconds(exporter.proc.pid) - cpu0) / (time.monotonic() - t0)
            latencies: list[float] = []
            size = 0
            cpu0, t0 = cpu_seconds(exporter.proc.pid), time.monotonic()
            for _ in range(scrapes):
                response, latency = timed_get(client, exporter.url)
                latencies.append(latency)
                size = len(response.content)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(exporter.proc.pid) - cpu0
            text = response.text
        read_s = sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                     if line.startswith("jobsight_gpu_collect_duration_seconds{"))
        return {
            "p50": statistics.median(latencies),
            "p99": percentile(latencies, 0.99),
            "cpu_per_scrape": max(0.0, cpu - background_cpu_per_s * wall) / scrapes,
            "background_cpu_per_s": background_cpu_per_s,
            "bytes": float(size),
            "series": float(sum(1 for line in text.splitlines() if line and not line.startswith("#"))),
            "read_all_gpus_s": read_s,
        }
    finally:
        exporter.stop()


# A server process like the exporter's (wsgiref + ThreadingMixIn, as jobsight.serving uses) that
# answers every request with the same bytes: the floor a render cache would bring a scrape to.
_FIXED_BODY_SERVER = """
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass
body = b"x" * int(sys.argv[2])
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
    return [body]
make_server("127.0.0.1", int(sys.argv[1]), app, server_class=Server, handler_class=Quiet).serve_forever()
"""


def measure_fixed_body(size: int, scrapes: int) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _FIXED_BODY_SERVER, str(port), str(size)],
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit("fixed-body server did not start") from None
                time.sleep(0.05)
        with httpx.Client(timeout=10, headers=PLAIN_HEADERS) as client:
            for _ in range(20):
                client.get(url)
            latencies = time_calls(lambda: client.get(url), scrapes)
        return {"p50": statistics.median(latencies), "p99": percentile(latencies, 0.99)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def time_calls(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def raw_nvml_read_all() -> Callable[[], object]:
    """The floor: direct nvidia-ml-py calls for the same values, every GPU, no exporter."""
    import pynvml  # the benchmark's baseline, not exporter code: exporters/gpu/nvml.py is the seam

    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    # The exporter's batch (exporters/gpu/nvml.py _FIELD_IDS), in the same order.
    field_ids = [82, 83, 94, 3, 4, 5, 6, 142, 143, 144, 145, 74, 75, 230,
                 (138, 0xFFFFFFFF), (139, 0xFFFFFFFF)]

    def quiet(fn: Callable[..., object], *args: object) -> object:
        try:
            return fn(*args)
        except pynvml.NVMLError:
            return None

    def read_all() -> object:
        for h in handles:
            quiet(pynvml.nvmlDeviceGetUtilizationRates, h)
            quiet(pynvml.nvmlDeviceGetEncoderUtilization, h)
            quiet(pynvml.nvmlDeviceGetDecoderUtilization, h)
            quiet(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)
            quiet(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM)
            quiet(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)
            quiet(pynvml.nvmlDeviceGetPowerUsage, h)
            quiet(pynvml.nvmlDeviceGetMemoryInfo, h, pynvml.nvmlMemory_v2)
            quiet(pynvml.nvmlDeviceGetCurrentClocksEventReasons, h)
            quiet(pynvml.nvmlDeviceGetFieldValues, h, field_ids)
            quiet(pynvml.nvmlDeviceGetComputeRunningProcesses, h)
        return None

    return read_all


# Fields every driver since R450 knows, for drivers that reject one of SMI_FIELDS.
SMI_FIELDS_MINIMAL = (
    "index,uuid,pci.bus_id,name,utilization.gpu,utilization.memory,clocks.sm,clocks.mem,temperature.gpu,"
    "power.draw,memory.total,memory.used,memory.free"
)


def nvidia_smi_query_fn() -> tuple[Callable[[], object], str]:
    """A function running nvidia-smi once, with the richest field list this driver accepts."""
    for fields in (SMI_FIELDS, SMI_FIELDS_MINIMAL):
        argv = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv"]
        if subprocess.run(argv, capture_output=True, timeout=60).returncode == 0:
            def run(argv: list[str] = argv) -> object:
                return subprocess.run(argv, check=True, capture_output=True, timeout=60)

            return run, fields
    raise SystemExit("nvidia-smi --query-gpu fails on this machine")


def in_process_breakdown(gpus: int, runs: int) -> dict[str, float]:
    """Where a scrape's time goes, without HTTP: the collector building its families, and
    prometheus_client rendering them (text and OpenMetrics), same collector as the process."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from exporters.gpu.attribution import JobAttributor
    from exporters.gpu.collector import GpuCollector
    from exporters.gpu.sampler import Sampler
    from exporters.gpu.scenario import FixedScenario, default_scenario
    from exporters.gpu.simulated import SimulatedBackend
    from exporters.gpu.xid import XidLedger
    from jobsight.identity import JobMapDir, ProcessJobResolver
    from jobsight.serving import CollectorSet

    render_openmetrics: Callable[[CollectorRegistry], bytes] = generate_openmetrics  # it is untyped
    backend = SimulatedBackend(FixedScenario(default_scenario(gpus)), hostname="bench")
    ledger = XidLedger()
    attributor = JobAttributor(JobMapDir("/nonexistent"), ProcessJobResolver("/proc"), time.monotonic)
    sampler = Sampler(backend, attributor, ledger)
    for view in sampler.views():
        sampler.collect_once(view.identity.index)
    collector = GpuCollector(sampler, ledger, backend.info(), "bench")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorSet({"gpu": collector}))
    return {
        "collect": statistics.median(time_calls(lambda: list(collector.collect()), runs)),
        "text": statistics.median(time_calls(lambda: generate_latest(registry), runs)),
        "openmetrics": statistics.median(time_calls(lambda: render_openmetrics(registry), runs)),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds to measure background CPU")
    parser.add_argument("--nvml", action="store_true", help="also measure real NVML and nvidia-smi")
    args = parser.parse_args(argv)

    print(f"# GPU exporter scrape benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} CPUs, {args.scrapes} scrapes\n")
    sim_flags = ["--simulate", str(args.gpus)]
    label = f"simulated, {args.gpus} GPUs with jobs"
    rows = [
        (f"{label}, as Prometheus asks (OpenMetrics, gzip)",
         measure_exporter(sim_flags, args.scrapes, args.idle, PROMETHEUS_HEADERS)),
        (f"{label}, plain text, uncompressed",
         measure_exporter(sim_flags, args.scrapes, args.idle, PLAIN_HEADERS)),
    ]
    extra: list[str] = []
    if args.nvml:
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=index,name,driver_version", "--format=csv,noheader"]
            gpus = subprocess.run(query, capture_output=True, text=True, timeout=60).stdout.splitlines()
            print("GPUs (index, name, driver):\n\n" + "\n".join(f"    {line}" for line in gpus) + "\n")
        real = measure_exporter([], args.scrapes, args.idle, PROMETHEUS_HEADERS)
        rows.append(("real NVML", real))
        runs = max(20, args.scrapes // 10)
        smi: list[float] = []
        if shutil.which("nvidia-smi"):
            smi_fn, smi_fields = nvidia_smi_query_fn()
            smi = time_calls(smi_fn, runs)
            extra.append(f"nvidia-smi fields: `{smi_fields}`\n")
        raw = time_calls(raw_nvml_read_all(), runs)
        extra.append("| comparison (same run) | p50 ms | ratio |")
        extra.append("| --- | ---: | ---: |")
        extra.append(f"| exporter scrape (real NVML) | {ms(real['p50'])} | 1 |")
        if smi:
            smi_p50 = statistics.median(smi)
            extra.append(f"| `nvidia-smi --query-gpu=… --format=csv` | {ms(smi_p50)} | "
                         f"nvidia-smi / scrape = {smi_p50 / real['p50']:.1f}x |")
        raw_p50 = statistics.median(raw)
        extra.append(f"| raw nvidia-ml-py, same values, all GPUs | {ms(raw_p50)} | "
                     f"scrape / raw = {real['p50'] / raw_p50:.2f}x |")
        read = real["read_all_gpus_s"]
        extra.append("| exporter background read, all GPUs (sum of jobsight_gpu_collect_duration_seconds) "
                     f"| {ms(read)} | read / raw = {read / raw_p50:.2f}x |")
    print("| exporter | scrape p50 ms | scrape p99 ms | CPU ms / scrape | background CPU ms / s | series "
          "| bytes (uncompressed) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        print(f"| {name} | {ms(r['p50'])} | {ms(r['p99'])} | {ms(r['cpu_per_scrape'])} | "
              f"{ms(r['background_cpu_per_s'])} | {int(r['series'])} | {int(r['bytes'])} |")
    floor = measure_fixed_body(int(rows[1][1]["bytes"]), args.scrapes)
    print(f"| HTTP floor: same server classes answering with fixed {int(rows[1][1]['bytes'])} bytes "
          f"| {ms(floor['p50'])} | {ms(floor['p99'])} | | | | |")
    parts = in_process_breakdown(args.gpus, 200)
    print(f"| in-process, no HTTP: collector builds families | {ms(parts['collect'])} | | | | | |")
    print(f"| in-process, no HTTP: prometheus_client renders text | {ms(parts['text'])} | | | | | |")
    print(f"| in-process, no HTTP: prometheus_client renders OpenMetrics | {ms(parts['openmetrics'])} "
          "| | | | | |")
    if not args.nvml:
        print("| real NVML vs nvidia-smi vs raw NVML | not measured here (no GPU): run with --nvml "
              "| | | | | |")
    if extra:
        print()
        print("\n".join(extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
