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
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class PermanentRejection(Exception):
    """The API refused a record for a reason that retrying cannot fix (a 4xx)."""


class TransientFailure(Exception):
    """The API could not take a record now (down, timed out, 5xx): delivery stops here."""


class JobNotReady(Exception):
    """This job's record cannot be completed yet (still COMPLETING): its later records wait,
    other jobs' records go on."""


Send = Callable[[dict[str, Any]], None]


class DeliveryReport:
    """What a delivery round did. A plain class, not a dataclass: the hooks import this module,
    and dataclasses (with the inspect module it loads) costs each hook run ~5 ms."""

    __slots__ = ("delivered", "error", "handed_over", "pending", "rejected")

    def __init__(self, delivered: int = 0, rejected: int = 0, pending: int = 0,
                 error: str | None = None, handed_over: bool = False) -> None:
        self.delivered = delivered
        self.rejected = rejected
        self.pending = pending
        self.error = error
        # Another delivery process was running: it takes the pending records, this one did nothing.
        self.handed_over = handed_over

    def __repr__(self) -> str:
        return (f"DeliveryReport(delivered={self.delivered}, rejected={self.rejected}, "
                f"pending={self.pending}, error={self.error!r}, handed_over={self.handed_over})")


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

    def _lock_file(self, name: str) -> int:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(self.directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def claim_delivery(self) -> int | None:
        """``.flusher``, the lock the one delivery process of a spool holds for its whole run,
        locked and open (the caller closes it, or hands it to the process it starts), or None
        when a delivery process holds it. One process, however many jobs start and end
        meanwhile: each job's hooks would otherwise leave one polling scontrol for its end."""
        fd = self._lock_file(".flusher")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def is_delivery_lock(self, fd: int) -> bool:
        """Whether ``fd`` is this spool's ``.flusher`` (a lock handed over by a hook)."""
        try:
            held, ours = os.fstat(fd), os.stat(self.directory / ".flusher", follow_symlinks=False)
        except OSError:
            return False
        return (held.st_dev, held.st_ino) == (ours.st_dev, ours.st_ino)

    @contextmanager
    def sole_deliverer(self, held: int | None = None) -> Iterator[bool]:
        """True while this process is the spool's one delivery process: ``held`` (the lock a
        hook handed over) or the lock claimed now; released on the way out."""
        fd = held if held is not None else self.claim_delivery()
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)

    @contextmanager
    def _locked(self, deadline: float) -> Iterator[bool]:
        fd = self._lock_file(".lock")
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
        import logging  # the flush's path only: the hooks that spool do not log through logging

        logging.getLogger(__name__).error("job record %s rejected by the API: %s (kept in %s)",
                                          path.name, reason, rejected)
