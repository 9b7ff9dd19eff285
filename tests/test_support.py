"""The in-test HTTP server of tests/support.py records what it gets and answers as told."""

from __future__ import annotations

import httpx

from tests.support import RecordedRequest, RecordingHTTPServer, Reply


def test_recording_http_server_records_and_answers() -> None:
    def respond(request: RecordedRequest) -> Reply:
        if request.path.startswith("/missing"):
            return Reply(404)
        return Reply(201, b'{"ok": true}', "application/json", {"X-Product": "fake"})

    with RecordingHTTPServer(respond, methods=("POST",)) as server:
        answer = httpx.post(f"{server.url}/hook?x=1", json={"a": 1}, headers={"X-Token": "t"})
        assert answer.headers["x-product"] == "fake"
        assert (answer.status_code, answer.headers["content-type"], answer.json()) == (
            201,
            "application/json",
            {"ok": True},
        )
        missing = httpx.post(f"{server.url}/missing", content=b"")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
        assert httpx.get(f"{server.url}/hook").status_code == 501
        recorded = server.snapshot()
    assert [(r.method, r.path) for r in recorded] == [("POST", "/hook?x=1"), ("POST", "/missing")]
    assert recorded[0].headers["x-token"] == "t" and recorded[0].json() == {"a": 1}
    assert recorded[1].body == b""


def test_recording_http_server_default_reply_is_an_empty_200_and_record_can_be_off() -> None:
    with RecordingHTTPServer(record=False) as server:
        answer = httpx.get(f"http://127.0.0.1:{server.port}/")
        assert (answer.status_code, answer.content) == (200, b"")
        assert "content-type" not in answer.headers
        assert server.snapshot() == []
