"""Logs and events through the API, from the embedded SQLite store and from Elasticsearch (a
contract test at the HTTP boundary, plus a test against a real cluster when JOBSIGHT_ES_URL is set)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.logsource_es import ElasticsearchLogSource, build_query
from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.logstore import LogRecord, SQLiteLogStore
from tests.api.conftest import TEAM_A, TEAM_B, auth, register_demo
from tests.api.scenario import Scenario
from tests.support import RecordedRequest, RecordingHTTPServer, Reply, free_port


def test_logs_of_a_job_with_filters_and_pages(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    everything = client.get("/v1/jobs/demo-fail/logs", headers=auth(TEAM_A)).json()
    assert len(everything["records"]) == 5 and everything["next_cursor"] is None
    assert all(r["job_id"] == "demo-fail" for r in everything["records"])
    timeouts = client.get(
        "/v1/jobs/demo-fail/events", params={"kind": "nccl_timeout"}, headers=auth(TEAM_A)
    ).json()
    assert [r["rank"] for r in timeouts["records"]] == [1, 0, 4]  # oldest first
    rank4 = client.get("/v1/jobs/demo-fail/logs", params={"rank": 4}, headers=auth(TEAM_A)).json()["records"]
    assert [r["host"] for r in rank4] == ["node2"]
    words = client.get("/v1/jobs/demo-fail/logs", params={"q": "loss"}, headers=auth(TEAM_A)).json()[
        "records"
    ]
    assert [r["message"] for r in words] == ["step 100 loss 2.31"]
    # Query syntax in user text is only text.
    tricky = client.get(
        "/v1/jobs/demo-fail/logs", params={"q": 'loss" OR * NEAR(a b) -- ;'}, headers=auth(TEAM_A)
    )
    assert tricky.status_code == 200 and tricky.json()["records"] == []
    first = client.get("/v1/jobs/demo-fail/events", params={"limit": 2}, headers=auth(TEAM_A)).json()
    second = client.get(
        "/v1/jobs/demo-fail/events", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth(TEAM_A)
    ).json()
    assert len(first["records"]) == 2 and len(second["records"]) == 2
    assert {r["record_id"] for r in first["records"]}.isdisjoint(r["record_id"] for r in second["records"])
    window = client.get(
        "/v1/jobs/demo-fail/events",
        headers=auth(TEAM_A),
        params={
            "since": datetime.fromtimestamp(scenario.nccl_at + 1, tz=UTC).isoformat(),
            "until": datetime.fromtimestamp(scenario.nccl_at + 6, tz=UTC).isoformat(),
        },
    ).json()["records"]
    assert [r["rank"] for r in window] == [0]
    assert client.get("/v1/jobs/demo-fail/logs", headers=auth(TEAM_B)).status_code == 404
    bad = client.get("/v1/jobs/demo-fail/logs", params={"cursor": "@@@"}, headers=auth(TEAM_A))
    assert bad.status_code == 422


def test_log_store_missing_is_503(
    make_client: Callable[..., TestClient], tmp_path: Path, scenario: Scenario
) -> None:
    client = make_client(settings={"log_store": str(tmp_path / "no-store-here")})
    register_demo(client, scenario)
    response = client.get("/v1/jobs/demo-fail/logs", headers=auth(TEAM_A))
    assert response.status_code == 503 and response.json()["dependency"] == "log store"
    assert client.get("/v1/jobs/demo-fail/summary", headers=auth(TEAM_A)).status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "log store" in ready.json()["checks"]
    # Once the collector creates the store, the API picks it up without a restart.
    store = SQLiteLogStore(tmp_path / "no-store-here")
    store.write(
        [
            LogRecord(
                timestamp=scenario.base + 1,
                host="node1",
                job_id="demo-fail",
                path="/x",
                offset=0,
                message="hello",
                record_id="r1",
            )
        ]
    )
    store.close()
    records = client.get("/v1/jobs/demo-fail/logs", headers=auth(TEAM_A)).json()["records"]
    assert [r["message"] for r in records] == ["hello"]
    assert client.get("/readyz").status_code == 200


def test_unconfigured_log_store(make_client: Callable[..., TestClient], scenario: Scenario) -> None:
    client = make_client(settings={"log_store": None})
    register_demo(client, scenario)
    response = client.get("/v1/jobs/demo-fail/events", headers=auth(TEAM_A))
    assert response.status_code == 503 and "no log_store is configured" in response.json()["detail"]
    summary = client.get("/v1/jobs/demo-fail/summary", headers=auth(TEAM_A)).json()
    assert summary["events"] == [] and any("log store" in w for w in summary["warnings"])
    assert summary["diagnosis"]["missing_sources"] == ["log store"]
    # Prometheus alone still finds the XID.
    assert summary["diagnosis"]["causes"][0]["title"].startswith("XID 79 on node2 GPU 3")
    ready = client.get("/readyz").json()
    assert ready["status"] == "ok" and ready["checks"]["log store"] == "not configured"


# -- Elasticsearch --------------------------------------------------------------------------


def test_query_is_structured_never_query_string() -> None:
    query = build_query(
        job_id="4711", q='a OR b:* "c"', kind=None, rank=3, since=10.0, until=20.5, events_only=True
    )
    text = json.dumps(query)
    assert "query_string" not in text
    assert query["bool"]["must"] == [{"match": {"message": {"query": 'a OR b:* "c"', "operator": "and"}}}]
    filters = query["bool"]["filter"]
    assert {"term": {"labels.job_id": "4711"}} in filters
    assert {"exists": {"field": "event.kind"}} in filters
    assert {"term": {"labels.rank": "3"}} in filters
    assert {"range": {"@timestamp": {"gte": 10000, "lt": 20500, "format": "epoch_millis"}}} in filters


@pytest.fixture
def fake_es() -> Iterator[RecordingHTTPServer]:
    """Answers like Elasticsearch 8/9 at the HTTP level and remembers what it was asked."""
    t0 = 1_790_000_000_000
    hits = [
        {
            "_id": f"id{i}",
            "sort": [t0 + i, i],
            "_source": {
                "@timestamp": datetime.fromtimestamp((t0 + i) / 1000, tz=UTC)
                .isoformat()
                .replace("+00:00", "Z"),
                "message": f"line {i}",
                "host": {"name": "node1"},
                "log": {"file": {"path": "/l"}, "offset": i},
                "labels": {"job_id": "4711", "rank": "2"},
                "event": {"kind": "nccl_timeout"},
            },
        }
        for i in range(3)
    ]

    def answer(request: RecordedRequest) -> Reply:
        if request.method == "GET":
            body: dict[str, Any] = {
                "name": "fake", "cluster_name": "c", "version": {"number": "9.0.0"}, "tagline": "You Know"
            }
        else:
            size = int(_es_body(request).get("size", 10))
            body = {
                "took": 1,
                "timed_out": False,
                "hits": {"total": {"value": len(hits)}, "hits": hits[:size]},
            }
        product = {"X-Elastic-Product": "Elasticsearch"}
        return Reply(200, json.dumps(body).encode(), "application/json", product)

    with RecordingHTTPServer(answer) as server:
        yield server


def _es_body(request: RecordedRequest) -> dict[str, Any]:
    return dict(json.loads(request.body or b"{}"))


def test_elasticsearch_adapter_at_the_http_boundary(fake_es: RecordingHTTPServer) -> None:
    source = ElasticsearchLogSource.from_url(fake_es.url, timeout=5)
    source.ping()
    page = source.search(job_id="4711", q="timeout OR *", kind="nccl_timeout", limit=2)
    assert [r.message for r in page.records] == ["line 0", "line 1"]
    record = page.records[0]
    assert (record.host, record.job_id, record.rank, record.event_kind, record.path) == (
        "node1",
        "4711",
        2,
        "nccl_timeout",
        "/l",
    )
    assert record.timestamp == pytest.approx(1_790_000_000.0)
    assert page.next_cursor is not None
    last = fake_es.snapshot()[-1]
    method, path, body = last.method, last.path, _es_body(last)
    assert method == "POST" and path.split("?")[0] in (
        "/logs-jobsight-%2A/_search",
        "/logs-jobsight-*/_search",
    )
    assert body is not None and body["size"] == 3
    assert "query_string" not in json.dumps(body)
    assert body["query"]["bool"]["must"][0]["match"]["message"]["query"] == "timeout OR *"
    source.search(job_id="4711", limit=2, cursor=page.next_cursor)
    assert _es_body(fake_es.snapshot()[-1])["search_after"] == [1_790_000_000_001, 1]
    with pytest.raises(InvalidInput):
        source.search(cursor="garbage!")
    source.close()


def test_elasticsearch_down_is_a_dependency_error() -> None:
    source = ElasticsearchLogSource.from_url(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(DependencyUnavailable) as info:
        source.search(job_id="x")
    assert info.value.dependency == "log store"
    with pytest.raises(DependencyUnavailable):
        source.ping()


@pytest.mark.elasticsearch
def test_against_a_real_elasticsearch() -> None:
    from elasticsearch import Elasticsearch

    url = os.environ["JOBSIGHT_ES_URL"]
    index = f"logs-jobsight-apitest-{int(time.time())}"
    es = Elasticsearch(url)
    try:
        # logs-*-* names are data streams in Elasticsearch's default templates: create-only writes.
        es.index(
            index=index,
            refresh=True,
            op_type="create",
            document={
                "@timestamp": "2026-01-01T00:00:00Z",
                "message": "NCCL watchdog timeout",
                "host": {"name": "n1"},
                "log": {"file": {"path": "/p"}, "offset": 5},
                "labels": {"job_id": "es-job", "rank": "1"},
                "event": {"kind": "nccl_timeout"},
            },
        )
        source = ElasticsearchLogSource(es, index=index)
        page = source.search(job_id="es-job", q="watchdog", kind="nccl_timeout")
        assert [r.rank for r in page.records] == [1]
        assert source.search(job_id="other").records == []
    finally:
        es.options(ignore_status=[400, 404]).indices.delete_data_stream(name=index)
        es.options(ignore_status=[400, 404]).indices.delete(index=index)
        es.close()
