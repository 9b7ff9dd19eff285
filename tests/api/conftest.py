"""Fixtures of the API suite: a real Prometheus over generated TSDB blocks, a real PostgreSQL in a
temporary directory, the embedded log store with the demo records, and app clients."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import ApiSettings
from tests.api.promdata import RunningPrometheus, run_prometheus
from tests.api.scenario import Scenario, build_series, make_scenario, write_logs
from tests.support import Proc, free_port, wait_until

ADMIN = "admin-token-0123456789"
TEAM_A = "team-a-token-0123456789"
TEAM_B = "team-b-token-0123456789"
SCHEDULER = "scheduler-token-0123456789"
WEBHOOK = "webhook-token-0123456789"
METRICS = "metrics-token-0123456789"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    return make_scenario(time.time())


@pytest.fixture(scope="session")
def prometheus(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPrometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    tsdb = build_series(scenario).write_blocks(workdir)
    with run_prometheus(tsdb, workdir) as running:
        yield running


@pytest.fixture(scope="session")
def log_store_dir(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("logstore")
    write_logs(path, scenario)
    return path


def base_settings(
    tmp_path: Path, prometheus_url: str, log_store: Path | None, extra: dict[str, Any] | None = None
) -> ApiSettings:
    values: dict[str, Any] = {
        "store_url": f"sqlite:///{tmp_path / 'api.db'}",
        "prometheus_url": prometheus_url,
        "log_store": str(log_store) if log_store is not None else None,
        "grafana_url": "http://grafana.example:3000",
        "alertmanager_url": "http://alertmanager.example:9093",
        "public_url": "http://api.example:8000",
        "tokens": [
            # The older form of the admin role (``admin: true``) is still read.
            {"token": ADMIN, "tenant": "ops", "admin": True},
            {"token": TEAM_A, "tenant": "team-a"},
            {"token": TEAM_B, "tenant": "team-b", "role": "tenant"},
            {"token": SCHEDULER, "tenant": "slurm", "role": "scheduler"},
        ],
        "webhook_token": WEBHOOK,
        "metrics_token": METRICS,
        "dependency_timeout_seconds": 5.0,
    }
    values.update(extra or {})
    return ApiSettings.model_validate(values)


@pytest.fixture
def make_client(
    tmp_path: Path, prometheus: RunningPrometheus, log_store_dir: Path
) -> Iterator[Callable[..., TestClient]]:
    """Build an app (overrides as create_app keyword arguments, settings overrides as ``settings=``)."""
    clients: list[TestClient] = []

    def _make(settings: dict[str, Any] | None = None, **kwargs: Any) -> TestClient:
        config = base_settings(tmp_path, prometheus.url, log_store_dir, settings)
        kwargs.setdefault("environ", {})
        client = TestClient(create_app(config, **kwargs), raise_server_exceptions=True)
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def register_demo(client: TestClient, s: Scenario) -> None:
    """Register the scenario's jobs: demo-fail (team-a, failed) and ok-job (team-b, succeeded)."""
    demo = {
        "name": "llama-pretrain",
        "user": "alice",
        "tenant": "team-a",
        "scheduler": "slurm",
        "nodes": ["node1", "node2"],
        "gpus": [{"host": h, "gpu": g} for h in ("node1", "node2") for g in range(4)],
        "started_at": s.demo_start,
        "ended_at": s.demo_end,
        "status": "failed",
        "exit_code": 1,
    }
    response = client.put("/v1/jobs/demo-fail", json=demo, headers=auth(ADMIN))
    assert response.status_code in (200, 201), response.text
    ok = {
        "name": "finetune",
        "user": "bob",
        "tenant": "team-b",
        "nodes": ["node3"],
        "started_at": s.base,
        "ended_at": s.ok_end,
        "status": "succeeded",
        "exit_code": 0,
    }
    response = client.put("/v1/jobs/ok-job", json=ok, headers=auth(ADMIN))
    assert response.status_code in (200, 201), response.text


# -- PostgreSQL ---------------------------------------------------------------------------------


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server in a temporary directory; yields an admin URL (trust auth, loopback)."""
    if not (PG_BIN / "initdb").exists():
        raise AssertionError("PostgreSQL 15 server binaries are missing; `make test` installs postgresql")
    # Not under pytest's root-only temp tree: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="jobsight-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chmod(root, 0o755)
        for path in (root, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    proc = Proc(
        _as_postgres(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]
        ),
        root / "postgres.log",
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def ready() -> bool:
        if not proc.alive():
            raise AssertionError(f"postgres exited:\n{proc.output()}")
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    try:
        wait_until(ready, timeout=60, message="PostgreSQL to accept connections")
        yield url
    finally:
        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
        proc.kill(signal.SIGINT)
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh database for one test."""
    name = f"t_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"
