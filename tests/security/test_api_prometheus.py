"""Finding 8: a misbehaving Prometheus must not hurt the API. Against a real in-test HTTP server
standing in for Prometheus: malformed answers (``[]``, no ``data``, non-numeric values, not
JSON) are the dependency's 503, never a 500; an answer larger than the cap is a 503; an answer
trickled a byte at a time ends in a 503 at the call's total deadline, and ``/healthz`` keeps
answering while many such calls are in flight. A well-formed answer still gives the series."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import SCHEDULER, TEAM_A, auth
from tests.api.live import LiveApi, live_settings, start_api
from tests.support import Proc, RecordedRequest, RecordingHTTPServer, Reply, ServerThread

pytestmark = pytest.mark.security

GOOD = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [{"metric": {"Hostname": "node1", "gpu": "0"}, "values": [[1, "0.5"]]}],
    },
}
SERIES = {
    "status": "success",
    "data": [{"__name__": "jobsight_gpu_job_info", "Hostname": "node1", "gpu": "0", "job_id": "job-1"}],
}
MALFORMED: dict[str, bytes] = {
    "a list": b"[]",
    "no data": json.dumps({"status": "success"}).encode(),
    "data is a list": json.dumps({"status": "success", "data": []}).encode(),
    "no result": json.dumps({"status": "success", "data": {"resultType": "matrix"}}).encode(),
    "non-numeric value": json.dumps(
        {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "abc"]]}]},
        }
    ).encode(),
    "short point": json.dumps(
        {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1]]}]}}
    ).encode(),
    "labels not strings": json.dumps(
        {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {"a": 1}, "values": []}]},
        }
    ).encode(),
    "a vector where a matrix belongs": json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "1"]}]}}
    ).encode(),
    "not JSON": b"<html>gateway</html>",
    "null": b"null",
}
# Running, so its window ends now: answers about it are never taken from the API's cache.
JOB = {"tenant": "team-a", "nodes": ["node1"], "gpus": [{"host": "node1", "gpu": 0}], "status": "running"}
METRICS = "/v1/jobs/job-1/metrics"


class TricklingPrometheus(ServerThread):
    """Answers every request with a valid, complete-looking JSON body, sent one byte every
    ``interval`` seconds (until stopped): the slowest a per-read timeout never catches."""

    def __init__(self, interval: float = 0.25) -> None:
        self.stop = threading.Event()
        self.served = 0
        owner = self
        body = json.dumps(GOOD).encode()

        class Handler(BaseHTTPRequestHandler):
            def _trickle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                owner.served += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(len(body)):
                        if owner.stop.wait(interval):
                            return
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                except OSError:
                    return  # the API gave up on us, as it should

            do_GET = do_POST = _trickle

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(Handler)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        super().__exit__(*exc)


@pytest.fixture
def answers() -> Iterator[dict[str, bytes]]:
    """What the in-test Prometheus answers next (key ``body``), changeable during the test."""
    yield {"body": json.dumps(GOOD).encode()}


def _api(spawn: Callable[..., Proc], tmp_path: Path, prometheus_url: str, **extra: Any) -> LiveApi:
    api = start_api(spawn, tmp_path, live_settings(tmp_path, prometheus_url, extra))
    started = datetime.now(UTC) - timedelta(minutes=10)
    job = {**JOB, "started_at": started.isoformat()}
    response = httpx.put(f"{api.url}/v1/jobs/job-1", json=job, headers=auth(SCHEDULER), timeout=10)
    assert response.status_code == 201, response.text
    return api


def test_malformed_and_huge_answers_are_503(
    spawn: Callable[..., Proc], tmp_path: Path, answers: dict[str, bytes]
) -> None:
    def respond(request: RecordedRequest) -> Reply:
        # The label index the API asks first for the job's GPUs answers well; the data query
        # behind it gets the answer under test.
        if request.path.startswith("/api/v1/series"):
            return Reply(200, json.dumps(SERIES).encode(), "application/json")
        return Reply(200, answers["body"], "application/json")

    with RecordingHTTPServer(respond, record=False) as prometheus:
        api = _api(spawn, tmp_path, prometheus.url, prometheus_max_response_bytes=256 * 1024)

        def get() -> httpx.Response:
            return httpx.get(
                f"{api.url}{METRICS}", params={"name": "gpu_util"}, headers=auth(TEAM_A), timeout=30
            )

        good = get()
        assert good.status_code == 200, good.text
        (metric,) = good.json()["metrics"]
        assert metric["series"][0]["points"] == [[1.0, 0.5]]

        for what, body in MALFORMED.items():
            answers["body"] = body
            response = get()
            assert response.status_code == 503, (what, response.status_code, response.text)
            assert response.json()["dependency"] == "prometheus", what

        # Bigger than the cap (with a Content-Length, as Prometheus sends it): refused unread.
        answers["body"] = (
            b'{"status":"success","data":{"resultType":"matrix","result":[' + b" " * 1_000_000 + b"]}}"
        )
        huge = get()
        assert huge.status_code == 503 and "larger than" in huge.json()["detail"], huge.text

        answers["body"] = json.dumps(GOOD).encode()
        assert get().status_code == 200
    assert api.proc.alive()


def test_huge_answer_without_length_is_cut_off(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    """A chunked answer has no Content-Length: the cap is counted while reading."""
    chunk = b" " * 65536

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (1, b"{"))
                for _ in range(64):  # 4 MiB, bounded
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                return

        def log_message(self, format: str, *args: Any) -> None:
            return

    with ServerThread(Handler) as server:
        api = _api(spawn, tmp_path, server.url, prometheus_max_response_bytes=256 * 1024)
        response = httpx.get(
            f"{api.url}{METRICS}", params={"name": "gpu_util"}, headers=auth(TEAM_A), timeout=30
        )
        assert response.status_code == 503 and "larger than" in response.json()["detail"], response.text


def test_trickled_answer_ends_at_the_deadline(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    with TricklingPrometheus() as prometheus:
        # The whole answer would take len(GOOD) / 4 s (about 40 s); the deadline is 2 s.
        api = _api(spawn, tmp_path, prometheus.url, dependency_timeout_seconds=2.0)
        url = f"{api.url}{METRICS}"

        def call(_: int) -> int:
            return httpx.get(url, params={"name": "gpu_util"}, headers=auth(TEAM_A), timeout=20).status_code

        # Many at once, as in the report (45 such requests blocked /healthz): each ends with the
        # dependency's 503, and /healthz answers meanwhile.
        with ThreadPoolExecutor(max_workers=45) as pool:
            codes = pool.map(call, range(45))
            assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200
            assert set(codes) == {503}
        # Every call reached Prometheus or ran out its deadline queued behind the others (the API's
        # query pool is bounded): either way none took longer than its deadline to answer.
        assert prometheus.served >= 1
        one = httpx.get(url, params={"name": "gpu_util"}, headers=auth(TEAM_A), timeout=20)
        assert one.status_code == 503 and "within 2 s" in one.json()["detail"], one.text
