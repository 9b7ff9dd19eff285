"""A real ``jobsight api`` process for the page tests: the suite's Prometheus over generated
series, a log store with the scenario's records plus hostile ones, the suite's tokens, a signing
key, and a file notification target."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from jobsight.logstore import LogRecord, SQLiteLogStore
from tests.api.conftest import ADMIN, TEAM_A, TEAM_B, auth
from tests.api.live import live_settings
from tests.api.promdata import RunningPrometheus
from tests.api.scenario import TRAIN_JOB, Scenario, demo_log_records
from tests.support import Proc, free_port, jobsight_command, wait_for_http, wait_until

SIGNING_KEY = "pages-test-signing-key-0123456789abcdef"
# What an attacker puts in a job name, a log line and an event field: it must stay text.
EVIL = '<script>window.__pwned=1;alert("x")</script>"><img src=x onerror="window.__pwned=2;alert(1)">'
EVIL_JOB = "evil-1"
LONG_JOB = "long-1"  # 150 log lines, two of three on node1: pages of the log viewer


def long_records(s: Scenario) -> list[LogRecord]:
    return [
        LogRecord(timestamp=s.base + 10 + i, host="node1" if i % 3 else "node2", job_id=LONG_JOB,
                  path=f"/logs/long/{'node1' if i % 3 else 'node2'}.log", offset=i * 100,
                  message=f"step {i} loss {2.0 - i / 100:.2f}", rank=0 if i % 3 else 4, record_id=f"long-{i}")
        for i in range(150)
    ]


@dataclass(frozen=True)
class PagesApi:
    url: str
    proc: Proc
    notes: Path
    scenario: Scenario


def evil_records(s: Scenario) -> list[LogRecord]:
    return [
        LogRecord(timestamp=s.base + 120, host="node1", job_id=EVIL_JOB, path="/logs/evil/rank0.log",
                  offset=0, message=f"step 1 {EVIL}", rank=0, record_id="evil-line"),
        LogRecord(timestamp=s.base + 180, host="node1", job_id=EVIL_JOB, path="/logs/evil/rank0.log",
                  offset=100, message=f"NCCL WARN {EVIL}", rank=0, event_kind="nccl_error",
                  event_severity="error", event_fields={"detail": EVIL}, record_id="evil-event"),
    ]


@pytest.fixture(scope="module")
def pages_api(scenario: Scenario, prometheus: RunningPrometheus,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[PagesApi]:
    tmp = tmp_path_factory.mktemp("pages-api")
    store_dir = tmp / "logstore"
    store = SQLiteLogStore(store_dir)
    try:
        store.write(demo_log_records(scenario) + evil_records(scenario) + long_records(scenario))
    finally:
        store.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    notes = tmp / "notifications.jsonl"
    settings = live_settings(tmp, prometheus.url, {
        "log_store": str(store_dir),
        "public_url": url,
        "grafana_url": "http://grafana.example:3000",
        "pages": {"signing_key": SIGNING_KEY, "link_expiry_seconds": 3600},
        "notify": {"team-a": [f"file://{notes}"]},
    })
    config = tmp / "api.yaml"
    config.write_text(yaml.safe_dump(settings))
    config.chmod(0o600)
    proc = Proc(jobsight_command("api", "--config", str(config), "--listen", f"127.0.0.1:{port}"),
                tmp / "api.log")
    try:
        wait_for_http(f"{url}/healthz", timeout=60, proc=proc)
        _register(url, scenario)
        yield PagesApi(url, proc, notes, scenario)
    finally:
        proc.stop()


def _register(url: str, s: Scenario) -> None:
    jobs = {
        "demo-fail": {
            "name": "llama-pretrain", "user": "alice", "tenant": "team-a", "scheduler": "slurm",
            "nodes": ["node1", "node2"],
            "gpus": [{"host": h, "gpu": g} for h in ("node1", "node2") for g in range(4)],
            "started_at": s.demo_start, "ended_at": s.demo_end, "status": "failed", "exit_code": 1,
        },
        "ok-job": {
            "name": "finetune", "user": "bob", "tenant": "team-b", "nodes": ["node3"],
            "started_at": s.base, "ended_at": s.ok_end, "status": "succeeded", "exit_code": 0,
        },
        LONG_JOB: {
            "name": "long-logs", "user": "alice", "tenant": "team-a", "nodes": ["node1", "node2"],
            "started_at": s.base, "ended_at": s.base + 300, "status": "succeeded", "exit_code": 0,
        },
        TRAIN_JOB: {
            "name": "train-hang", "user": "alice", "tenant": "team-a", "scheduler": "slurm",
            "nodes": ["node1", "node2"], "started_at": s.train_start, "status": "running",
        },
        EVIL_JOB: {
            "name": EVIL, "user": "mallory", "tenant": "team-a", "nodes": ["node1"],
            "started_at": s.base, "ended_at": s.base + 600, "status": "failed", "exit_code": 2,
            "reason": EVIL,
        },
    }
    with httpx.Client(timeout=30) as client:
        for job_id, body in jobs.items():
            response = client.put(f"{url}/v1/jobs/{job_id}", json=body, headers=auth(ADMIN))
            assert response.status_code in (200, 201), response.text


def login(client: httpx.Client, url: str, token: str) -> httpx.Response:
    return client.post(f"{url}/login", data={"token": token}, follow_redirects=False)


def signed_link(api: PagesApi, job_id: str) -> str:
    """The page link of ``job_id`` as the failure notification carries it."""
    import json

    def link() -> str | None:
        for line in api.notes.read_text().splitlines():
            note = json.loads(line)
            if f"job {job_id} failed" in note["title"]:
                prefix = f"{api.url}/jobs/{job_id}?sig="
                return str(next(w for w in note["body"].split() if w.startswith(prefix)))
        return None

    return wait_until(link, timeout=60, interval=0.2, message=f"the notification of {job_id}")


__all__ = ["ADMIN", "EVIL", "EVIL_JOB", "TEAM_A", "TEAM_B", "TRAIN_JOB", "PagesApi", "login", "signed_link"]
