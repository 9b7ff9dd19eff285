"""Load benchmark of the job API: 50 concurrent clients against a real Prometheus holding 24 h of a
64-GPU job at a 15 s interval (generated with ``promtool tsdb create-blocks-from openmetrics``).

Measures p50/p99 latency and requests/s of ``GET /v1/jobs/{id}/metrics`` and ``/summary`` through
``jobsight api`` (uvicorn, one process), and, as the peer, the same range query sent straight to
Prometheus with the same concurrency: the ratio is the API's own cost.

The page case (``--case page``) renders the job page of the demo's failed job: ``jobsight up`` in a
temporary state directory, the page opened through the signed link of the failure notification,
the server's own time read from its ``Server-Timing`` header (goal: p50 <= 150 ms), and the page's
assets checked for caching headers.

    .venv/bin/python benchmarks/api_load.py [--case all|load|page] [--hours 24] [--gpus 64]
                                            [--clients 50] [--requests 400] [--page-requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jobsight.logstore import SQLiteLogStore  # noqa: E402
from tests.support import Proc, free_port, jobsight_command, require_binary, wait_for_http  # noqa: E402

TOKEN = "bench-admin-token-0123456789"
JOB = "bench-64"
STEP = 15


def write_openmetrics(path: Path, start: int, end: int, gpus: int, per_node: int = 8) -> int:
    """Stream the series to ``path`` family by family; returns the number of samples."""
    times = range(start, end + 1, STEP)
    hosts = [(f"gpu-node{g // per_node:02d}", g % per_node) for g in range(gpus)]
    samples = 0

    def labels(host: str, gpu: int) -> str:
        return (f'Hostname="{host}",UUID="GPU-{host}-{gpu}",device="nvidia{gpu}",gpu="{gpu}",'
                f'modelName="NVIDIA H100 80GB HBM3",pci_bus_id="00000000:{0x18 + gpu:02X}:00.0"')

    families: list[tuple[str, Callable[[int, int, int], float]]] = [
        ("DCGM_FI_DEV_GPU_UTIL", lambda g, i, t: float(60 + (g * 7 + i) % 40)),
        ("DCGM_FI_DEV_FB_USED", lambda g, i, t: float(40000 + (i % 100) * 10)),
        ("DCGM_FI_DEV_POWER_USAGE", lambda g, i, t: 300.0 + (i % 50)),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", lambda g, i, t: float(i) * STEP * 300_000.0),
        ("DCGM_FI_DEV_POWER_VIOLATION", lambda g, i, t: float(i // 40) * 1e9),
        ("DCGM_FI_DEV_THERMAL_VIOLATION", lambda g, i, t: 0.0),
        ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", lambda g, i, t: 0.0),
        ("jobsight_gpu_up", lambda g, i, t: 1.0),
        ("jobsight_gpu_info", lambda g, i, t: 1.0),
    ]
    with open(path, "w") as fh:
        for name, value in families:
            fh.write(f"# TYPE {name} gauge\n")
            for g, (host, gpu) in enumerate(hosts):
                text = labels(host, gpu)
                fh.writelines(f"{name}{{{text}}} {value(g, i, t)!r} {t}\n" for i, t in enumerate(times))
                samples += len(times)
        fh.write("# TYPE jobsight_gpu_job_info gauge\n")
        for host, gpu in hosts:
            text = f'Hostname="{host}",UUID="GPU-{host}-{gpu}",gpu="{gpu}",job_id="{JOB}"'
            fh.writelines(f"jobsight_gpu_job_info{{{text}}} 1.0 {t}\n" for t in times)
            samples += len(times)
        nodes = sorted({h for h, _ in hosts})
        for name, rate in (("node_infiniband_port_data_received_bytes_total", 1e9),
                           ("node_infiniband_port_data_transmitted_bytes_total", 1e9)):
            fh.write(f"# TYPE {name} gauge\n")
            for host in nodes:
                port = f'Hostname="{host}",device="mlx5_0",port="1"'
                fh.writelines(f"{name}{{{port}}} {i * STEP * rate!r} {t}\n" for i, t in enumerate(times))
                samples += len(times)
        fh.write("# EOF\n")
    return samples


@dataclass(frozen=True)
class Result:
    name: str
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float


async def load(name: str, call: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]], clients: int,
               requests: int) -> Result:
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await call(client)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for _ in range(5):  # warm-up: connections, caches
            await call(client)
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Result(name, len(latencies), errors, len(latencies) / elapsed, 1000 * statistics.median(latencies),
                  1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)], 1000 * latencies[-1])


def _server_ms(response: httpx.Response) -> float:
    """The ``render;dur=`` of a job page's Server-Timing header, in milliseconds."""
    for part in response.headers.get("server-timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == "render":
            return float(dur)
    raise ValueError(f"no render time in Server-Timing: {response.headers.get('server-timing')!r}")


def _in_chromium(url: str, runs: int) -> list[float]:
    """Milliseconds from navigation to the charts drawn, in Debian's headless Chromium (a fresh
    context each run: nothing cached, as for a researcher opening the notification's link)."""
    from tests.api.pages.browser import chromium

    took: list[float] = []
    with chromium() as browser:
        for _ in range(runs):
            context = browser.new_context()
            try:
                page = context.new_page()
                started = time.perf_counter()
                page.goto(url)
                page.wait_for_selector("body[data-charts=ready]", timeout=30_000)
                took.append(1000 * (time.perf_counter() - started))
            finally:
                context.close()
    return took


def page_case(requests: int, clients: int) -> int:
    """The demo's failed job page, as a researcher opens it from the notification."""
    import re

    work = Path(tempfile.mkdtemp(prefix="jobsight-page-bench-"))
    state = work / "state"
    up = Proc(jobsight_command("up", "--state-dir", str(state), "--free-ports", "--fault-after", "8",
                               "--scrape-interval", "2"), work / "up.log")
    try:
        link = None
        deadline = time.monotonic() + 300
        while link is None:
            if time.monotonic() > deadline or not up.alive():
                raise SystemExit(f"no failure notification from jobsight up:\n{up.output()[-3000:]}")
            try:
                lines = (state / "notifications.jsonl").read_text().splitlines()
                bodies = [str(json.loads(line)["body"]) for line in lines]
                words = [w for body in bodies for w in body.split() if "/jobs/demo-fail?sig=" in w]
                link = words[0] if words else None
            except OSError:
                pass
            time.sleep(0.2)
        print(f"page: {link.split('?')[0]} (signed link from the notification)", flush=True)
        with httpx.Client(timeout=60) as client:
            cold = client.get(link)
            cold.raise_for_status()
            assert "XID 79 on node2 GPU 3" in cold.text, cold.text[:2000]
            server: list[float] = []
            wall: list[float] = []
            for _ in range(requests):
                started = time.perf_counter()
                response = client.get(link)
                wall.append(1000 * (time.perf_counter() - started))
                response.raise_for_status()
                server.append(_server_ms(response))
            charts_url = link.replace("/jobs/demo-fail?", "/jobs/demo-fail/charts.json?")
            charts: list[float] = []
            for _ in range(max(20, requests // 4)):
                started = time.perf_counter()
                client.get(charts_url).raise_for_status()
                charts.append(1000 * (time.perf_counter() - started))
            assets = sorted(set(re.findall(r'(?:src|href)="(/static/[^"]+)"', cold.text)))
            base = link.split("/jobs/")[0]
            asset_rows = []
            for path in assets:
                response = client.get(base + path.replace("&amp;", "&"))
                response.raise_for_status()
                headers = response.headers
                asset_rows.append((path.split("?")[0], len(response.content), headers.get("cache-control"),
                                   headers.get("etag") is not None))
        page_url: str = link
        browser_ms = _in_chromium(page_url, runs=10)
        concurrent = asyncio.run(load("GET /jobs/demo-fail?sig=… (concurrent)", lambda c: c.get(page_url),
                                      clients, requests))

        def q(values: list[float], at: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(at * len(ordered)))]

        print(f"\ncold first render: server {_server_ms(cold):.0f} ms, {len(cold.content)} bytes of HTML")
        print("\n| what | requests | p50 ms | p95 ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print(f"| page, server time (Server-Timing) | {len(server)} | {statistics.median(server):.0f} | "
              f"{q(server, 0.95):.0f} | {max(server):.0f} |")
        print(f"| page, client round trip | {len(wall)} | {statistics.median(wall):.0f} | "
              f"{q(wall, 0.95):.0f} | {max(wall):.0f} |")
        print(f"| charts.json, client round trip | {len(charts)} | {statistics.median(charts):.0f} | "
              f"{q(charts, 0.95):.0f} | {max(charts):.0f} |")
        print(f"| page, {clients} concurrent clients ({concurrent.rps:.1f} req/s, "
              f"{concurrent.errors} errors) | "
              f"{concurrent.requests} | {concurrent.p50_ms:.0f} | {concurrent.p99_ms:.0f} (p99) | "
              f"{concurrent.max_ms:.0f} |")
        print(f"| page in headless Chromium: navigation to charts drawn | {len(browser_ms)} | "
              f"{statistics.median(browser_ms):.0f} | {q(browser_ms, 0.95):.0f} | {max(browser_ms):.0f} |")
        print("\n| asset | bytes | Cache-Control | ETag |")
        print("| --- | ---: | --- | --- |")
        for path, size, cache, etag in asset_rows:
            print(f"| {path} | {size} | {cache} | {'yes' if etag else 'no'} |")
        goal = statistics.median(server) <= 150
        verdict = "met" if goal else "NOT met"
        print(f"\npage render p50 {statistics.median(server):.0f} ms: goal (<= 150 ms) {verdict}")
        return 0
    finally:
        up.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("all", "load", "page"), default="all")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=400, help="requests per endpoint")
    parser.add_argument("--page-requests", type=int, default=200, help="renders of the demo's job page")
    parser.add_argument("--page-clients", type=int, default=10, help="concurrent clients on the job page")
    args = parser.parse_args()
    if args.case in ("all", "page"):
        page_case(args.page_requests, args.page_clients)
        if args.case == "page":
            return 0

    work = Path(tempfile.mkdtemp(prefix="jobsight-api-bench-"))
    procs: list[Proc] = []
    try:
        # The job ended ten minutes ago: its window is settled, as for any finished job.
        end = (int(time.time()) // STEP) * STEP - 600
        start = end - int(args.hours * 3600)
        source = work / "series.om"
        t0 = time.perf_counter()
        samples = write_openmetrics(source, start, end, args.gpus)
        tsdb = work / "tsdb"
        tsdb.mkdir()
        subprocess.run([require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(source),
                        str(tsdb)], check=True, capture_output=True)
        source.unlink()
        print(f"generated {samples} samples into TSDB blocks in {time.perf_counter() - t0:.0f} s", flush=True)

        prom_port = free_port()
        (work / "prometheus.yml").write_text("scrape_configs: []\n")
        prom = Proc([require_binary("prometheus"), f"--config.file={work / 'prometheus.yml'}",
                     f"--storage.tsdb.path={tsdb}", f"--web.listen-address=127.0.0.1:{prom_port}",
                     "--storage.tsdb.retention.time=3650d", "--log.level=warn"], work / "prometheus.log")
        procs.append(prom)
        prom_url = f"http://127.0.0.1:{prom_port}"
        wait_for_http(f"{prom_url}/-/ready", timeout=300, proc=prom)

        SQLiteLogStore(work / "logs").close()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        job = {"status": "failed", "exit_code": 1, "started_at": start, "ended_at": end,
               "nodes": sorted({f"gpu-node{g // 8:02d}" for g in range(args.gpus)})}
        bases = {}
        # Two API processes on the same Prometheus: the default (results cache on) and the cache
        # switched off, which is what every first request for a job costs.
        for label, cache_seconds in (("cache off", 0), ("cache on", 300)):
            config = {"store_url": f"sqlite:///{work / f'api-{cache_seconds}.db'}",
                      "prometheus_url": prom_url,
                      "log_store": str(work / "logs"), "query_cache_seconds": cache_seconds,
                      "tokens": [{"token": TOKEN, "tenant": "ops", "admin": True}],
                      "dependency_timeout_seconds": 60}
            path = work / f"api-{cache_seconds}.json"
            path.write_text(json.dumps(config))  # JSON is valid YAML
            port = free_port()
            api = Proc(jobsight_command("api", "--config", str(path), "--listen", f"127.0.0.1:{port}"),
                       work / f"api-{cache_seconds}.log")
            procs.append(api)
            bases[label] = f"http://127.0.0.1:{port}"
            wait_for_http(f"{bases[label]}/healthz", proc=api)
            httpx.put(f"{bases[label]}/v1/jobs/{JOB}", json=job, headers=headers).raise_for_status()
        base = bases["cache off"]
        check = httpx.get(f"{base}/v1/jobs/{JOB}/summary", headers=headers, timeout=120)
        check.raise_for_status()
        assert check.json()["overall"]["gpus"] == args.gpus, check.text[:500]
        metrics = httpx.get(f"{base}/v1/jobs/{JOB}/metrics", params={"name": "gpu_util"}, headers=headers,
                            timeout=120).json()
        step = metrics["step_seconds"]
        points = len(metrics["metrics"][0]["series"][0]["points"])
        print(f"metrics: {len(metrics['metrics'][0]['series'])} series x {points} points (step {step:g} s)")

        from api.catalog import CATALOG, rate_window

        # The peer gets the query the API sends: the job's hosts in the selectors.
        nodes = sorted({f"gpu-node{g // 8:02d}" for g in range(args.gpus)})
        promql = CATALOG["gpu_util"].build(JOB, nodes, rate_window(step))
        results = []
        results.append(asyncio.run(load(
            "prometheus query_range (peer)",
            lambda c: c.post(f"{prom_url}/api/v1/query_range",
                             data={"query": promql, "start": start, "end": end, "step": step}),
            args.clients, args.requests)))
        for label, url in bases.items():
            metrics_url, summary_url = f"{url}/v1/jobs/{JOB}/metrics", f"{url}/v1/jobs/{JOB}/summary"

            def get_metrics(c: httpx.AsyncClient, target: str = metrics_url) -> Awaitable[httpx.Response]:
                return c.get(target, params={"name": "gpu_util"}, headers=headers)

            def get_summary(c: httpx.AsyncClient, target: str = summary_url) -> Awaitable[httpx.Response]:
                return c.get(target, headers=headers)

            results.append(asyncio.run(load(f"GET /v1/jobs/{{id}}/metrics?name=gpu_util ({label})",
                                            get_metrics, args.clients, args.requests)))
            summaries = args.requests if label == "cache on" else max(50, args.requests // 4)
            results.append(asyncio.run(load(f"GET /v1/jobs/{{id}}/summary ({label})", get_summary,
                                            args.clients, summaries)))
        print("\n| endpoint | requests | errors | req/s | p50 ms | p99 ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in results:
            print(f"| {r.name} | {r.requests} | {r.errors} | {r.rps:.1f} | {r.p50_ms:.0f} | {r.p99_ms:.0f} | "
                  f"{r.max_ms:.0f} |")
        peer, api_metrics = results[0], results[1]
        print(f"\nAPI/peer ratio for the metrics query: p50 x{api_metrics.p50_ms / peer.p50_ms:.2f}, "
              f"throughput x{api_metrics.rps / peer.rps:.2f}")
        return 0
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
