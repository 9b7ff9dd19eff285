"""Finding 10: a tampered paging cursor gave a 500 (``OverflowError`` deep in SQLite). Any
cursor that does not decode to valid bounds is a 422, for logs, events and the job list, and a
cursor the API returned still pages. Against the real API process over HTTP."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from jobsight.logstore import LogRecord, SQLiteLogStore
from tests.api.conftest import SCHEDULER, TEAM_A, auth
from tests.api.live import live_settings, start_api
from tests.support import Proc, free_port

pytestmark = pytest.mark.security


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


TAMPERED = [
    _cursor(json.dumps([0, 10**30])),
    _cursor(json.dumps([10**400, 1])),
    _cursor("[1e999, 1]"),
    _cursor("[NaN, 1]"),
    _cursor(json.dumps([0, -1])),
    _cursor(json.dumps([0, 1.5])),
    _cursor(json.dumps([True, 1])),
    _cursor(json.dumps(["now", 1])),
    _cursor(json.dumps([0, 1, 2])),
    _cursor(json.dumps({"a": 1})),
    _cursor(json.dumps(None)),
    "%%%not-base64",
    _cursor("\xff\xfe"),
]


def test_tampered_cursors_are_422(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    store_dir = tmp_path / "logstore"
    store = SQLiteLogStore(store_dir)
    try:
        store.write(
            [
                LogRecord(
                    1_700_000_000 + i, "node1", "job-1", "/x.log", i * 10, f"line {i}", record_id=f"r{i}"
                )
                for i in range(3)
            ]
        )
    finally:
        store.close()
    settings = live_settings(tmp_path, f"http://127.0.0.1:{free_port()}", {"log_store": str(store_dir)})
    api = start_api(spawn, tmp_path, settings)
    for job_id in ("job-1", "job-2"):
        registered = httpx.put(
            f"{api.url}/v1/jobs/{job_id}", json={"tenant": "team-a"}, headers=auth(SCHEDULER)
        )
        assert registered.status_code == 201

    # Log cursors are [timestamp, row id]; job list cursors [created_at, job id].
    for route, wrong in (
        ("/v1/jobs/job-1/logs", [0, "1"]),
        ("/v1/jobs/job-1/events", [0, "1"]),
        ("/v1/jobs", [0, 1]),
    ):
        for cursor in [*TAMPERED, _cursor(json.dumps(wrong))]:
            response = httpx.get(f"{api.url}{route}", params={"cursor": cursor}, headers=auth(TEAM_A))
            assert response.status_code == 422, (route, cursor, response.status_code, response.text)

    # The cursors the API hands out still page.
    first = httpx.get(f"{api.url}/v1/jobs/job-1/logs", params={"limit": 2}, headers=auth(TEAM_A)).json()
    assert [r["message"] for r in first["records"]] == ["line 0", "line 1"]
    rest = httpx.get(
        f"{api.url}/v1/jobs/job-1/logs",
        params={"limit": 2, "cursor": first["next_cursor"]},
        headers=auth(TEAM_A),
    ).json()
    assert [r["message"] for r in rest["records"]] == ["line 2"] and rest["next_cursor"] is None
    page = httpx.get(f"{api.url}/v1/jobs", params={"limit": 1}, headers=auth(TEAM_A)).json()
    more = httpx.get(
        f"{api.url}/v1/jobs", params={"limit": 1, "cursor": page["next_cursor"]}, headers=auth(TEAM_A)
    )
    assert more.status_code == 200 and len(more.json()["jobs"]) == 1
    assert api.proc.alive()
