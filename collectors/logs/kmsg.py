"""Kernel messages from ``/dev/kmsg`` (or, for tests and replays, a file in the same format).

A record is ``<prio>,<seq>,<ts_usec>,<flags>[,...];<message>`` followed by continuation lines
that start with a space (``SUBSYSTEM=``, ``DEVICE=``). Each ``read()`` of the device returns one
record; ``EPIPE`` means the ring buffer overwrote records we had not read yet (counted as lost,
the next read continues with the oldest available one). The 64-bit sequence number is the
checkpoint and the record offset, per boot: the boot id is part of the identity because sequence
numbers restart at every boot. ``ts_usec`` is monotonic time since boot, turned into wall time
with the current offset between the two clocks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import time
from collections.abc import Callable

from collectors.logs.config import KmsgSource
from collectors.logs.jobtime import JobTimeline
from collectors.logs.multiline import Multiline
from collectors.logs.parsing import Line, clean_text
from collectors.logs.pipeline import Pipeline, RecordContext
from collectors.logs.rules import RuleSet
from collectors.logs.stats import LogStats
from jobsight.logstore import LogRecord

log = logging.getLogger(__name__)

_LEVELS = ("critical", "critical", "critical", "error", "warning", "info", "info", "debug")
_MAX_RECORDS_PER_POLL = 10_000


class _NoDecoder:
    def decode(self, raw: bytes, offset: int, end: int, truncated: bool = False) -> Line | None:
        raise NotImplementedError  # kmsg lines are built by KmsgReader, never decoded from bytes


def parse_record(raw: bytes, boot_wall: float) -> tuple[int, Line] | None:
    """One kmsg record → (seq, line); None when the header is malformed."""
    header, sep, rest = raw.partition(b";")
    if not sep:
        return None
    fields = header.split(b",")
    try:
        prio = int(fields[0])
        seq = int(fields[1])
        ts_usec = int(fields[2])
    except (ValueError, IndexError):
        return None
    message = rest.split(b"\n", 1)[0]
    text = clean_text(message)
    return seq, Line(seq, seq + 1, text, timestamp=boot_wall + ts_usec / 1e6, level=_LEVELS[prio & 7])


class KmsgReader:
    def __init__(
        self,
        name: str,
        config: KmsgSource,
        *,
        host: str,
        rules: RuleSet,
        stats: LogStats,
        checkpoints: dict[str, str],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.stats = stats
        self.clock = clock
        self.monotonic = monotonic
        self.key = f"kmsg:{name}"
        self.boot_id = self._boot_id()
        self.next_seq = 0
        # Whether next_seq is a position we hold (a checkpoint of this boot, or a record read):
        # only then is a gap before the next record a loss.
        self.positioned = False
        saved = checkpoints.get(self.key)
        if saved is not None:
            try:
                value = json.loads(saved)
                if value.get("boot_id") == self.boot_id:
                    self.next_seq = int(value["seq"])
                    self.positioned = True
            except (ValueError, KeyError, TypeError):
                log.warning("%s: ignoring unreadable checkpoint %r", name, saved[:80])
        self.committed_seq = self.next_seq
        # With a job map, each record gets the job that held the node at the record's own time;
        # ring-buffer records older than the collector's start get none (collectors/logs/jobtime.py).
        self.timeline = JobTimeline(config.job_map_dir, clock=clock) \
            if config.job_id is None and config.job_map_dir else None
        ml = config.multiline
        ctx = RecordContext(host=config.host or host, path="kmsg", identity=f"kmsg-{self.boot_id}",
                            source="kmsg", job_id=config.job_id,
                            job_at=self.timeline.job_at if self.timeline is not None else None)
        self.pipeline = Pipeline(
            ctx, _NoDecoder(),
            Multiline(enabled=ml.enabled, max_lines=ml.max_lines, max_bytes=ml.max_bytes,
                      flush_timeout=ml.flush_timeout, extra_patterns=ml.continuation_patterns,
                      clock=monotonic),
            rules, clock=clock,
        )
        self.fd: int | None = None
        self.is_device = False
        self.file_pos = 0
        self.buf = b""
        self._at_eof = False
        self._warned = False

    def _boot_id(self) -> str:
        try:
            with open(self.config.boot_id_path, encoding="ascii", errors="replace") as fh:
                return fh.read(64).strip().replace("-", "")[:32] or "unknown"
        except OSError:
            return "unknown"

    def _open(self) -> bool:
        if self.fd is not None:
            return True
        try:
            self.fd = os.open(self.config.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.stats.add2(self.stats.read_errors, (self.name, "permission" if exc.errno in
                                                     (errno.EACCES, errno.EPERM) else "io"))
            if not self._warned:
                self._warned = True
                log.warning("%s: cannot open %s: %s (will retry)", self.name, self.config.path, exc.strerror)
            return False
        self.is_device = stat.S_ISCHR(os.fstat(self.fd).st_mode)
        self.stats.files_open[self.name] = 1
        return True

    def scan(self) -> list[LogRecord]:
        self._open()
        return []

    def poll(self, budget: int) -> tuple[list[LogRecord], int]:
        if not self._open():
            return [], 0
        assert self.fd is not None
        if self.timeline is not None:
            self.timeline.refresh()
        boot_wall = self.clock() - self.monotonic()
        raws = self._read_device(budget) if self.is_device else self._read_file(budget)
        out: list[LogRecord] = []
        nbytes = 0
        for raw in raws:
            nbytes += len(raw)
            parsed = parse_record(raw, boot_wall)
            if parsed is None:
                self.stats.add2(self.stats.read_errors, (self.name, "malformed"))
                continue
            seq, line = parsed
            if seq < self.next_seq:
                continue  # already delivered before a restart
            if self.positioned and seq > self.next_seq:
                # Overwritten in the ring buffer before we read them (EPIPE on the device).
                self.stats.add2(self.stats.lost, (self.name, "kmsg_overwritten"), seq - self.next_seq)
            self.positioned = True
            self.next_seq = seq + 1
            out.extend(self.pipeline.feed_line(line))
        if self._at_eof:
            out.extend(self.pipeline.expire())  # only once caught up: see FileTailer.poll
        return out, nbytes

    def _read_device(self, budget: int) -> list[bytes]:
        assert self.fd is not None
        out: list[bytes] = []
        total = 0
        self._at_eof = False
        while total < budget and len(out) < _MAX_RECORDS_PER_POLL:
            try:
                raw = os.read(self.fd, 8192)
            except BlockingIOError:
                self._at_eof = True
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    # Overwritten before we read them; the gap in sequence numbers says how many.
                    continue
                raise
            if not raw:
                break
            out.append(raw)
            total += len(raw)
        return out

    def _read_file(self, budget: int) -> list[bytes]:
        assert self.fd is not None
        requested = min(budget, 1024 * 1024)
        data = os.pread(self.fd, requested, self.file_pos)
        self._at_eof = len(data) < requested
        if not data:
            return []
        self.file_pos += len(data)
        data = self.buf + data
        # A record is complete when the next header (a line not starting with a space) begins.
        lines = data.split(b"\n")
        self.buf = lines.pop()
        out: list[bytes] = []
        current: list[bytes] = []
        for line in lines:
            if line.startswith(b" ") and current:
                current.append(line)
                continue
            if current:
                out.append(b"\n".join(current))
            current = [line] if line else []
        if current:
            out.append(b"\n".join(current))
        return out

    def pending_checkpoints(self) -> tuple[dict[str, str], list[str]]:
        resume = self.pipeline.pending_offset()
        seq = resume if resume is not None else self.next_seq
        if seq == self.committed_seq:
            return {}, []
        return {self.key: json.dumps({"boot_id": self.boot_id, "seq": seq})}, []

    def committed(self) -> None:
        resume = self.pipeline.pending_offset()
        self.committed_seq = resume if resume is not None else self.next_seq

    def backlog_bytes(self) -> int:
        return 0

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):  # already closed
                os.close(self.fd)
            self.fd = None
