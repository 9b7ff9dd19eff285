"""A durable, ordered queue of job records the controller hooks could not deliver yet.

Each record is one file, named so that names sort in the order they were written
(``<ns timestamp>-<pid>-<job>-<state>.json``), written to a dot-file, fsync'd and renamed in, so a
crash leaves either the whole record or none. Delivery runs under an exclusive lock (a hook and
``jobsight slurm flush`` never deliver the same file twice at once), in order, and stops at the first
record the API could not take for a passing reason (down, 5xx, timeout): a job's ``running`` never
lands after its ``failed``. A record the API refuses for good (4xx) is moved to ``rejected/`` with
the reason, so it is kept for a person but no longer blocks the queue. A record's file is removed
only after the API acknowledged it: each job state is delivered once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class PermanentRejection(Exception):
    """The API refused a record for a reason that retrying cannot fix (a 4xx)."""


class TransientFailure(Exception):
    """The API could not take a record now (down, timed out, 5xx): delivery stops here."""


class JobNotReady(Exception):
    """This job's record cannot be completed yet (still COMPLETING): its later records wait,
    other jobs' records go on."""


Send = Callable[[dict[str, Any]], None]


@dataclass
class DeliveryReport:
    delivered: int = 0
    rejected: int = 0
    pending: int = 0
    error: str | None = None


class Spool:
    def __init__(self, directory: Path, clock: Callable[[], int] = time.time_ns) -> None:
        self.directory = directory
        self.clock = clock

    def put(self, job_id: str, state: str, body: dict[str, Any],
            resolve: dict[str, Any] | None = None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{self.clock():020d}-{os.getpid()}-{job_id}-{state}.json"
        tmp = self.directory / f".{name}"
        payload = json.dumps(
            {"job_id": job_id, "state": state, "body": body, "resolve": resolve or {}}, sort_keys=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / name)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self.directory / name

    def pending(self) -> list[Path]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [self.directory / n for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]

    @contextmanager
    def _locked(self, deadline: float) -> Iterator[bool]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.01)
            yield True
        finally:
            os.close(fd)

    def deliver(self, send: Send, deadline: float) -> DeliveryReport:
        """Send every pending record in order until one fails for a passing reason or time is up."""
        report = DeliveryReport()
        with self._locked(deadline) as got_lock:
            if not got_lock:
                report.pending = len(self.pending())
                report.error = "another delivery holds the spool lock"
                return report
            queue = self.pending()
            waiting: set[str] = set()
            for index, path in enumerate(queue):
                if time.monotonic() >= deadline:
                    report.pending += len(queue) - index
                    report.error = "out of time"
                    break
                job_id = path.name.split("-", 2)[2].rsplit("-", 1)[0]
                if job_id in waiting:
                    report.pending += 1
                    continue
                try:
                    record = json.loads(path.read_text(encoding="utf-8"))
                    send(record)
                except JobNotReady as exc:
                    waiting.add(job_id)
                    report.pending += 1
                    report.error = str(exc)
                    continue
                except TransientFailure as exc:
                    report.pending += len(queue) - index
                    report.error = str(exc)
                    break
                except (PermanentRejection, ValueError, KeyError, TypeError) as exc:
                    self._reject(path, str(exc))
                    report.rejected += 1
                    continue
                path.unlink()
                report.delivered += 1
        return report

    def _reject(self, path: Path, reason: str) -> None:
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True, mode=0o700)
        os.replace(path, rejected / path.name)
        (rejected / f"{path.name}.reason").write_text(reason + "\n", encoding="utf-8")
        log.error("job record %s rejected by the API: %s (kept in %s)", path.name, reason, rejected)
