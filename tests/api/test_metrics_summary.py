"""Per-job metrics and summaries run real PromQL against a real Prometheus; the demo failure is
diagnosed as XID 79 on node2 GPU 3."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from api.prometheus import MAX_POINTS_PER_SERIES
from tests.api.conftest import ADMIN, SCHEDULER, TEAM_A, TEAM_B, auth, register_demo
from tests.api.scenario import DEMO_GPUS, Scenario
from tests.support import free_port


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def test_catalog_lists_documented_names(client: TestClient) -> None:
    names = {entry["name"] for entry in client.get("/v1/catalog", headers=auth(TEAM_A)).json()}
    assert {
        "gpu_util",
        "gpu_memory_used",
        "gpu_power",
        "gpu_temperature",
        "gpu_sm_clock",
        "gpu_tensor_active",
        "rdma_rx_bytes",
        "rdma_tx_bytes",
        "node_cpu",
        "job_cpu",
        "job_memory",
        "train_step_seconds",
    } == names


def test_gpu_and_node_series_of_the_job(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    response = client.get(
        "/v1/jobs/demo-fail/metrics",
        headers=auth(TEAM_A),
        params={
            "name": ["gpu_util", "gpu_memory_used", "rdma_rx_bytes", "job_cpu"],
            "start": iso(scenario.demo_start + 300),
            "end": iso(scenario.demo_start + 1200),
            "step": 60,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["step_seconds"] == 60
    by_name = {m["name"]: m for m in body["metrics"]}
    util = by_name["gpu_util"]
    assert util["unit"] == "percent" and util["scope"] == "gpu"
    assert [(s["labels"]["host"], int(s["labels"]["gpu"])) for s in util["series"]] == DEMO_GPUS
    for series in util["series"]:
        expected = 80.0 + int(series["labels"]["gpu"])
        assert len(series["points"]) == 16
        assert all(value == expected for _, value in series["points"])
    memory = by_name["gpu_memory_used"]["series"][0]["points"][0][1]
    assert memory == 40000 * 1048576
    rx = {s["labels"]["host"]: s["points"][-1][1] for s in by_name["rdma_rx_bytes"]["series"]}
    assert set(rx) == {"node1", "node2"}  # node3 belongs to another job
    assert all(math.isclose(v, 1e9, rel_tol=1e-6) for v in rx.values())
    cpu = {s["labels"]["host"]: s["points"][-1][1] for s in by_name["job_cpu"]["series"]}
    assert set(cpu) == {"node1", "node2"} and all(math.isclose(v, 4.0, rel_tol=1e-6) for v in cpu.values())


def test_default_window_is_the_job_and_step_respects_the_point_limit(
    client: TestClient, scenario: Scenario
) -> None:
    register_demo(client, scenario)
    body = client.get("/v1/jobs/demo-fail/metrics", params={"name": "gpu_util"}, headers=auth(TEAM_A)).json()
    assert body["start"] == iso(scenario.demo_start).replace("+00:00", "Z")
    assert body["end"] == iso(scenario.demo_end).replace("+00:00", "Z")
    # A 60-day window asked at 1 s would be 5 million points; the step is raised instead.
    wide = client.get(
        "/v1/jobs/demo-fail/metrics",
        headers=auth(TEAM_A),
        params={
            "name": "gpu_util",
            "step": 1,
            "start": iso(scenario.demo_end - 60 * 86400),
            "end": iso(scenario.demo_end),
        },
    )
    assert wide.status_code == 200, wide.text
    step = wide.json()["step_seconds"]
    assert 60 * 86400 / step + 1 <= MAX_POINTS_PER_SERIES
    for series in wide.json()["metrics"][0]["series"]:
        assert len(series["points"]) <= MAX_POINTS_PER_SERIES


def test_metric_names_and_windows_are_validated(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    for name in ['gpu_util"} or vector(1)', "DCGM_FI_DEV_GPU_UTIL", "up"]:
        response = client.get("/v1/jobs/demo-fail/metrics", params={"name": name}, headers=auth(TEAM_A))
        assert response.status_code == 422 and "unknown metric name" in response.text
    backwards = client.get(
        "/v1/jobs/demo-fail/metrics",
        headers=auth(TEAM_A),
        params={"name": "gpu_util", "start": iso(scenario.demo_end), "end": iso(scenario.demo_start)},
    )
    assert backwards.status_code == 422 and "end must be after start" in backwards.text
    assert client.get("/v1/jobs/demo-fail/metrics", headers=auth(TEAM_A)).status_code == 422


def test_quotes_in_a_registered_id_cannot_escape_the_matcher(client: TestClient, scenario: Scenario) -> None:
    # The id charset has no quotes, so the escaped matcher is exercised with the characters it does allow:
    # a job whose id is a prefix/regex-looking string must only match itself.
    assert (
        client.put(
            "/v1/jobs/demo-fail.",
            json={
                "tenant": "team-a",
                "status": "running",
                "started_at": scenario.demo_start,
                "ended_at": scenario.demo_end,
            },
            headers=auth(SCHEDULER),
        ).status_code
        == 201
    )
    body = client.get("/v1/jobs/demo-fail./metrics", params={"name": "gpu_util"}, headers=auth(TEAM_A)).json()
    assert body["metrics"][0]["series"] == []


def test_summary_of_the_failed_demo_job(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    response = client.get("/v1/jobs/demo-fail/summary", headers=auth(TEAM_A))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration_seconds"] == scenario.demo_end - scenario.demo_start
    gpus = {(g["host"], g["gpu"]): g for g in body["gpus"]}
    assert set(gpus) == set(DEMO_GPUS)
    healthy = gpus[("node1", 1)]
    assert math.isclose(healthy["util_mean"], 81.0, rel_tol=1e-6) and healthy["util_max"] == 81.0
    assert healthy["memory_max_bytes"] == 40100 * 1048576
    assert math.isclose(healthy["power_mean_watts"], 301.0, rel_tol=1e-6)
    assert healthy["energy_joules"] > 0 and healthy["idle_fraction"] == 0.0
    assert not healthy["lost"] and healthy["xids"] == []
    assert math.isclose(gpus[("node1", 0)]["throttled_seconds"], 60.0, rel_tol=0.05)
    broken = gpus[("node2", 3)]
    assert broken["lost"] is True
    (xid,) = broken["xids"]
    assert xid["xid"] == 79 and xid["count"] == 1
    first_seen = datetime.fromisoformat(xid["first_seen"]).timestamp()
    assert scenario.xid_at <= first_seen <= scenario.xid_at + 60
    assert body["overall"]["gpus"] == 8 and body["overall"]["xid_count"] == 1
    nodes = {n["host"]: n for n in body["nodes"]}
    assert set(nodes) == {"node1", "node2"}
    assert nodes["node1"]["job_cpu_seconds"] > 0 and nodes["node1"]["rdma_rx_bytes"] > 0
    assert nodes["node1"]["job_memory_max_bytes"] == 64 * 2**30
    kinds = [e["event_kind"] for e in body["events"]]
    assert kinds.count("nccl_timeout") == 3 and "gpu_xid" in kinds and "child_failed" in kinds
    assert all(e["host"] != "node9" for e in body["events"])

    diagnosis = body["diagnosis"]
    first = diagnosis["causes"][0]
    assert first["title"].startswith("XID 79 on node2 GPU 3")
    assert first["kind"] == "gpu_xid" and first["host"] == "node2" and first["gpu"] == 3
    assert {e["source"] for e in first["evidence"]} >= {"log", "prometheus"}
    assert "the first fatal event near the hang's start" in first["explanation"]
    assert "NVIDIA catalog: RESTART_BM" in first["explanation"]
    (symptom,) = diagnosis["symptoms"]
    # Ranks 2 and 3 never timed out: they are the ones the others waited for (the lost GPU's ranks).
    assert "ranks 0, 1, 4 timed out;" in symptom and "ranks 2, 3 missing" in symptom
    assert diagnosis["causes"][-1]["kind"] == "child_failed"
    assert all("NCCL" not in c["title"] for c in diagnosis["causes"])


def test_summary_of_a_healthy_job_finds_the_straggler(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    body = client.get("/v1/jobs/ok-job/summary", headers=auth(TEAM_B)).json()
    assert body["diagnosis"] is None
    assert body["stragglers"] == [{"host": "node3", "gpu": 1, "uuid": "GPU-node3-0001"}]
    assert math.isclose(body["overall"]["util_median"], 55.0, rel_tol=1e-6)
    assert client.get("/v1/jobs/ok-job/summary", headers=auth(TEAM_A)).status_code == 404


def test_prometheus_down_is_503_naming_it(make_client: Callable[..., TestClient], scenario: Scenario) -> None:
    client = make_client(
        settings={"prometheus_url": f"http://127.0.0.1:{free_port()}", "dependency_timeout_seconds": 2.0}
    )
    register_demo(client, scenario)
    for path in ("/v1/jobs/demo-fail/summary", "/v1/jobs/demo-fail/metrics?name=gpu_util"):
        response = client.get(path, headers=auth(TEAM_A))
        assert response.status_code == 503
        assert response.json()["dependency"] == "prometheus"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["store"] == "ok"
    assert "prometheus" in ready.json()["checks"]["prometheus"]
    # Registered jobs are still served; discovered ones are reported as omitted.
    page = client.get("/v1/jobs", headers=auth(ADMIN)).json()
    assert {j["job_id"] for j in page["jobs"]} == {"demo-fail", "ok-job"}
    assert page["warnings"] and "prometheus" in page["warnings"][0]


def test_links_point_at_dashboards_and_routes(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    links = client.get("/v1/jobs/demo-fail/links", headers=auth(TEAM_A)).json()
    start_ms = int((scenario.demo_start - 300) * 1000)
    end_ms = int((scenario.demo_end + 300) * 1000)
    assert links["job_dashboard"] == (
        f"http://grafana.example:3000/d/jobsight-job/jobsight-job?var-job_id=demo-fail&from={start_ms}&to={end_ms}"
    )
    assert set(links["node_dashboards"]) == {"node1", "node2"}
    assert "var-Hostname=node2" in links["node_dashboards"]["node2"]
    assert len(links["gpu_dashboards"]) == 8 and "var-gpu=3" in links["gpu_dashboards"][-1]["url"]
    assert links["logs"] == "http://api.example:8000/v1/jobs/demo-fail/logs"
    assert links["alertmanager"].startswith("http://alertmanager.example:9093/#/alerts?filter=")
    assert links["tensorboard"] is None


def test_concurrent_summaries_do_not_exhaust_the_query_pool(
    make_client: Callable[..., TestClient], scenario: Scenario
) -> None:
    # More simultaneous summaries than query workers: a summary that waited on pool tasks from
    # inside the pool would deadlock here.
    client = make_client(settings={"query_workers": 2, "query_cache_seconds": 0})
    register_demo(client, scenario)
    codes: list[int] = []

    def one() -> None:
        codes.append(client.get("/v1/jobs/demo-fail/summary", headers=auth(TEAM_A)).status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert codes == [200] * 6


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/jobs/{job_id}/summary" in paths and "/v1/alerts/webhook" in paths


def test_ecc_errors_are_counted_and_timed(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    body = client.get("/v1/jobs/ok-job/summary", headers=auth(TEAM_B)).json()
    gpus = {(g["host"], g["gpu"]): g for g in body["gpus"]}
    assert gpus[("node3", 0)]["ecc_dbe_errors"] == 2 and gpus[("node3", 1)]["ecc_dbe_errors"] == 0
    assert body["overall"]["ecc_dbe_errors"] == 2
    service = client.app.state.service  # type: ignore[attr-defined]
    job = service.store.get_job("ok-job")
    scope = service.scope(job, scenario.base, scenario.ok_end)
    facts = service.facts.prometheus_facts(scope, scenario.base, scenario.ok_end)
    (ecc,) = [f for f in facts.findings if f.kind == "ecc_error"]
    assert (ecc.host, ecc.gpu) == ("node3", 0)
    assert scenario.base + 30 * 60 <= ecc.time <= scenario.base + 31 * 60


def test_the_registered_world_size_names_ranks_that_never_logged(
    client: TestClient, scenario: Scenario
) -> None:
    register_demo(client, scenario)
    before = json.dumps(client.get("/v1/jobs/demo-fail/summary", headers=auth(TEAM_A)).json()["diagnosis"])
    assert "ranks 2, 3 missing from the timeout set" in before  # counted up to the highest rank seen (4)
    patched = client.patch("/v1/jobs/demo-fail", json={"labels": {"world_size": "8"}}, headers=auth(TEAM_A))
    assert patched.status_code == 200, patched.text
    after = json.dumps(client.get("/v1/jobs/demo-fail/summary", headers=auth(TEAM_A)).json()["diagnosis"])
    # Ranks 5-7 logged nothing at all: only the job's world size says they exist.
    assert "ranks 2, 3, 5-7 missing from the timeout set" in after
