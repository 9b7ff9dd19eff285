"""The SQL layer against SQLite and a real PostgreSQL: the same tests, both backends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.db import open_database
from api.store import IncomingAlert, Job, JobStore
from jobsight.errors import DependencyUnavailable
from tests.api.conftest import SCHEDULER, TEAM_A


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(store_url: str, clock: Clock) -> Iterator[JobStore]:
    s = JobStore(open_database(store_url), clock=clock)
    s.migrate()
    s.migrate()  # idempotent
    yield s
    s.close()


def job(job_id: str = "4711", **kw: object) -> Job:
    values: dict[str, object] = {
        "tenant": "team-a",
        "name": "train",
        "user": "alice",
        "nodes": ["node1"],
        "gpus": [{"host": "node1", "gpu": 0, "uuid": None}],
        "started_at": 100.0,
        "status": "running",
        "labels": {"queue": "gpu"},
    }
    values.update(kw)
    return Job(job_id=job_id, **values)  # type: ignore[arg-type]


def test_upsert_creates_then_replaces(store: JobStore, clock: Clock) -> None:
    first = store.upsert_job(job())
    assert first.created and not first.became_failed
    assert first.job.created_at == clock.now and first.job.labels == {"queue": "gpu"}
    clock.now += 10
    second = store.upsert_job(job(name="renamed", nodes=["node1", "node2"]))
    assert not second.created
    stored = store.get_job("4711")
    assert stored is not None
    assert stored.name == "renamed" and stored.nodes == ["node1", "node2"]
    assert stored.created_at == clock.now - 10 and stored.updated_at == clock.now


def test_failure_creates_one_notification_per_failure(store: JobStore, clock: Clock) -> None:
    store.upsert_job(job())
    assert store.upsert_job(job(status="failed"), notify_targets=1).became_failed
    # The same failure reported again (idempotent PUT) is not a new failure.
    assert not store.upsert_job(job(status="failed"), notify_targets=1).became_failed
    assert [n.failure_seq for n in store.list_notifications("4711")] == [1]
    # Requeued, then failed again: a second failure, a second notification.
    store.upsert_job(job(status="running"))
    clock.now += 5
    assert store.upsert_job(job(status="failed"), notify_targets=1).became_failed
    notes = store.list_notifications("4711")
    assert [(n.failure_seq, n.status) for n in notes] == [(1, "pending"), (2, "pending")]
    assert store.due_notifications(clock.now)[0].failure_seq == 1


def test_mark_failed_by_alert_only_once(store: JobStore) -> None:
    store.upsert_job(job())
    result = store.mark_failed("4711", "alert JobFailed", at=500.0, notify_targets=0)
    assert result is not None and result.job.status == "failed" and result.job.ended_at == 500.0
    assert store.mark_failed("4711", "alert JobFailed", at=600.0) is None
    assert store.mark_failed("unknown", "alert JobFailed", at=600.0) is None
    assert [n.status for n in store.list_notifications("4711")] == ["skipped"]


def test_notification_attempts_are_recorded(store: JobStore, clock: Clock) -> None:
    store.upsert_job(job(status="failed"), notify_targets=2)
    (note,) = store.due_notifications(clock.now)
    store.finish_notification(
        note.id, ok=False, body="b", targets=2, error="refused", retry_at=clock.now + 30
    )
    assert store.due_notifications(clock.now) == []
    assert store.next_notification_due() == clock.now + 30
    clock.now += 31
    (again,) = store.due_notifications(clock.now)
    assert again.attempts == 1 and again.last_error == "refused"
    store.finish_notification(note.id, ok=True, body="text", targets=2, error=None, retry_at=None)
    (done,) = store.list_notifications("4711")
    assert (done.status, done.attempts, done.sent_at, done.body) == ("sent", 2, clock.now, "text")
    assert store.next_notification_due() is None


def test_each_notification_is_sent_by_one_replica(store: JobStore, store_url: str, clock: Clock) -> None:
    """API replicas on one store, each with its own connections, all finding the same due
    notification at once: exactly one claims it; a claim whose replica died is taken over after
    its lease, not before."""
    store.upsert_job(job(status="failed"), notify_targets=1)
    (note,) = store.due_notifications(clock.now)
    replicas = [JobStore(open_database(store_url), clock=clock) for _ in range(6)]
    barrier = threading.Barrier(len(replicas))

    def claim(replica: JobStore) -> bool:
        barrier.wait(timeout=30)
        return replica.claim_notification(note.id, clock.now, lease=300.0)

    try:
        with ThreadPoolExecutor(len(replicas)) as pool:
            won = list(pool.map(claim, replicas))
        assert won.count(True) == 1
        (claimed,) = store.list_notifications("4711")
        assert claimed.status == "sending"
        assert store.due_notifications(clock.now) == []  # nobody else sends it meanwhile
        clock.now += 299
        assert not replicas[0].claim_notification(note.id, clock.now, lease=300.0)
        clock.now += 2  # the lease is over and nothing was recorded: the claimer died mid-send
        (again,) = store.due_notifications(clock.now)
        assert again.id == note.id and replicas[1].claim_notification(note.id, clock.now, lease=300.0)
        replicas[1].finish_notification(note.id, ok=True, body="b", targets=1, error=None, retry_at=None)
        assert [n.status for n in store.list_notifications("4711")] == ["sent"]
        assert not replicas[2].claim_notification(note.id, clock.now + 1000, lease=300.0)
    finally:
        for replica in replicas:
            replica.close()


def test_list_filters_and_keyset_pages(store: JobStore, clock: Clock) -> None:
    for i in range(7):
        clock.now += 1
        store.upsert_job(
            job(
                f"j{i}",
                tenant="team-a" if i % 2 == 0 else "team-b",
                user=f"u{i % 3}",
                status="failed" if i == 3 else "running",
                started_at=100.0 + i,
                ended_at=200.0 + i if i < 3 else None,
            )
        )
    everyone = store.list_jobs(limit=100)
    assert [j.job_id for j in everyone] == ["j6", "j5", "j4", "j3", "j2", "j1", "j0"]
    pages: list[str] = []
    after = None
    while True:
        page = store.list_jobs(limit=3, after=after)
        pages.extend(j.job_id for j in page)
        if len(page) < 3:
            break
        after = (page[-1].created_at, page[-1].job_id)
    assert pages == [j.job_id for j in everyone]
    assert {j.job_id for j in store.list_jobs(tenant="team-b")} == {"j1", "j3", "j5"}
    assert [j.job_id for j in store.list_jobs(status="failed")] == ["j3"]
    assert {j.job_id for j in store.list_jobs(user="u0")} == {"j0", "j3", "j6"}
    # Jobs that ended before 201.5 are outside a window starting then.
    assert {j.job_id for j in store.list_jobs(since=201.5)} == {"j2", "j3", "j4", "j5", "j6"}
    assert {j.job_id for j in store.list_jobs(until=101.5)} == {"j0", "j1"}


def test_jobs_on_host_at_a_time(store: JobStore) -> None:
    store.upsert_job(job("a", nodes=["node1"], gpus=[], started_at=100.0, ended_at=200.0))
    store.upsert_job(job("b", nodes=[], gpus=[{"host": "node1", "gpu": 2}], started_at=150.0))
    store.upsert_job(job("c", nodes=["node10"], gpus=[], started_at=0.0))
    assert {j.job_id for j in store.jobs_on_host("node1", 160.0)} == {"a", "b"}
    assert {j.job_id for j in store.jobs_on_host("node1", 250.0)} == {"b"}
    assert store.jobs_on_host("node1", 50.0) == []


def alert(fp: str, status: str = "firing", jobs: list[str] | None = None, **labels: str) -> IncomingAlert:
    return IncomingAlert(
        fingerprint=fp,
        alertname=labels.get("alertname", "GPUXidError"),
        status=status,
        labels={"alertname": "GPUXidError", **labels},
        annotations={"summary": "s"},
        starts_at=1000.0,
        ends_at=None if status == "firing" else 2000.0,
        group_key="g",
        job_ids=jobs or [],
    )


def test_alerts_are_upserted_and_mapped(store: JobStore) -> None:
    first = store.record_alerts([alert("f1", jobs=["4711"]), alert("f2")])
    again = store.record_alerts([alert("f1", status="resolved", jobs=["4711", "4712"])])
    assert again[0] == first[0]
    alerts = store.list_alerts()
    assert [(a.fingerprint, a.status) for a in alerts] == [("f2", "firing"), ("f1", "resolved")]
    resolved = alerts[1]
    assert resolved.ends_at == 2000.0 and resolved.job_ids == ["4711", "4712"]
    assert [a.fingerprint for a in store.list_alerts(job_id="4712")] == ["f1"]
    assert [a.fingerprint for a in store.list_alerts(status="firing")] == ["f2"]
    assert [a.fingerprint for a in store.list_alerts(limit=1, before_id=alerts[0].id)] == ["f1"]


def test_a_failing_batch_leaves_nothing_behind(store: JobStore) -> None:
    broken = IncomingAlert(
        fingerprint="f9",
        alertname="X",
        status="firing",
        labels={"a": object()},  # type: ignore[dict-item]
        annotations={},
        starts_at=1.0,
        ends_at=None,
        group_key=None,
        job_ids=[],
    )
    with pytest.raises(TypeError):
        store.record_alerts([alert("f8", jobs=["4711"]), broken])
    assert store.list_alerts() == []
    assert store.list_alerts(job_id="4711") == []
    # The store keeps working after the rolled-back transaction.
    store.record_alerts([alert("f8", jobs=["4711"])])
    assert [a.fingerprint for a in store.list_alerts(job_id="4711")] == ["f8"]


def test_delete_removes_job_and_its_rows(store: JobStore) -> None:
    store.upsert_job(job(status="failed"), notify_targets=1)
    store.record_alerts([alert("f1", jobs=["4711"])])
    assert store.delete_job("4711")
    assert store.get_job("4711") is None and store.list_notifications("4711") == []
    assert store.list_alerts(job_id="4711") == []
    assert not store.delete_job("4711")


def test_unreachable_postgres_is_a_dependency_error() -> None:
    from tests.support import free_port

    store = JobStore(open_database(f"postgresql://postgres@127.0.0.1:{free_port()}/none"))
    with pytest.raises(DependencyUnavailable) as info:
        store.ping()
    assert info.value.dependency == "store"


def test_the_app_on_postgresql(make_client: Callable[..., TestClient], postgres_url: str) -> None:
    client = make_client(settings={"store_url": postgres_url})
    headers = {"Authorization": f"Bearer {TEAM_A}"}
    body = {"name": "pg", "status": "running", "nodes": ["node1"], "started_at": "2026-01-01T00:00:00Z"}
    scheduler = {"Authorization": f"Bearer {SCHEDULER}"}
    body = {**body, "tenant": "team-a"}
    assert client.put("/v1/jobs/pg-1", json=body, headers=scheduler).status_code == 201
    assert (
        client.put("/v1/jobs/pg-1", json={**body, "status": "failed"}, headers=scheduler).status_code == 200
    )
    assert [j["job_id"] for j in client.get("/v1/jobs", headers=headers).json()["jobs"]] == ["pg-1"]
    (note,) = client.get("/v1/jobs/pg-1/notifications", headers=headers).json()["notifications"]
    assert note["failure_seq"] == 1 and note["status"] == "skipped"
    assert client.get("/readyz").json()["checks"]["store"] == "ok"
