"""A job's queries cost what the job is: on a 64-GPU and a 512-GPU synthetic cluster (promtool
blocks, a real Prometheus) the same job gets the same metrics and summary, and every query
Prometheus evaluated (its own query log) selects the job's hosts only."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import scope as scope_module
from api.app import create_app
from tests.api.conftest import ADMIN, TEAM_A, auth, base_settings
from tests.scale.cluster import (
    JOB,
    JOB_GPUS,
    JOB_HOSTS,
    Cluster,
    LoggedPrometheus,
    prometheus_with_query_log,
    util,
)
from tests.support import wait_until

SIZES = (64, 512)
# Every series name the API may select; each occurrence must carry a Hostname matcher.
SELECTOR = re.compile(
    r"(?<![\w:])((?:DCGM|jobsight|node)_\w+|(?:gpu|Hostname|job_id_Hostname):[\w:]+)(\{[^}]*\})?")
HOST_MATCHER = re.compile(r'Hostname(=~?)"((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
def window() -> tuple[float, float]:
    end = float(int(time.time()) // 60 * 60 - 3600)  # settled: an hour ago
    return end - 3600, end


@pytest.fixture(scope="module")
def clusters(window: tuple[float, float], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[int, LoggedPrometheus]]:
    start, end = window
    running: dict[int, LoggedPrometheus] = {}
    contexts = []
    try:
        for size in SIZES:
            workdir = tmp_path_factory.mktemp(f"cluster{size}")
            tsdb = Cluster(gpus=size, start=start - 600, end=end + 600, step=30.0).write_tsdb(workdir)
            context = prometheus_with_query_log(tsdb, workdir)
            running[size] = context.__enter__()
            contexts.append(context)
        yield running
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)


@pytest.fixture
def api_for(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(prometheus: LoggedPrometheus, **settings: Any) -> TestClient:
        config = base_settings(tmp_path / str(len(clients)), prometheus.url, None,
                               {"query_cache_seconds": 0, **settings})
        (tmp_path / str(len(clients))).mkdir()
        client = TestClient(create_app(config, environ={}), raise_server_exceptions=True)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def register(client: TestClient, window: tuple[float, float]) -> None:
    # No hosts or GPUs in the registry: the API must find them in jobsight_gpu_job_info.
    body = {"tenant": "team-a", "status": "succeeded", "exit_code": 0,
            "started_at": window[0], "ended_at": window[1]}
    response = client.put(f"/v1/jobs/{JOB}", json=body, headers=auth(ADMIN))
    assert response.status_code in (200, 201), response.text


def queries_since(prometheus: LoggedPrometheus, offset: int) -> list[str]:
    text = prometheus.query_log.read_text()[offset:] if prometheus.query_log.exists() else ""
    return [json.loads(line)["params"]["query"] for line in text.splitlines() if line.strip()]


def unbounded(query: str, job: str = JOB) -> list[str]:
    """Selectors in ``query`` that select more than the job's own series: each must name the job's
    hosts (and only those), or be a per-job series selected by the job's exact ``job_id``."""
    bad = []
    for match in SELECTOR.finditer(query):
        braces = match.group(2) or ""
        if match.group(1).startswith("jobsight_train_") and f'job_id="{job}"' in braces:
            continue
        hosts = HOST_MATCHER.search(braces)
        if hosts is None:
            bad.append(match.group(0))
            continue
        raw = hosts.group(2).replace("\\\\", "\\")
        named = set(re.split(r"(?<!\\)\|", raw)) if hosts.group(1) == "=~" else {raw}
        if not named or not named <= set(JOB_HOSTS):
            bad.append(match.group(0))
    return bad


def ask(client: TestClient, window: tuple[float, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics = client.get(
        f"/v1/jobs/{JOB}/metrics", headers=auth(TEAM_A),
        params={"name": ["gpu_util", "gpu_power", "gpu_tensor_active", "rdma_rx_bytes", "node_cpu"]},
    )
    assert metrics.status_code == 200, metrics.text
    summary = client.get(f"/v1/jobs/{JOB}/summary", headers=auth(TEAM_A))
    assert summary.status_code == 200, summary.text
    return metrics.json(), summary.json()


def test_same_job_same_answers_on_64_and_512_gpus_and_every_query_names_its_hosts(
    clusters: dict[int, LoggedPrometheus], api_for: Callable[..., TestClient], window: tuple[float, float]
) -> None:
    answers = {}
    for size, prometheus in clusters.items():
        client = api_for(prometheus)
        register(client, window)
        offset = prometheus.query_log.stat().st_size if prometheus.query_log.exists() else 0
        answers[size] = ask(client, window)
        logged: Callable[[], list[str]] = partial(queries_since, prometheus, offset)
        queries = wait_until(logged, timeout=30, message="Prometheus to log the API's queries")
        assert len(queries) >= 6, queries
        for query in queries:
            assert not unbounded(query), f"{size} GPUs: {unbounded(query)} in {query}"
            assert all(h in query for h in JOB_HOSTS) or f'job_id="{JOB}"' in query, query

    small, large = answers[64], answers[512]
    assert small[0]["metrics"] == large[0]["metrics"]
    for key in ("overall", "gpus", "nodes", "stragglers"):
        assert small[1][key] == large[1][key], key

    util_series = {(s["labels"]["host"], int(s["labels"]["gpu"])): s["points"]
                   for s in small[0]["metrics"][0]["series"]}
    assert sorted(util_series) == JOB_GPUS  # the neighbour's GPUs on h0000/h0001 are not the job's
    assert all(v == util(h, g) for (h, g), points in util_series.items() for _, v in points)
    gpus = {(g["host"], g["gpu"]): g for g in small[1]["gpus"]}
    assert sorted(gpus) == JOB_GPUS
    assert all(g["util_mean"] == util(h, i) for (h, i), g in gpus.items())
    assert all(g["uuid"] == f"GPU-{h}-{i}" for (h, i), g in gpus.items())
    assert {n["host"] for n in small[1]["nodes"]} == set(JOB_HOSTS)
    # 1e6 B/s for an hour, each host.
    assert all(n["rdma_rx_bytes"] == pytest.approx(3.6e9, rel=0.02) for n in small[1]["nodes"])
    assert small[1]["overall"]["gpus"] == 8


def test_gpus_without_tensor_pipe_counters_are_named_not_silently_empty(
    clusters: dict[int, LoggedPrometheus], api_for: Callable[..., TestClient], window: tuple[float, float]
) -> None:
    client = api_for(clusters[64])
    register(client, window)
    metrics, _ = ask(client, window)
    by_name = {m["name"]: m for m in metrics["metrics"]}
    tensor = by_name["gpu_tensor_active"]
    assert [(s["labels"]["host"], int(s["labels"]["gpu"])) for s in tensor["series"]] == JOB_GPUS[:4]
    assert [(u["host"], u["gpu"]) for u in tensor["unavailable"]] == JOB_GPUS[4:]
    assert all("not available on this GPU" in u["reason"] for u in tensor["unavailable"])
    assert by_name["gpu_util"]["unavailable"] == []


def test_answers_are_capped_in_series_times_points(
    clusters: dict[int, LoggedPrometheus], api_for: Callable[..., TestClient], window: tuple[float, float]
) -> None:
    client = api_for(clusters[64], max_points_per_answer=2000)
    register(client, window)
    # The default resolution coarsens to fit: 8 series x at most 250 points.
    fitted = client.get(f"/v1/jobs/{JOB}/metrics", params={"name": "gpu_util"}, headers=auth(TEAM_A))
    assert fitted.status_code == 200, fitted.text
    series = fitted.json()["metrics"][0]["series"]
    assert len(series) == 8 and sum(len(s["points"]) for s in series) <= 2000
    assert max(len(s["points"]) for s in series) > 100
    # An explicit step that would exceed it is refused, naming the limit.
    refused = client.get(f"/v1/jobs/{JOB}/metrics", params={"name": "gpu_util", "step": 1},
                         headers=auth(TEAM_A))
    assert refused.status_code == 422
    assert "max_points_per_answer=2000" in refused.json()["detail"]
    assert "8 series x 3601 points" in refused.json()["detail"]


def test_a_job_that_held_nothing_in_the_window_costs_no_metric_query(
    clusters: dict[int, LoggedPrometheus], api_for: Callable[..., TestClient], window: tuple[float, float]
) -> None:
    prometheus = clusters[64]
    client = api_for(prometheus)
    body = {"tenant": "team-a", "status": "succeeded", "started_at": window[0], "ended_at": window[1]}
    assert client.put("/v1/jobs/ghost", json=body, headers=auth(ADMIN)).status_code in (200, 201)
    offset = prometheus.query_log.stat().st_size if prometheus.query_log.exists() else 0
    answer = client.get("/v1/jobs/ghost/metrics", params={"name": "gpu_util"}, headers=auth(TEAM_A))
    assert answer.status_code == 200 and answer.json()["metrics"][0]["series"] == []
    summary = client.get("/v1/jobs/ghost/summary", headers=auth(TEAM_A))
    assert summary.status_code == 200 and summary.json()["gpus"] == []
    # An empty host matcher would have selected every series without a Hostname: no hardware
    # query is sent (the training section asks for the job's own per-job series only).
    asked = queries_since(prometheus, offset)
    assert not [q for q in asked if unbounded(q, "ghost")], asked
    assert not [q for q in asked if "DCGM_" in q or "node_" in q], asked


def test_a_job_asked_in_batches_of_one_host_gets_the_same_answers(
    clusters: dict[int, LoggedPrometheus], api_for: Callable[..., TestClient], window: tuple[float, float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prometheus = clusters[64]
    whole = api_for(prometheus)
    register(whole, window)
    expected = ask(whole, window)
    monkeypatch.setattr(scope_module, "MAX_HOSTS_PER_QUERY", 1)
    batched = api_for(prometheus)
    register(batched, window)
    offset = prometheus.query_log.stat().st_size
    answer = ask(batched, window)
    assert answer[0]["metrics"] == expected[0]["metrics"]
    for key in ("overall", "gpus", "nodes", "stragglers"):
        assert answer[1][key] == expected[1][key], key
    hardware = [q for q in queries_since(prometheus, offset) if "Hostname=" in q]
    # Each metric and each summary query once per host, each naming one host only.
    assert len(hardware) >= 2 * 5 + 2 * 4
    for query in hardware:
        assert sum(h in query for h in JOB_HOSTS) == 1, query
