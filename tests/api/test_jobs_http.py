"""Jobs over HTTP: auth, tenant isolation, upsert/list/get, discovered jobs, bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN, SCHEDULER, TEAM_A, TEAM_B, auth, register_demo
from tests.api.scenario import Scenario


def test_every_v1_route_needs_a_token(client: TestClient) -> None:
    for path in (
        "/v1/jobs",
        "/v1/jobs/x",
        "/v1/jobs/x/summary",
        "/v1/jobs/x/metrics?name=gpu_util",
        "/v1/catalog",
        "/v1/alerts",
    ):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert client.get(path, headers=auth("not-a-known-token-at-all")).status_code == 401
    assert client.get("/healthz").status_code == 200


def test_upsert_is_idempotent_and_scoped_to_the_tenant(client: TestClient) -> None:
    body = {
        "name": "train",
        "user": "alice",
        "nodes": ["node1"],
        "status": "running",
        "started_at": "2026-01-01T00:00:00Z",
        "labels": {"queue": "a100"},
    }
    created = client.put("/v1/jobs/4711", json={**body, "tenant": "team-a"}, headers=auth(SCHEDULER))
    assert created.status_code == 201
    assert created.json()["tenant"] == "team-a" and created.json()["source"] == "registered"
    again = client.put("/v1/jobs/4711", json={**body, "tenant": "team-a"}, headers=auth(SCHEDULER))
    assert again.status_code == 200 and again.json()["created_at"] == created.json()["created_at"]
    got = client.get("/v1/jobs/4711", headers=auth(TEAM_A)).json()
    assert got["started_at"] == "2026-01-01T00:00:00Z" and got["labels"] == {"queue": "a100"}
    # Another tenant sees nothing: not on GET, not by overwriting, not in the list.
    assert client.get("/v1/jobs/4711", headers=auth(TEAM_B)).status_code == 404
    assert client.put("/v1/jobs/4711", json=body, headers=auth(TEAM_B)).status_code == 403
    assert client.patch("/v1/jobs/4711", json={"name": "mine"}, headers=auth(TEAM_B)).status_code == 404
    assert client.get("/v1/jobs/4711/summary", headers=auth(TEAM_B)).status_code == 404
    assert client.get("/v1/jobs", headers=auth(TEAM_B)).json()["jobs"] == []
    assert client.get("/v1/jobs", headers=auth(TEAM_B), params={"tenant": "team-a"}).status_code == 403
    # Tenants register no jobs (not their own, not someone else's); schedulers and admins do.
    for tenant in ("team-a", "team-b"):
        forbidden = client.put("/v1/jobs/4712", json={**body, "tenant": tenant}, headers=auth(TEAM_A))
        assert forbidden.status_code == 403 and "scheduler" in forbidden.json()["detail"]
    assert (
        client.put("/v1/jobs/4712", json={**body, "tenant": "team-b"}, headers=auth(ADMIN)).status_code == 201
    )
    assert client.get("/v1/jobs/4712", headers=auth(TEAM_B)).status_code == 200


def test_admin_routes_refuse_tenants(client: TestClient) -> None:
    assert client.get("/v1/alerts", headers=auth(TEAM_A)).status_code == 403
    assert client.delete("/v1/jobs/4711", headers=auth(TEAM_A)).status_code == 403
    assert client.get("/v1/alerts", headers=auth(ADMIN)).status_code == 200
    assert client.delete("/v1/jobs/nope", headers=auth(ADMIN)).status_code == 404


def test_list_filters_and_pages(client: TestClient) -> None:
    for i in range(5):
        status = "failed" if i == 2 else "running"
        body = {
            "user": "alice" if i < 3 else "bob",
            "status": status,
            "started_at": f"2026-01-0{i + 1}T00:00:00Z",
        }
        assert (
            client.put(
                f"/v1/jobs/job-{i}", json={**body, "tenant": "team-a"}, headers=auth(SCHEDULER)
            ).status_code
            == 201
        )
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params, headers=auth(TEAM_A)).json()
        seen.extend(j["job_id"] for j in page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"job-{i}" for i in range(5)] and len(seen) == 5
    failed = client.get("/v1/jobs", params={"status": "failed"}, headers=auth(TEAM_A)).json()["jobs"]
    assert [j["job_id"] for j in failed] == ["job-2"]
    bobs = client.get("/v1/jobs", params={"user": "bob"}, headers=auth(TEAM_A)).json()["jobs"]
    assert {j["job_id"] for j in bobs} == {"job-3", "job-4"}
    late = client.get("/v1/jobs", params={"until": "2026-01-02T12:00:00Z"}, headers=auth(TEAM_A)).json()[
        "jobs"
    ]
    assert {j["job_id"] for j in late} == {"job-0", "job-1"}
    bad = client.get("/v1/jobs", params={"cursor": "not-a-cursor"}, headers=auth(TEAM_A))
    assert bad.status_code == 422 and "cursor" in bad.text
    # By the scheduler that registered them: what the Kubernetes watcher reads when it starts.
    assert client.put("/v1/jobs/team-a:llama", json={"tenant": "team-a", "scheduler": "kubernetes"},
                      headers=auth(SCHEDULER)).status_code == 201
    kube = client.get("/v1/jobs", params={"scheduler": "kubernetes"}, headers=auth(SCHEDULER)).json()["jobs"]
    assert [j["job_id"] for j in kube] == ["team-a:llama"]
    assert client.get("/v1/jobs", params={"scheduler": "slurm"}, headers=auth(SCHEDULER)).json()["jobs"] == []


def test_discovered_jobs_are_listed_for_admins(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    page = client.get("/v1/jobs", headers=auth(ADMIN)).json()
    assert {j["job_id"] for j in page["jobs"]} == {"demo-fail", "ok-job"}
    discovered = {j["job_id"]: j for j in page["discovered"]}
    assert set(discovered) == {"disc-1"}
    assert discovered["disc-1"]["status"] == "running" and discovered["disc-1"]["source"] == "discovered"
    assert discovered["disc-1"]["gpus"] == [{"host": "node4", "gpu": 0, "uuid": "GPU-node4-0000"}]
    one = client.get("/v1/jobs/disc-1", headers=auth(ADMIN))
    assert one.status_code == 200 and one.json()["nodes"] == ["node4"]
    # Tenants never see unregistered jobs.
    assert client.get("/v1/jobs/disc-1", headers=auth(TEAM_A)).status_code == 404
    assert client.get("/v1/jobs", headers=auth(TEAM_A)).json()["discovered"] == []


@pytest.mark.parametrize(
    "job_id",
    [
        'x"} or vector(1) #',
        "a b",
        "../etc",
        "x" * 129,
        "-leading",
        "a\\b",
        "ünïcode",
        "a{b}",
    ],
)
def test_unsafe_job_ids_are_refused(client: TestClient, job_id: str) -> None:
    from urllib.parse import quote

    path = f"/v1/jobs/{quote(job_id, safe='')}"
    for response in (
        client.get(path, headers=auth(ADMIN)),
        client.put(path, json={"status": "running"}, headers=auth(ADMIN)),
        client.get(f"{path}/metrics", params={"name": "gpu_util"}, headers=auth(ADMIN)),
    ):
        assert response.status_code in (404, 422), (job_id, response.status_code)
        assert response.status_code != 404 or "/" in job_id
    assert client.get("/v1/jobs", headers=auth(ADMIN)).status_code == 200


def test_validation_errors_name_the_field(client: TestClient) -> None:
    response = client.put(
        "/v1/jobs/4711", json={"status": "exploded", "nodes": ["bad host"]}, headers=auth(TEAM_A)
    )
    assert response.status_code == 422
    locations = {problem["loc"] for problem in response.json()["detail"]}
    assert {"body.status", "body.nodes.0"} <= locations
    backwards = client.put(
        "/v1/jobs/4711",
        json={"started_at": "2026-01-02T00:00:00Z", "ended_at": "2026-01-01T00:00:00Z"},
        headers=auth(TEAM_A),
    )
    assert backwards.status_code == 422 and "ended_at is before started_at" in backwards.text
    unknown = client.put("/v1/jobs/4711", json={"colour": "blue"}, headers=auth(TEAM_A))
    assert unknown.status_code == 422 and "body.colour" in unknown.text


def test_body_size_is_limited(make_client: Callable[..., TestClient]) -> None:
    client = make_client(settings={"max_body_bytes": 2048})
    big = {"name": "x" * 400, "labels": {f"k{i}": "v" * 100 for i in range(30)}}
    response = client.put("/v1/jobs/4711", json=big, headers=auth(TEAM_A))
    assert response.status_code == 413 and "2048" in response.json()["detail"]
    # Streaming bodies without a length are counted too.
    chunks = iter([b"{" + b" " * 1500, b" " * 1500 + b"}"])
    streamed = client.put(
        "/v1/jobs/4711", content=chunks, headers={**auth(TEAM_A), "content-type": "application/json"}
    )
    assert streamed.status_code == 413
    small = {"name": "small", "tenant": "team-a"}
    assert client.put("/v1/jobs/4711", json=small, headers=auth(SCHEDULER)).status_code == 201
