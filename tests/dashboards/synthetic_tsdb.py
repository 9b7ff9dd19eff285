"""A synthetic cluster's history written as OpenMetrics and turned into a Prometheus TSDB by the
real ``promtool tsdb create-blocks-from openmetrics``, then served by a real Prometheus: what a
Grafana dashboard opened on a *finished* job asks Prometheus about. Used by the job dashboard's
history tests and by ``benchmarks/dashboards_scale.py``.

The story, in minutes from the start of the window (``WINDOW`` long, a sample every ``step``):

- ``FAILED_JOB`` runs on ``node000`` and ``node001`` (all 16 GPUs) from ``JOB_START`` to
  ``JOB_END``. At ``XID_AT`` GPU 3 of ``node001`` has XID 79 and is lost: its value series stop,
  ``jobsight_gpu_up`` goes 0, and the exporter drops its ``jobsight_gpu_job_info``. The job then
  fails: an ``nccl_timeout`` log event (the counter's series is born at 1), the kernel's ``gpu_xid``
  event with no job (``job_id=""``), every info and process series of the job ends at ``JOB_END``
  and ``jobsight_job_status`` says failed.
- ``node002`` GPU 0 is shared by ``SHARED_JOBS`` (two info series for one GPU) the whole window.
- Every other GPU is held by one bystander job per host, ``bg-<host>``, the whole window.

Series have no staleness markers in imported blocks, so a series that ends is still seen for
Prometheus' 5-minute lookback; ``view()`` is the API's link for the job (start - 5 min ... end +
5 min), whose end is past that."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from dashboards.queries import InstantQuery, VariableValue, iter_queries
from tests.support import Proc, free_port, require_binary, wait_for_http

GPUS_PER_HOST = 8
WINDOW = 60 * 60
JOB_START = 10 * 60
XID_AT = 38 * 60
JOB_END = 40 * 60
FAILED_JOB = "fail-1"
FAILED_HOSTS = ("node000", "node001")
LOST_GPU = ("node001", 3)
SHARED_JOBS = ("shared-a", "shared-b")
SHARED_GPU = ("node002", 0)
PAD = 5 * 60


@dataclass(frozen=True)
class View:
    """The dashboard's time range, in Unix seconds."""

    start: float
    end: float

    @property
    def range_s(self) -> int:
        return int(self.end - self.start)


def host_name(index: int) -> str:
    return f"node{index:03d}"


def view(origin: float) -> View:
    """The API's link for the failed job: job start - 5 min ... job end + 5 min."""
    return View(origin + JOB_START - PAD, origin + JOB_END + PAD)


def _labels(labels: Mapping[str, object]) -> str:
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}"


@dataclass(frozen=True)
class _Series:
    name: str
    labels: Mapping[str, object]
    start: int  # seconds from the origin, inclusive
    end: int  # exclusive
    value: float
    per_s: float = 0.0  # counters grow by this per second from ``value``


def _jobs_of(host: str, gpu: int, t: int) -> list[str]:
    if host in FAILED_HOSTS:
        lost = (host, gpu) == LOST_GPU and t >= XID_AT
        return [FAILED_JOB] if JOB_START <= t < JOB_END and not lost else []
    if (host, gpu) == SHARED_GPU:
        return list(SHARED_JOBS)
    return [f"bg-{host}"]


def _cluster_series(hosts: int, window: int) -> Iterator[_Series]:
    for h in range(hosts):
        host = host_name(h)
        for gpu in range(GPUS_PER_HOST):
            labels: dict[str, object] = {
                "Hostname": host,
                "gpu": gpu,
                "UUID": f"GPU-{host}-{gpu}",
                "modelName": "NVIDIA H100 80GB HBM3",
            }
            lost = (host, gpu) == LOST_GPU
            alive_until = XID_AT if lost else window
            for name, value in {
                "DCGM_FI_DEV_GPU_UTIL": 90.0,
                "DCGM_FI_DEV_FB_USED": 70000.0,
                "DCGM_FI_DEV_FB_FREE": 11000.0,
                "DCGM_FI_DEV_POWER_USAGE": 600.0,
                "DCGM_FI_DEV_GPU_TEMP": 65.0,
                "DCGM_FI_DEV_MEMORY_TEMP": 70.0,
                "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.4,
                "DCGM_FI_PROF_SM_ACTIVE": 0.7,
                "DCGM_FI_PROF_DRAM_ACTIVE": 0.5,
            }.items():
                yield _Series(name, labels, 0, alive_until, value)
            for name, per_s in {
                "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 600000.0,
                "jobsight_gpu_nvlink_transmitted_bytes_total": 1e10,
                "jobsight_gpu_nvlink_received_bytes_total": 1e10,
            }.items():
                yield _Series(name, labels, 0, alive_until, 1e6, per_s)
            if lost:
                yield _Series("jobsight_gpu_up", labels, 0, XID_AT, 1.0)
                yield _Series("jobsight_gpu_up", labels, XID_AT, window, 0.0)
                xid = {**labels, "xid": 79}
                yield _Series("jobsight_gpu_xid_errors_total", xid, XID_AT, window, 1.0)
                yield _Series("jobsight_gpu_xid_last_seen_timestamp_seconds", xid, XID_AT, window, -1.0)
            else:
                yield _Series("jobsight_gpu_up", labels, 0, window, 1.0)
            info = {"Hostname": host, "gpu": gpu, "UUID": f"GPU-{host}-{gpu}"}
            for job in sorted({j for t in (0, JOB_START, window - 1) for j in _jobs_of(host, gpu, t)}):
                start = JOB_START if job == FAILED_JOB else 0
                end = (XID_AT if lost else JOB_END) if job == FAILED_JOB else window
                yield _Series("jobsight_gpu_job_info", {**info, "job_id": job}, start, end, 1.0)
                yield _Series("jobsight_gpu_job_memory_used_bytes", {**info, "job_id": job}, start, end, 6e10)
        base = {"Hostname": host}
        for exporter in ("gpu", "node", "rdma"):
            yield _Series("up", {"job": exporter, "instance": f"{host}:94", **base}, 0, window, 1.0)
        for cpu in range(4):
            for mode, share in {"idle": 0.2, "user": 0.7, "system": 0.1}.items():
                cpu_labels = {**base, "cpu": cpu, "mode": mode}
                yield _Series("node_cpu_seconds_total", cpu_labels, 0, window, 1e5, share)
        yield _Series("node_memory_MemTotal_bytes", base, 0, window, 2e12)
        yield _Series("node_memory_MemAvailable_bytes", base, 0, window, 1e12)
        yield _Series("node_vmstat_oom_kill", base, 0, window, 0.0)
        for port in range(2):
            ib = {**base, "device": f"mlx5_{port}", "port": 1}
            for name in (
                "node_infiniband_port_data_received_bytes_total",
                "node_infiniband_port_data_transmitted_bytes_total",
            ):
                yield _Series(name, ib, 0, window, 1e9, 2e10)
            yield _Series("node_infiniband_link_downed_total", ib, 0, window, 0.0)
        host_jobs = {j for g in range(GPUS_PER_HOST) for j in _jobs_of(host, g, JOB_START)}
        for job in sorted(host_jobs):
            start, end = (JOB_START, JOB_END) if job == FAILED_JOB else (0, window)
            labels = {**base, "job_id": job}
            yield _Series("jobsight_job_cpu_seconds_total", labels, start, end, 10.0, 30.0)
            yield _Series("jobsight_job_memory_rss_bytes", labels, start, end, 2e11)
            yield _Series("jobsight_job_processes", labels, start, end, 9.0)
        if host == LOST_GPU[0]:
            kernel = {**base, "kind": "gpu_xid", "job_id": ""}
            yield _Series("jobsight_log_events_total", kernel, XID_AT, window, 1.0)
        if host == FAILED_HOSTS[0]:
            timeout = {**base, "kind": "nccl_timeout", "job_id": FAILED_JOB}
            yield _Series("jobsight_log_events_total", timeout, XID_AT + 60, JOB_END + 60, 1.0)
    api = {"instance": "api:8000", "job": "api"}
    status = {**api, "job_id": FAILED_JOB, "tenant": "acme"}
    yield _Series("jobsight_job_status", {**status, "status": "running"}, JOB_START, JOB_END, 1.0)
    yield _Series("jobsight_job_status", {**status, "status": "failed"}, JOB_END, window, 1.0)


def write_openmetrics(out: TextIO, hosts: int, origin: int, *, step: int = 30, window: int = WINDOW) -> int:
    """Write the history of a ``hosts``-host cluster from ``origin`` (Unix s) as OpenMetrics text,
    one family at a time, each series' samples in time order. Returns the number of samples."""
    by_name: dict[str, list[_Series]] = {}
    for series in _cluster_series(hosts, window):
        by_name.setdefault(series.name, []).append(series)
    samples = 0
    for name, family in by_name.items():
        out.write(f"# TYPE {name} unknown\n")
        for series in family:
            text = name + _labels(series.labels)
            first = -(-series.start // step) * step
            for t in range(first, series.end, step):
                value = series.value + series.per_s * (t - series.start)
                if series.value == -1.0:  # a "last seen" timestamp: when the series began
                    value = float(origin + series.start)
                out.write(f"{text} {value} {origin + t}\n")
                samples += 1
    out.write("# EOF\n")
    return samples


def build_tsdb(directory: Path, hosts: int, origin: int, *, step: int = 30, window: int = WINDOW) -> int:
    """A Prometheus data directory at ``directory`` holding the cluster's history (real promtool).
    Returns the number of samples."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory.parent / f"{directory.name}.om"
    with source.open("w", encoding="utf-8") as out:
        samples = write_openmetrics(out, hosts, origin, step=step, window=window)
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(source), str(directory)],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    source.unlink()
    return samples


@dataclass(frozen=True)
class Answer:
    """One dashboard query as Grafana would send it, and Prometheus' answer."""

    title: str
    expr: str
    instant: bool
    status: int
    body: dict[str, Any]
    seconds: float = 0.0  # round trip, for the benchmark's breakdown

    @property
    def result(self) -> list[dict[str, Any]]:
        return list(self.body.get("data", {}).get("result") or []) if self.status == 200 else []

    @property
    def samples(self) -> int:
        """Prometheus' own count of the samples it read for the query (``stats=all``)."""
        stats = self.body.get("data", {}).get("stats", {}).get("samples", {})
        return int(stats.get("totalQueryableSamples", 0))


def start_prometheus(data: Path, logs: Path) -> tuple[Proc, str]:
    """A real Prometheus serving the TSDB in ``data`` (nothing scraped), on a free port."""
    config = logs / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\n")
    port = free_port()
    proc = Proc(
        [
            require_binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=30d",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        logs / f"prometheus-{port}.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/-/ready", timeout=120, proc=proc)
    except BaseException:
        proc.stop()
        raise
    return proc, base


def grafana_builtins(window: View, step: int) -> dict[str, str]:
    """Grafana's interval variables for ``window`` with a scrape interval of ``step`` seconds."""
    return {
        "__range": f"{window.range_s}s",
        "__range_s": str(window.range_s),
        "__range_ms": str(window.range_s * 1000),
        "__interval": f"{step}s",
        "__interval_ms": str(step * 1000),
        "__rate_interval": f"{4 * step}s",
    }


def instant_query(client: httpx.Client, base: str, at: float) -> InstantQuery:
    def query(expr: str) -> list[dict[str, Any]]:
        body = client.post(f"{base}/api/v1/query", data={"query": expr, "time": at}).json()
        return list(body.get("data", {}).get("result") or [])

    return query


def ask_dashboard(
    client: httpx.Client,
    base: str,
    model: dict[str, Any],
    variables: Mapping[str, VariableValue],
    window: View,
    step: int,
    *,
    variables_too: bool = False,
) -> list[Answer]:
    """Every panel and annotation query of ``model`` as Grafana sends them for ``window``: stat,
    gauge and table panels as instant queries at its end, graphs and annotations as range queries
    with ``step``; with ``stats=all``. Variable queries too with ``variables_too``."""
    kinds = {str(p.get("title")): str(p.get("type")) for p in _panels(model) if p.get("type") != "row"}
    answers = []
    for title, expr in iter_queries(model, variables):
        if title.startswith("variable: ") and not variables_too:
            continue
        instant = kinds.get(title) in {"stat", "gauge", "table"} or title.startswith("variable: ")
        params: dict[str, str | float] = {"query": expr, "stats": "all"}
        started = time.perf_counter()
        if instant:
            params["time"] = window.end
            response = client.post(f"{base}/api/v1/query", data=params)
        else:
            params.update(start=window.start, end=window.end, step=step)
            response = client.post(f"{base}/api/v1/query_range", data=params)
        elapsed = time.perf_counter() - started
        answers.append(Answer(title, expr, instant, response.status_code, response.json(), elapsed))
    return answers


def _panels(model: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels") or []
