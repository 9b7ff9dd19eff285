"""Helpers the exporter benchmarks share: free ports, a process's CPU time from /proc/<pid>/stat,
percentiles, timed scrapes, and an exporter process to scrape."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``: fields 14 and 15 of /proc/<pid>/stat, counted after the ")" that
    ends the command name (which may contain spaces)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values``: the nearest rank, no interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def timed_get(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, float]:
    """One scrape: the response and its wall time in seconds (to the end of the body)."""
    start = time.perf_counter()
    response = client.get(url, headers=headers)
    return response, time.perf_counter() - start


@dataclass
class ScrapeTarget:
    """An exporter process a benchmark starts and scrapes at ``url``."""

    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def wait_ready(self, client: httpx.Client, headers: dict[str, str], timeout: float = 30.0) -> None:
        """Until the process answers 200; SystemExit if it exits or does not answer in time."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}: {' '.join(self.argv)}")
            try:
                if client.get(self.url, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not answer on {self.url} within {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited 10 s later."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
