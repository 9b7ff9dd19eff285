"""An in-process collector over a real SQLite store and real files, stepped by the test; and the
collector as a real process (:class:`CollectorProcess`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from collectors.logs.collector import LogCollector
from collectors.logs.config import CollectorConfig
from collectors.logs.es import ElasticsearchSink
from collectors.logs.rules import RuleSet
from collectors.logs.stats import LogStats
from jobsight.config import parse_model
from jobsight.logstore import LogRecord, SQLiteLogStore
from tests.support import Proc, free_port, jobsight_command, wait_until

FAST = {"poll_interval": 0.01, "glob_interval": 0.05, "batch": {"max_wait": 0.01}}


def file_source(paths: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "file", "paths": paths, "rotate_wait": 0.0,
            "multiline": {"flush_timeout": 0.1}, **extra}


class Harness:
    def __init__(self, tmp_path: Path, sources: list[dict[str, Any]], *, es: ElasticsearchSink | None = None,
                 **settings: Any) -> None:
        self.store_dir = tmp_path / "store"
        raw = {**FAST, "sources": sources, "store": {"path": str(self.store_dir)}, **settings}
        self.config = parse_model(CollectorConfig, raw, "test config")
        self.store = SQLiteLogStore(self.store_dir)
        self.stats = LogStats()
        self.es = es
        self.collector = self._new()

    def _new(self) -> LogCollector:
        return LogCollector(self.config, self.store, host="node1", rules=RuleSet.build(), stats=self.stats,
                            es=self.es)

    def restart(self) -> None:
        self.collector.close()
        self.collector = self._new()

    def pump_until(self, condition: Callable[[], object], timeout: float = 15.0,
                   message: str = "condition") -> None:
        def step() -> object:
            self.collector.step()
            return condition()

        wait_until(step, timeout=timeout, interval=0.0, message=message)

    def settle(self, rounds: int = 3) -> None:
        """Step until nothing is read, pending or uncommitted for a few rounds in a row."""
        quiet = [0]

        def idle() -> bool:
            read = self.collector.step()
            busy = read or self.collector._batch.records or self.collector._has_checkpoint_changes()
            quiet[0] = 0 if busy else quiet[0] + 1
            return quiet[0] >= rounds

        wait_until(idle, timeout=20.0, interval=0.02, message="collector to settle")

    def records(self, job_id: str | None = None) -> list[LogRecord]:
        return sorted(self.store.iter_all(job_id=job_id), key=lambda r: (r.path, r.offset))

    def messages(self) -> list[str]:
        return [r.message for r in self.records()]

    def close(self) -> None:
        self.collector.close()
        self.store.close()


class CollectorProcess:
    """`jobsight collector logs` as a real process over a YAML config written from ``settings``."""

    def __init__(self, spawn: Callable[..., Proc], workdir: Path, sources: list[dict[str, Any]], *,
                 store: Path | None = None, name: str = "collector", **settings: Any) -> None:
        self.port = free_port()
        self.store = store or workdir / "store"
        self.url = f"http://127.0.0.1:{self.port}"
        raw = {"poll_interval": 0.05, "glob_interval": 0.1, "batch": {"max_wait": 0.05}, "sources": sources,
               "store": {"path": str(self.store)}, "listen": f"127.0.0.1:{self.port}", **settings}
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(raw))
        self.proc = spawn(jobsight_command("collector", "logs", "--config", str(self.config)), name=name)

    def wait_ready(self) -> None:
        def up() -> bool:
            if not self.proc.alive():
                code = self.proc.popen.returncode
                raise AssertionError(f"collector exited with {code}:\n{self.proc.output()}")
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503)

        wait_until(up, timeout=30, interval=0.1, message="collector /healthz")

    def healthz(self) -> httpx.Response:
        return httpx.get(f"{self.url}/healthz", timeout=5)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def sample(self, name: str, **labels: str) -> float | None:
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None

    def records(self, job_id: str | None = None) -> list[LogRecord]:
        if not (self.store / "logs.sqlite3").exists():
            return []
        reader = SQLiteLogStore(self.store, read_only=True)
        try:
            return list(reader.iter_all(job_id=job_id))
        finally:
            reader.close()

    def messages(self) -> list[str]:
        return [r.message for r in self.records()]
