"""Delivery of job records to the API over real HTTP (an in-test server standing in for the API's
PUT/GET): each state once, final states settled and final, retries, refusals, what the API knows."""

from __future__ import annotations

import json
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
