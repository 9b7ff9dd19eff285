"""Delivery of job records to the API over real HTTP (an in-test server standing in for the API's
PUT/GET): each state once, final states settled and final, retries, refusals, what the API knows."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from schedulers.kubernetes.jobsapi import JobsApi
from schedulers.kubernetes.watch import Delivery
from tests.support import RecordedRequest, RecordingHTTPServer, Reply

JOB = "team-a:llama"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def body(status: str, **extra: Any) -> dict[str, Any]:
    return {"name": "llama", "status": status, "nodes": ["n1"], "labels": {"uid": "u1"}, **extra}


class Api:
    """Answers PUT with the given statuses in turn (then 200), GET with the stored job or 404."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.stored: dict[str, Any] | None = None

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.method == "GET":
            if self.stored is None:
                return Reply(404, b'{"detail": "not found"}', "application/json")
            return Reply(200, json.dumps(self.stored).encode(), "application/json")
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.stored = request.json()
        return Reply(status, b'{"detail": "x"}', "application/json")


def puts(server: RecordingHTTPServer) -> list[str]:
    return [r.json()["status"] for r in server.snapshot() if r.method == "PUT"]


def test_each_state_once_and_a_final_state_is_final() -> None:
    api = Api()
    clock = FakeClock()
    with RecordingHTTPServer(api, methods=("GET", "PUT")) as server:
        delivery = Delivery(JobsApi(server.url, "token"), clock=clock, settle=2.0)
        delivery.offer(JOB, body("running"))
        delivery.flush()
        delivery.offer(JOB, body("running"))  # the same record: nothing to send
        delivery.flush()
        delivery.offer(JOB, body("succeeded"))
        delivery.flush()
        assert puts(server) == ["running"]  # settling
        clock.now = 1.5
        delivery.offer(JOB, body("succeeded"))  # offered again (a periodic refresh): no new wait
        clock.now = 2.5
        delivery.flush()
        assert puts(server) == ["running", "succeeded"]  # 2 s after it first became final
        delivery.offer(JOB, body("cancelled"))  # the job object deleted after it succeeded
        delivery.offer(JOB, body("running"))
        clock.now = 10
        delivery.flush()
        assert puts(server) == ["running", "succeeded"]
        delivery.offer(JOB, body("running", labels={"uid": "u2"}))  # a new run under the same name
        delivery.flush()
        assert puts(server) == ["running", "succeeded", "running"]
        assert all(r.headers["authorization"] == "Bearer token" for r in server.snapshot())


def test_retries_what_failed_and_drops_what_is_refused() -> None:
    api = Api(503, 200, 422)
    clock = FakeClock()
    with RecordingHTTPServer(api, methods=("GET", "PUT")) as server:
        delivery = Delivery(JobsApi(server.url, None), clock=clock, backoff=1.0, settle=0)
        delivery.offer(JOB, body("running"))
        delivery.flush()
        assert delivery.pending and delivery.sent == 0
        delivery.flush()  # within the backoff: no new attempt
        assert puts(server) == ["running"]
        clock.now = 1.5
        delivery.flush()
        assert not delivery.pending and delivery.sent == 1
        delivery.offer(JOB, body("failed", reason="x" * 10))
        delivery.flush()
        assert not delivery.pending and delivery.sent == 1  # 422: logged and dropped
        assert puts(server) == ["running", "running", "failed"]


def test_a_restarted_watcher_learns_what_the_api_has() -> None:
    api = Api()
    stored: dict[str, Any] = {
        "started_at": "2026-11-29T10:00:00+00:00",
        "ended_at": None,
        "user": None,
        "tenant": None,
        "gpus": [],
    }
    api.stored = {**body("failed", exit_code=137, reason="out of memory"), **stored}
    with RecordingHTTPServer(api, methods=("GET", "PUT")) as server:
        delivery = Delivery(JobsApi(server.url, None), settle=0)
        delivery.learn(JOB, "u1")
        delivery.offer(JOB, body("running", started_at="2026-11-29T10:00:00Z"))  # seen before the end
        delivery.offer(
            JOB, body("failed", exit_code=137, reason="out of memory", started_at="2026-11-29T10:00:00Z")
        )
        delivery.flush()
        assert puts(server) == []


class Registry:
    """The API's job list in pages of two (``GET /v1/jobs?scheduler=kubernetes``), and each job by
    id; counts what it is asked."""

    def __init__(self, jobs: list[dict[str, Any]], list_status: int = 200) -> None:
        self.jobs = jobs
        self.list_status = list_status
        self.by_id = {job["job_id"]: job for job in jobs}

    def __call__(self, request: RecordedRequest) -> Reply:
        if request.method == "GET" and request.path.startswith("/v1/jobs?"):
            if self.list_status != 200:
                return Reply(self.list_status, b'{"detail": "unknown query parameter"}', "application/json")
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.path).query))
            assert query["scheduler"] == "kubernetes"
            start = int(query.get("cursor") or 0)
            page = {"jobs": self.jobs[start:start + 2],
                    "next_cursor": str(start + 2) if start + 2 < len(self.jobs) else None}
            return Reply(200, json.dumps(page).encode(), "application/json")
        if request.method == "GET":
            job_id = urllib.parse.unquote(request.path.rsplit("/", 1)[1])
            job = self.by_id.get(job_id)
            return Reply(200 if job else 404, json.dumps(job or {"detail": "x"}).encode(), "application/json")
        return Reply(200, b"{}", "application/json")


def test_a_restarted_watcher_reads_the_registry_in_pages_not_per_job() -> None:
    stored = [{**body("failed", exit_code=137), "job_id": f"team-a:j{i}"} for i in range(5)]
    registry = Registry(stored)
    with RecordingHTTPServer(registry, methods=("GET", "PUT")) as server:
        delivery = Delivery(JobsApi(server.url, None), settle=0)
        assert delivery.prime()
        for i in range(6):  # five the API knows, and a new one
            delivery.learn(f"team-a:j{i}", "u1")
            delivery.offer(f"team-a:j{i}", body("failed", exit_code=137))
        delivery.end_priming()
        delivery.flush()
        asked = [r.path for r in server.snapshot() if r.method == "GET"]
        assert len(asked) == 3 and all(p.startswith("/v1/jobs?") for p in asked)  # 5 jobs, pages of 2
        assert [r.path for r in server.snapshot() if r.method == "PUT"] == ["/v1/jobs/team-a%3Aj5"]
        delivery.learn("team-a:j7", "u1")  # after the first pass: asked per job again
        assert server.snapshot()[-1].path == "/v1/jobs/team-a%3Aj7"


def test_an_api_that_cannot_list_by_scheduler_is_asked_per_job() -> None:
    registry = Registry([{**body("failed"), "job_id": JOB}], list_status=422)
    with RecordingHTTPServer(registry, methods=("GET", "PUT")) as server:
        delivery = Delivery(JobsApi(server.url, None), settle=0)
        assert not delivery.prime()
        delivery.learn(JOB, "u1")
        delivery.offer(JOB, body("failed"))
        delivery.flush()
        assert [r.path for r in server.snapshot()][-1] == "/v1/jobs/team-a%3Allama"  # a GET, no PUT
        assert not [r for r in server.snapshot() if r.method == "PUT"]
