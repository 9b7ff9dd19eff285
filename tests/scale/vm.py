"""A real single-node VictoriaMetrics (Debian's ``victoria-metrics``) for the tests: on a free port,
with ``-search.latencyOffset=0s`` so that the newest samples are answered at once, fed through its
own import API or by a Prometheus' remote_write, flushed with ``/internal/force_flush`` before the
test reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import Proc, free_port, require_binary, wait_for_http


@dataclass(frozen=True)
class RunningVM:
    url: str
    proc: Proc

    def import_text(self, lines: Iterable[str], batch: int = 50_000) -> None:
        """Samples in the Prometheus text format with millisecond timestamps."""
        chunk: list[str] = []
        with httpx.Client(timeout=120) as client:
            for line in lines:
                chunk.append(line)
                if len(chunk) >= batch:
                    client.post(f"{self.url}/api/v1/import/prometheus", content="\n".join(chunk) + "\n"
                                ).raise_for_status()
                    chunk = []
            if chunk:
                client.post(f"{self.url}/api/v1/import/prometheus", content="\n".join(chunk) + "\n"
                            ).raise_for_status()
        self.flush()

    def flush(self) -> None:
        httpx.get(f"{self.url}/internal/force_flush", timeout=60).raise_for_status()


@contextmanager
def run_victoria_metrics(workdir: Path) -> Iterator[RunningVM]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = Proc([
        require_binary("victoria-metrics"), f"-storageDataPath={workdir / 'vm-data'}",
        f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y", "-search.latencyOffset=0s",
        "-loggerLevel=WARN",
    ], workdir / "victoria-metrics.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", timeout=60, proc=proc)
        yield RunningVM(url, proc)
    finally:
        proc.stop()
