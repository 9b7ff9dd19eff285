"""The diagnosis reads kernel events of the job's hosts only: on a large cluster the other hosts'
XIDs in the same hours must not crowd the job's out of the bounded event search."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from api.logsource import SQLiteLogSource
from api.logsource_es import build_query
from api.prometheus import PrometheusClient
from api.summary import MAX_EVENTS, JobFacts
from jobsight.logstore import LogRecord, SQLiteLogStore

START = 1_800_000_000.0


def xid(host: str, at: float, n: int) -> LogRecord:
    return LogRecord(
        timestamp=at, host=host, job_id=None, path="kmsg", offset=n, source="kmsg", event_kind="gpu_xid",
        event_severity="critical", event_fields={"xid": "79", "pci": "0000:69:00"}, record_id=f"x-{host}-{n}",
        message="NVRM: Xid (PCI:0000:69:00): 79, pid=1, name=python, GPU has fallen off the bus.",
    )


def test_the_jobs_host_event_is_found_among_more_than_max_events_of_other_hosts(tmp_path: Path) -> None:
    store = SQLiteLogStore(tmp_path / "logs")
    try:
        # Other hosts' XIDs fill the first hour; the job's host has one after them.
        store.write([xid(f"h{1000 + i % 200:04d}", START + i, i) for i in range(MAX_EVENTS + 200)])
        store.write([xid("h0001", START + 3000, 0)])
    finally:
        store.close()
    with httpx.Client() as client, ThreadPoolExecutor(2) as pool:
        unused = PrometheusClient("http://127.0.0.1:9", client)  # events only: Prometheus is not asked
        facts = JobFacts(unused, SQLiteLogSource(tmp_path / "logs"), pool)
        events = facts.log_events("train-7", {"h0000", "h0001"}, START, START + 3600)
        assert [(e.host, e.timestamp) for e in events] == [("h0001", START + 3000)]
        # A job without known hosts reads no host events at all.
        assert facts.log_events("train-7", set(), START, START + 3600) == []


def test_elasticsearch_queries_carry_the_hosts() -> None:
    query = build_query(job_id=None, q=None, kind="gpu_xid", rank=None, since=None, until=None,
                        events_only=False, hosts=["h0000", "h0001"])
    assert {"terms": {"host.name": ["h0000", "h0001"]}} in query["bool"]["filter"]
    unbounded = build_query(job_id=None, q=None, kind="gpu_xid", rank=None, since=None, until=None,
                            events_only=False)
    assert not any("terms" in f for f in unbounded["bool"]["filter"])
