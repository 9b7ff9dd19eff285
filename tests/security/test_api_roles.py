"""Finding 4: "first registration wins a job id". A tenant registering someone else's job id before
the scheduler does must fail; registration is the scheduler's (or an admin's) right; tenants read
and annotate their jobs; a scheduler token reads no job data; discovered jobs stay admin-only.
Against the real API process over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from api.settings import ApiSettings, TokenConfig
from tests.api.conftest import ADMIN, SCHEDULER, TEAM_A, TEAM_B, auth
from tests.api.live import live_settings, start_api
from tests.support import Proc, RecordedRequest, RecordingHTTPServer, Reply, free_port

pytestmark = pytest.mark.security

JOB = {"name": "train", "user": "alice", "nodes": ["node1"], "status": "running"}


def test_a_tenant_cannot_take_a_job_id_before_the_scheduler(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    api = start_api(spawn, tmp_path, live_settings(tmp_path, f"http://127.0.0.1:{free_port()}"))
    jobs = f"{api.url}/v1/jobs"
    # The attack: team-b claims job 4711 (team-a's, not yet registered by the scheduler).
    for body in (JOB, {**JOB, "tenant": "team-b"}, {**JOB, "tenant": "team-a"}):
        grab = httpx.put(f"{jobs}/4711", json=body, headers=auth(TEAM_B))
        assert grab.status_code == 403, grab.text
    assert httpx.get(f"{jobs}/4711", headers=auth(TEAM_B)).status_code == 404

    # The legitimate path: the scheduler registers it for its tenant, who reads and annotates it.
    made = httpx.put(f"{jobs}/4711", json={**JOB, "tenant": "team-a"}, headers=auth(SCHEDULER))
    assert made.status_code == 201 and made.json()["tenant"] == "team-a"
    assert httpx.get(f"{jobs}/4711", headers=auth(TEAM_A)).json()["status"] == "running"
    assert [j["job_id"] for j in httpx.get(jobs, headers=auth(TEAM_A)).json()["jobs"]] == ["4711"]
    note = httpx.patch(
        f"{jobs}/4711", json={"labels": {"note": "lr sweep"}, "name": "sweep-1"}, headers=auth(TEAM_A)
    )
    assert note.status_code == 200, note.text
    assert note.json()["labels"] == {"note": "lr sweep"} and note.json()["name"] == "sweep-1"
    assert note.json()["status"] == "running" and note.json()["user"] == "alice"
    # A tenant annotates, but does not report facts: no PUT over the scheduler's record, no
    # unknown fields through PATCH, and nothing at all on another tenant's job.
    assert (
        httpx.put(f"{jobs}/4711", json={**JOB, "status": "succeeded"}, headers=auth(TEAM_A)).status_code
        == 403
    )
    assert httpx.patch(f"{jobs}/4711", json={"status": "succeeded"}, headers=auth(TEAM_A)).status_code == 422
    assert httpx.patch(f"{jobs}/4711", json={"name": "mine"}, headers=auth(TEAM_B)).status_code == 404
    assert httpx.get(f"{jobs}/4711", headers=auth(TEAM_B)).status_code == 404

    # The scheduler finishes it; its token reads the registry record, but none of the job's data.
    done = httpx.put(
        f"{jobs}/4711",
        json={**JOB, "tenant": "team-a", "status": "failed", "exit_code": 1},
        headers=auth(SCHEDULER),
    )
    assert done.status_code == 200 and done.json()["status"] == "failed"
    # The tenant's annotations survive the scheduler's update, which did not mention them.
    assert done.json()["labels"] == {"note": "lr sweep"}
    assert httpx.get(f"{jobs}/4711", headers=auth(SCHEDULER)).status_code == 200
    for route in ("logs", "events", "summary", "links", "alerts", "notifications", "scalars", "tensorboard"):
        refused = httpx.get(f"{jobs}/4711/{route}", headers=auth(SCHEDULER), timeout=10)
        assert refused.status_code == 403, (route, refused.text)
    metrics = httpx.get(f"{jobs}/4711/metrics", params={"name": "gpu_util"}, headers=auth(SCHEDULER))
    assert metrics.status_code == 403
    assert httpx.patch(f"{jobs}/4711", json={"name": "x"}, headers=auth(SCHEDULER)).status_code == 403
    assert httpx.delete(f"{jobs}/4711", headers=auth(SCHEDULER)).status_code == 403
    # The tenant still reads its job's data routes (links need no dependency).
    assert httpx.get(f"{jobs}/4711/links", headers=auth(TEAM_A)).status_code == 200


def test_tenant_registration_is_an_opt_in(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    settings = live_settings(tmp_path, f"http://127.0.0.1:{free_port()}", {"tenants_may_register_jobs": True})
    api = start_api(spawn, tmp_path, settings)
    jobs = f"{api.url}/v1/jobs"
    assert httpx.put(f"{jobs}/own-1", json=JOB, headers=auth(TEAM_A)).status_code == 201
    # Even then, only for its own tenant, and never over another tenant's job.
    assert (
        httpx.put(f"{jobs}/own-2", json={**JOB, "tenant": "team-b"}, headers=auth(TEAM_A)).status_code == 403
    )
    assert httpx.put(f"{jobs}/own-1", json=JOB, headers=auth(TEAM_B)).status_code == 404


def test_discovered_jobs_stay_admin_only(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """A job that exporters report (jobsight_gpu_job_info) but nobody registered."""
    info = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"job_id": "found-1", "Hostname": "node1", "gpu": "0"}, "value": [1, "1"]}],
        },
    }

    def respond(request: RecordedRequest) -> Reply:
        return Reply(200, json.dumps(info).encode(), "application/json")

    with RecordingHTTPServer(respond) as prometheus:
        api = start_api(spawn, tmp_path, live_settings(tmp_path, prometheus.url))
        jobs = f"{api.url}/v1/jobs"
        for token in (TEAM_A, TEAM_B):
            assert httpx.get(f"{jobs}/found-1", headers=auth(token)).status_code == 404
            assert httpx.get(f"{jobs}/found-1/logs", headers=auth(token)).status_code == 404
        assert httpx.get(f"{jobs}/found-1/logs", headers=auth(SCHEDULER)).status_code == 403
        assert httpx.get(f"{jobs}/found-1", headers=auth(SCHEDULER)).status_code == 404
        seen = httpx.get(f"{jobs}/found-1", headers=auth(ADMIN))
        assert seen.status_code == 200 and seen.json()["source"] == "discovered"
        # For the admin, logs are refused only because this API has no log store.
        assert httpx.get(f"{jobs}/found-1/logs", headers=auth(ADMIN)).status_code == 503


def test_token_roles_in_the_config() -> None:
    assert TokenConfig.model_validate({"token": "x" * 16, "tenant": "t"}).role == "tenant"
    assert TokenConfig.model_validate({"token": "x" * 16, "tenant": "t", "admin": True}).role == "admin"
    assert TokenConfig.model_validate({"token": "x" * 16, "tenant": "t", "admin": False}).role == "tenant"
    assert (
        TokenConfig.model_validate({"token": "x" * 16, "tenant": "t", "role": "scheduler"}).role
        == "scheduler"
    )
    for bad in ({"admin": True, "role": "scheduler"}, {"role": "root"}, {"admin": "yes"}):
        with pytest.raises(ValueError):
            TokenConfig.model_validate({"token": "x" * 16, "tenant": "t", **bad})
    assert ApiSettings.model_validate({}).tenants_may_register_jobs is False
