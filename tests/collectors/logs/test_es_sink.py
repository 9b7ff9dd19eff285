"""The Elasticsearch sink's contract: template and ILM at start-up, bulk create with
deterministic ids, 409 = delivered, per-item 429/5xx retried, other 4xx dead-lettered, failed
requests retried by the collector while no input is read. Runs against the in-test HTTP server
and, marked `elasticsearch`, the shared cases against a real cluster at JOBSIGHT_ES_URL."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.logs.config import ElasticsearchConfig
from collectors.logs.es import ElasticsearchSink, Stopped, data_stream_name, to_ecs
from collectors.logs.stats import LogStats
from jobsight.errors import DependencyUnavailable
from jobsight.logstore import LogRecord, SQLiteLogStore
from tests.collectors.logs.fake_es import FakeElasticsearch
from tests.collectors.logs.harness import Harness, file_source
from tests.support import Proc, free_port, jobsight_command, wait_until


def record(i: int, job: str = "4711", kind: str | None = None) -> LogRecord:
    return LogRecord(timestamp=1795928400.0 + i, host="node1", job_id=job, path="/data/jobs/4711/train.log",
                     offset=i * 50, message=f"step {i} loss 0.{i}", rank=i % 8, level="info",
                     event_kind=kind, event_severity="critical" if kind else None,
                     event_fields={"xid": "79", "pci": "0000:44:00"} if kind else {},
                     record_id=f"node1:fe00-1-abc:{i * 50}-{uuid.uuid4().hex[:8]}")


class Target:
    """Where the sink writes, and how a test reads back what arrived."""

    def __init__(self, url: str, namespace: str, fake: FakeElasticsearch | None) -> None:
        self.url = url
        self.namespace = namespace
        self.fake = fake

    def config(self, **extra: Any) -> ElasticsearchConfig:
        return ElasticsearchConfig(hosts=[self.url], namespace=self.namespace, backoff_initial=0.01,
                                   backoff_max=0.05, request_timeout=10, **extra)

    def stored_ids(self) -> set[str]:
        if self.fake is not None:
            return set(self.fake.docs)
        from elasticsearch import Elasticsearch

        client = Elasticsearch(self.url)
        stream = data_stream_name(self.namespace)
        client.indices.refresh(index=stream)
        hits = client.search(index=stream, size=10_000, query={"match_all": {}})["hits"]["hits"]
        return {hit["_id"] for hit in hits}


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.elasticsearch)])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    if request.param == "fake":
        fake = FakeElasticsearch().start()
        yield Target(fake.url, "test", fake)
        fake.stop()
    else:
        namespace = "jobsighttest" + uuid.uuid4().hex[:8]
        yield Target(os.environ["JOBSIGHT_ES_URL"], namespace, None)
        from elasticsearch import Elasticsearch

        Elasticsearch(os.environ["JOBSIGHT_ES_URL"]).indices.delete_data_stream(name=data_stream_name(namespace))


@pytest.fixture
def fake() -> Iterator[FakeElasticsearch]:
    server = FakeElasticsearch().start()
    yield server
    server.stop()


def sink_for(target_url: str, tmp_path: Path, stats: LogStats, **extra: Any) -> ElasticsearchSink:
    config = ElasticsearchConfig(hosts=[target_url], namespace="test", backoff_initial=0.01, backoff_max=0.05,
                                 request_timeout=5, **extra)
    return ElasticsearchSink(config, stats, tmp_path / "dead.ndjson")


# ---- shared: the fake and a real cluster ----------------------------------------------------------

def test_setup_and_delivery_with_ecs_fields(target: Target, tmp_path: Path) -> None:
    stats = LogStats()
    sink = ElasticsearchSink(target.config(), stats, tmp_path / "dead.ndjson")
    sink.setup()
    records = [record(i) for i in range(20)] + [record(20, kind="gpu_xid")]
    assert sink.deliver(records) == 21
    assert target.stored_ids() == {r.record_id for r in records}
    if target.fake is not None:
        assert set(target.fake.index_of.values()) == {"logs-jobsight-test"}
        doc = target.fake.docs[records[20].record_id]
        assert doc["labels"]["job_id"] == "4711" and doc["event"]["kind"] == "gpu_xid"
        assert doc["event"]["fields"] == {"xid": "79", "pci": "0000:44:00"} and doc["log"]["offset"] == 1000
        assert doc["@timestamp"] == "2026-11-29T05:00:20.000000Z" and doc["host"]["name"] == "node1"
        template = target.fake.templates["jobsight-logs"]
        assert template["index_patterns"] == ["logs-jobsight-*"] and "data_stream" in template
        assert template["template"]["settings"]["index.lifecycle.name"] == "jobsight-logs"
        assert "rollover" in target.fake.policies["jobsight-logs"]["policy"]["phases"]["hot"]["actions"]
    sink.close()


def test_replay_is_answered_409_and_counted_as_delivered(target: Target, tmp_path: Path) -> None:
    stats = LogStats()
    sink = ElasticsearchSink(target.config(), stats, tmp_path / "dead.ndjson")
    sink.setup()
    records = [record(i) for i in range(10)]
    assert sink.deliver(records[:6]) == 6
    assert sink.deliver(records) == 4
    assert stats.duplicates["elasticsearch"] == 6
    assert target.stored_ids() == {r.record_id for r in records}
    assert not (tmp_path / "dead.ndjson").exists()
    sink.close()


# ---- the fake only: scripted failures -------------------------------------------------------------

def test_per_item_429_and_5xx_are_retried_only_for_those_items(fake: FakeElasticsearch,
                                                                tmp_path: Path) -> None:
    stats = LogStats()
    sink = sink_for(fake.url, tmp_path, stats)
    records = [record(i) for i in range(5)]
    fake.plan[records[1].record_id] = [429, 429]
    fake.plan[records[3].record_id] = [503]
    assert sink.deliver(records) == 5
    assert set(fake.docs) == {r.record_id for r in records}
    assert fake.attempts[records[0].record_id] == 1
    assert fake.attempts[records[1].record_id] == 3 and fake.attempts[records[3].record_id] == 2
    assert stats.sink_retries["elasticsearch"] == 3


def test_other_4xx_go_to_the_dead_letter_file_with_the_reason(fake: FakeElasticsearch,
                                                              tmp_path: Path) -> None:
    stats = LogStats()
    sink = sink_for(fake.url, tmp_path, stats)
    records = [record(i) for i in range(4)]
    fake.plan[records[2].record_id] = [400]
    assert sink.deliver(records) == 3
    dead = [json.loads(line) for line in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert len(dead) == 1 and dead[0]["status"] == 400
    assert "document_parsing_exception" in dead[0]["reason"]
    assert dead[0]["document"]["jobsight"]["record_id"] == records[2].record_id
    assert stats.dead_letters["elasticsearch"] == 1
    assert fake.attempts[records[2].record_id] == 1  # never retried


@pytest.mark.parametrize("failure", ["dropped", "503", "429"])
def test_failed_request_raises_dependency_unavailable(fake: FakeElasticsearch, tmp_path: Path,
                                                       failure: str) -> None:
    sink = sink_for(fake.url, tmp_path, LogStats())
    if failure == "dropped":
        fake.drop_requests = 1
    else:
        fake.fail_requests = [int(failure)]
    with pytest.raises(DependencyUnavailable, match="elasticsearch"):
        sink.deliver([record(0)])
    assert sink.deliver([record(1)]) == 1


def test_unreachable_cluster_is_dependency_unavailable(tmp_path: Path) -> None:
    sink = sink_for(f"http://127.0.0.1:{free_port()}", tmp_path, LogStats())
    with pytest.raises(DependencyUnavailable, match="elasticsearch"):
        sink.setup()


def test_stop_interrupts_item_retries(fake: FakeElasticsearch, tmp_path: Path) -> None:
    stop = threading.Event()
    config = ElasticsearchConfig(hosts=[fake.url], namespace="test", backoff_initial=5, backoff_max=5)
    sink = ElasticsearchSink(config, LogStats(), tmp_path / "dead.ndjson", stop=stop)
    rec = record(0)
    fake.plan[rec.record_id] = [429] * 100
    stop.set()
    with pytest.raises(Stopped):
        sink.deliver([rec])


def test_collector_waits_with_input_unread_until_elasticsearch_answers(fake: FakeElasticsearch,
                                                                        tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("".join(f"line {i:04d} of a long enough training log\n" for i in range(200)))
    stats = LogStats()
    sink = sink_for(fake.url, tmp_path, stats)
    h = Harness(tmp_path, [file_source([f"{logs}/*.log"], job_id="job-1")], es=sink,
                retry_initial=0.01, retry_max=0.02, batch={"max_bytes": 1024, "max_wait": 0.01})
    h.stats = stats
    h.collector.stats = stats
    fake.drop_requests = 3
    fake.fail_requests = [503, 503]
    fake.observer = lambda: (sum(stats.records_read.values()), stats.pending_since is not None,
                             h.collector.health()[0])
    h.pump_until(lambda: len(fake.docs) == 200, message="all lines in elasticsearch")
    h.settle()
    assert len(fake.docs) == 200 and len(h.messages()) == 200  # the store keeps them too by default
    assert stats.sink_errors["elasticsearch"] == 5
    # The first batch was retried five times and nothing more was read meanwhile (backpressure).
    first = fake.observations[:6]
    assert len({o[:2] for o in first}) == 1 and 0 < first[0][0] < 200
    assert first[0][1]  # the delivery lag is counting while the batch waits
    assert first[1][2] is False  # /healthz says 503 while deliveries fail ...
    assert stats.delivery_lag() == 0.0 and h.collector.health() == (True, "ok")  # ... and 200 after
    docs = list(fake.docs.values())
    assert {d["labels"]["job_id"] for d in docs} == {"job-1"}
    h.close()


def test_ecs_document_of_a_container_record() -> None:
    rec = LogRecord(timestamp=0.5, host="n", job_id=None, path="/var/log/pods/x/0.log", offset=3, message="m",
                    stream="stderr", source="cri",
                    labels={"namespace": "ml", "pod": "p", "pod_uid": "u", "container": "c"})
    doc = to_ecs(rec, "prod")
    assert doc["orchestrator"] == {"type": "kubernetes", "namespace": "ml",
                                   "resource": {"type": "pod", "name": "p", "id": "u"}}
    assert doc["container"] == {"name": "c"} and doc["labels"] == {"source": "cri", "stream": "stderr"}
    assert doc["data_stream"] == {"type": "logs", "dataset": "jobsight", "namespace": "prod"}
    assert "event" not in doc and doc["@timestamp"] == "1970-01-01T00:00:00.500000Z"


def test_collector_process_with_elasticsearch_sink(fake: FakeElasticsearch, tmp_path: Path,
                                                   spawn: Callable[..., Proc]) -> None:
    logs = tmp_path / "jobs" / "4711"
    logs.mkdir(parents=True)
    lines = [f"step {i}" for i in range(30)] + ["RuntimeError: CUDA error: out of memory", "step 30"]
    (logs / "train.log").write_text("\n".join(lines) + "\n")
    fake.fail_requests = [503]  # the first bulk request fails: the batch is retried
    config = tmp_path / "collector.yaml"
    config.write_text(
        "sources:\n"
        "  - type: file\n"
        f'    paths: ["{tmp_path}/jobs/*/*.log"]\n'
        f'    job_id_pattern: "{tmp_path}/jobs/(?P<job_id>[^/]+)/"\n'
        "    multiline: {flush_timeout: 0.2}\n"
        f"store: {{path: {tmp_path / 'store'}, keep_records: false}}\n"
        f"elasticsearch: {{hosts: ['{fake.url}'], namespace: prod, backoff_initial: 0.05}}\n"
        f"listen: 127.0.0.1:{free_port()}\n"
        "poll_interval: 0.05\nretry_initial: 0.05\n"
    )
    proc = spawn(jobsight_command("collector", "logs", "--config", str(config)), name="collector-es")
    wait_until(lambda: len(fake.docs) == 32 or not proc.alive(), timeout=30, message="32 documents")
    assert proc.alive(), proc.output()
    assert set(fake.index_of.values()) == {"logs-jobsight-prod"}
    assert "jobsight-logs" in fake.templates and "jobsight-logs" in fake.policies
    oom = [d for d in fake.docs.values() if d.get("event", {}).get("kind") == "cuda_oom"]
    assert len(oom) == 1 and oom[0]["labels"]["job_id"] == "4711"
    proc.kill(signal.SIGTERM)
    assert proc.popen.wait(timeout=30) == 0, proc.output()
    # keep_records: false keeps only the offsets in the local store.
    store = SQLiteLogStore(tmp_path / "store", read_only=True)
    assert store.stats().records == 0 and len(store.checkpoints()) == 1
    store.close()
