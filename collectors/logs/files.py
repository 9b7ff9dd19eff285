"""Tailing files matched by globs, with checkpoints that survive restarts, rotation and truncation.

File identity is device + inode + a fingerprint (BLAKE2b) of the first bytes (up to 1024, fixed
when the file is first seen with content). The identity names the checkpoint and prefixes every
record id, so a line read twice gets the same id and is stored once.

- **Rename rotation** (``app.log`` → ``app.log.1``, new ``app.log``): the open descriptor keeps
  the old inode and is read to its end; a file that left the globs is finished once it has been
  at EOF for ``rotate_wait`` seconds. After a restart, a checkpoint whose file is no longer at its
  path is looked for by inode among its siblings (``app.log*``) and read to its end.
- **copytruncate** (``cp app.log app.log.1; truncate app.log``): the live file shrinks below the
  read position, or its first bytes change. The unread rest is then read from the copy (a
  sibling whose first bytes carry the same fingerprint) under the old identity, and the live file
  starts again at 0 under a new one. A copy matched by the globs is never read as a new file.
- **Truncation** without a copy: the rest is counted as lost (``jobsight_log_lost_total``).

Every file, including a rotated copy looked for by name, is opened through
:class:`~collectors.logs.safeopen.SafeOpener`: no symbolic links below the glob's fixed part, never
blocking, and the open descriptor (not the path) checked to be a regular file with one link. The
paths the globs return are in directories users write, so they are only ever ``lstat``-ed as a
hint; what is read is what the checked descriptor refers to.

Checkpoints hold the *resume offset*: the first byte not yet emitted as a record (the start of a
held partial line or multi-line block), so a restart never skips a line and never splits one.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from collectors.logs.config import CriSource, DockerSource, FileSource
from collectors.logs.jobtime import JobTimeline
from collectors.logs.multiline import Multiline
from collectors.logs.parsing import CriDecoder, DockerDecoder, TextDecoder, pod_labels
from collectors.logs.pipeline import Decoder, Pipeline, RecordContext
from collectors.logs.rules import RuleSet
from collectors.logs.safeopen import Refused, SafeOpener, glob_root
from collectors.logs.stats import LogStats
from jobsight.identity import JobAliasDir, PathJobMatcher
from jobsight.logstore import LogRecord

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 1024
READ_CHUNK = 256 * 1024
FORGET_AFTER_S = 24 * 3600.0  # a checkpoint whose file is gone this long is dropped
_ROTATED_SEPARATORS = (".", "-", "_")
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")


@dataclass
class Checkpoint:
    path: str
    dev: int
    ino: int
    fp: str
    fplen: int
    offset: int = 0
    skip: bool = False  # resume inside an over-long line: drop bytes up to the next newline
    done: bool = False  # the file was read to its end after it was rotated or truncated

    @property
    def identity(self) -> str:
        return f"{self.dev:x}-{self.ino:x}-{self.fp}"

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Checkpoint | None:
        try:
            value = json.loads(text)
            return cls(path=str(value["path"]), dev=int(value["dev"]), ino=int(value["ino"]),
                       fp=str(value["fp"]), fplen=int(value["fplen"]), offset=int(value["offset"]),
                       skip=bool(value.get("skip")), done=bool(value.get("done")))
        except (ValueError, KeyError, TypeError):
            return None


def fingerprint(fd: int, length: int) -> str | None:
    data = os.pread(fd, length, 0)
    if len(data) < length:
        return None
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def looks_binary(fd: int) -> bool:
    """More than 10 % NUL or other control bytes (not tab/CR/LF/ESC) in the first 4 KiB."""
    head = os.pread(fd, 4096, 0)
    if not head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 13, 27))
    return controls * 10 > len(head)


class Replaced(Exception):
    """The live file's first bytes are not the ones its identity was made from: it was truncated
    and written again (copytruncate) between two looks."""


class TrackedFile:
    """One open file being read under one identity (possibly a copy of the original)."""

    def __init__(self, ckpt: Checkpoint, fd: int, dev: int, ino: int, pipeline: Pipeline,
                 max_line_bytes: int, now: float) -> None:
        self.ckpt = ckpt
        self.fd = fd
        self.dev = dev
        self.ino = ino
        self.pipeline = pipeline
        self.max_line_bytes = max_line_bytes
        self.pos = ckpt.offset
        self.skipping = ckpt.skip
        self.buf = b""
        self.buf_start = self.pos
        self.rotated_at: float | None = None
        self.last_growth = now
        self.finished = False
        self.committed = (ckpt.offset, ckpt.skip, ckpt.done)
        self.dropped_bytes = 0

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def is_original(self) -> bool:
        return (self.dev, self.ino) == (self.ckpt.dev, self.ckpt.ino)

    def read(self, budget: int, now: float) -> tuple[list[LogRecord], int]:
        data = os.pread(self.fd, min(budget, READ_CHUNK), self.pos)
        if not data:
            return [], 0
        # Checked after the read: if the first bytes are still ours now, the data just read
        # followed them (a truncation always comes before the rewrite). One small pread per chunk.
        if self.is_original() and fingerprint(self.fd, self.ckpt.fplen) != self.ckpt.fp:
            raise Replaced()
        self.last_growth = now
        read_at = self.pos
        self.pos += len(data)
        if self.buf:
            base = self.buf_start
            data = self.buf + data
            self.buf = b""
        else:
            base = read_at
        lines = data.split(b"\n")
        tail = lines.pop()
        out: list[LogRecord] = []
        feed = self.pipeline.feed
        limit = self.max_line_bytes
        offset = base
        for raw in lines:
            end = offset + len(raw) + 1
            if self.skipping:
                # The rest of an over-long line whose first max_line_bytes were already emitted.
                self.skipping = False
                self.dropped_bytes += len(raw) + 1
            elif len(raw) > limit:
                out.extend(feed(raw[:limit], offset, end, True))
                self.dropped_bytes += len(raw) - limit
            else:
                out.extend(feed(raw, offset, end))
            offset = end
        if self.skipping:
            self.dropped_bytes += len(tail)
        elif len(tail) > limit:
            out.extend(feed(tail[:limit], offset, offset + limit, True))
            self.dropped_bytes += len(tail) - limit
            self.skipping = True
        elif tail:
            self.buf = tail
            self.buf_start = offset
        return out, self.pos - read_at

    def finish(self) -> list[LogRecord]:
        """The file has ended: emit the unterminated last line and every held block."""
        out: list[LogRecord] = []
        if self.buf:
            out.extend(self.pipeline.feed(self.buf, self.buf_start, self.pos))
            self.buf = b""
        self.skipping = False
        out.extend(self.pipeline.finish(self.pos))
        self.finished = True
        return out

    def resume(self) -> tuple[int, bool]:
        held = self.pipeline.pending_offset()
        if held is not None:
            return held, False
        if self.buf:
            return self.buf_start, False
        return self.pos, self.skipping

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone; nothing to release
            os.close(self.fd)


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission"
    if exc.errno == errno.ENOENT:
        return "missing"
    return "io"


class FileTailer:
    """One configured source of type file, cri or docker."""

    def __init__(
        self,
        name: str,
        config: FileSource | CriSource | DockerSource,
        *,
        host: str,
        rules: RuleSet,
        stats: LogStats,
        checkpoints: dict[str, str],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        forget_after: float = FORGET_AFTER_S,
    ) -> None:
        self.name = name
        self.config = config
        self.kind = config.type
        self.host = config.host or host
        self.rules = rules
        self.stats = stats
        self.clock = clock
        self.monotonic = monotonic
        self.matcher = PathJobMatcher(
            config.path_patterns(), JobAliasDir(config.job_alias_dir) if config.job_alias_dir else None)
        self.opener = SafeOpener([glob_root(pattern) for pattern in config.paths],
                                 follow_symlinks=config.follow_symlinks, check_owner=config.check_owner)
        self._refused: dict[str, str] = {}  # path → why it is not read (logged and counted once)
        self._warned_no_job = False
        # The job map gives each record the job of its own time (see collectors/logs/jobtime.py).
        self.timeline = JobTimeline(config.job_map_dir, clock=clock) if config.job_map_dir else None
        self.prefix = f"file:{name}:"
        self.known: dict[str, Checkpoint] = {}
        for key, value in checkpoints.items():
            if key.startswith(self.prefix):
                ckpt = Checkpoint.loads(value)
                if ckpt is not None:
                    self.known[ckpt.identity] = ckpt
        self.tracked: dict[tuple[int, int], TrackedFile] = {}
        self.by_identity: dict[str, TrackedFile] = {}
        self.ignored: dict[tuple[int, int], tuple[int, int]] = {}
        self.dirty: set[str] = set()  # identities whose checkpoint changed outside of reading
        self.removed: set[str] = set()
        self._warned: set[str] = set()
        self._unseen_since: dict[str, float] = {}
        self.forget_after = forget_after

    # ---- discovery ---------------------------------------------------------------------------

    def _paths(self) -> list[str]:
        found: set[str] = set()
        for pattern in self.config.paths:
            for path in glob.glob(pattern):
                base = os.path.basename(path)
                if any(fnmatch.fnmatch(base, ex) or fnmatch.fnmatch(path, ex) for ex in self.config.exclude):
                    continue
                found.add(path)
        return sorted(found)

    def scan(self) -> list[LogRecord]:
        """Match the globs against what is tracked: new files, rotation, truncation, orphans."""
        out: list[LogRecord] = []
        now = self.monotonic()
        seen: set[tuple[int, int]] = set()
        paths = self._paths()
        for path in paths:
            try:
                # A hint only (what is read is checked on the open descriptor): lstat, so that a
                # symbolic link is not even looked through.
                st = os.stat(path) if self.config.follow_symlinks else os.lstat(path)
            except OSError as exc:
                self._error(path, exc)
                continue
            if stat.S_ISLNK(st.st_mode):
                self._refuse(path, Refused("symlink", f"{path} is a symbolic link"))
                continue
            if not stat.S_ISREG(st.st_mode):
                self._refuse(path, Refused("not_regular", f"{path} is not a regular file"))
                continue
            key = (st.st_dev, st.st_ino)
            seen.add(key)
            tracked = self.tracked.get(key)
            if tracked is not None:
                tracked.rotated_at = None
                if self._was_truncated(tracked, st.st_size):
                    out.extend(self._truncated(tracked))
                    out.extend(self._discover(path, st))
                continue
            if self.ignored.get(key) == (st.st_size, st.st_mtime_ns):
                continue
            out.extend(self._discover(path, st))
        for key, tracked in self.tracked.items():
            if key not in seen and tracked.rotated_at is None:
                tracked.rotated_at = now
        for ckpt in list(self.known.values()):
            if not ckpt.done and ckpt.identity not in self.by_identity:
                self._find_orphan(ckpt)
        self._prune(seen, now)
        # Files skipped for good (binary, read-out copies) stay skipped only while they exist.
        self.ignored = {key: value for key, value in self.ignored.items() if key in seen}
        if self._refused:
            current = set(paths)
            self._refused = {path: why for path, why in self._refused.items() if path in current}
        self.stats.files_open[self.name] = len(self.tracked)
        return out

    def _prune(self, seen: set[tuple[int, int]], now: float) -> None:
        """Forget checkpoints whose file has not been seen for ``forget_after`` seconds: finished
        files that were deleted, and unfinished ones whose file vanished (counted as lost). Should
        such a file come back, its records get the same ids again, so the store still keeps one
        copy of each line."""
        for ckpt in list(self.known.values()):
            identity = ckpt.identity
            if identity in self.by_identity or (ckpt.dev, ckpt.ino) in seen:
                self._unseen_since.pop(identity, None)
                continue
            since = self._unseen_since.setdefault(identity, now)
            if now - since < self.forget_after:
                continue
            if not ckpt.done:
                self.stats.add2(self.stats.lost, (self.name, "vanished"))
                log.warning("%s: %s vanished before it was read to the end (offset %d)", self.name,
                            ckpt.path, ckpt.offset)
            self._unseen_since.pop(identity, None)
            self._forget(ckpt)

    def _was_truncated(self, tracked: TrackedFile, size: int) -> bool:
        if tracked.finished:
            return False
        if size < tracked.pos:
            return True
        if not tracked.is_original():
            return False  # reading a copy: it is not the live file
        try:
            current = fingerprint(tracked.fd, tracked.ckpt.fplen)
        except OSError:
            return False
        return current != tracked.ckpt.fp

    def _open(self, path: str) -> tuple[int, os.stat_result] | None:
        """The checked descriptor of ``path`` and its fstat (see :mod:`collectors.logs.safeopen`),
        or None when it is refused or cannot be opened (both counted and logged once)."""
        try:
            opened = self.opener.open(path)
        except Refused as refused:
            self._refuse(path, refused)
            return None
        except OSError as exc:
            self._error(path, exc)
            return None
        self._refused.pop(path, None)
        return opened

    def _refuse(self, path: str, refused: Refused) -> None:
        if self._refused.get(path) == refused.reason:
            return
        self._refused[path] = refused.reason
        self.stats.add2(self.stats.skipped_files, (self.name, refused.reason))
        log.warning("%s: not reading %s", self.name, refused.detail)

    def _error(self, path: str, exc: OSError) -> None:
        reason = _reason(exc)
        self.stats.add2(self.stats.read_errors, (self.name, reason))
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%s: cannot read %s: %s (will retry)", self.name, path, exc.strerror or exc)

    def _discover(self, path: str, st: os.stat_result) -> list[LogRecord]:
        out: list[LogRecord] = []
        if st.st_size == 0:
            return out
        opened = self._open(path)
        if opened is None:
            return out
        fd, fst = opened
        st = fst  # from here on, only what the descriptor says
        self._warned.discard(path)
        try:
            dev, ino, size = fst.st_dev, fst.st_ino, fst.st_size
            # A checkpoint of this very inode: same content → resume; other content → it was
            # truncated (copytruncate while we were down) or the inode was reused.
            for ckpt in [c for c in self.known.values() if (c.dev, c.ino) == (dev, ino)]:
                if ckpt.identity in self.by_identity:
                    continue
                same = size >= ckpt.fplen and fingerprint(fd, ckpt.fplen) == ckpt.fp
                if same and size >= ckpt.offset:
                    if ckpt.done and size == ckpt.offset:
                        self.ignored[(dev, ino)] = (st.st_size, st.st_mtime_ns)
                        os.close(fd)
                        return out
                    ckpt.done = False
                    ckpt.path = path
                    self._track(ckpt, fd, dev, ino)
                    return out
                if ckpt.done:
                    self._forget(ckpt)
                else:
                    out.extend(self._recover_truncated(ckpt))
            # A rotated copy of a known file (same name stem, same first bytes) is never a new file.
            for ckpt in self._sibling_checkpoints(path):
                if (ckpt.dev, ckpt.ino) == (dev, ino) or size < ckpt.fplen:
                    continue
                if fingerprint(fd, ckpt.fplen) != ckpt.fp:
                    continue
                live = self.by_identity.get(ckpt.identity)
                if live is not None or ckpt.done:
                    # Still live (read there), or already read to its end: skip this copy. A live
                    # one is looked at again when the original is truncated.
                    if ckpt.done:
                        self.ignored[(dev, ino)] = (st.st_size, st.st_mtime_ns)
                    os.close(fd)
                    return out
                if size >= ckpt.offset:
                    tracked = self._track(ckpt, fd, dev, ino)
                    tracked.rotated_at = self.monotonic()
                    return out
            if self.config.skip_binary and looks_binary(fd):
                self.stats.add2(self.stats.skipped_files, (self.name, "binary"))
                log.warning("%s: %s looks binary; not reading it", self.name, path)
                self.ignored[(dev, ino)] = (st.st_size, st.st_mtime_ns)
                os.close(fd)
                return out
            fplen = min(size, FINGERPRINT_BYTES)
            fp = fingerprint(fd, fplen)
            if fp is None:
                os.close(fd)
                return out
            ckpt = Checkpoint(path=path, dev=dev, ino=ino, fp=fp, fplen=fplen)
            self.known[ckpt.identity] = ckpt
            self.dirty.add(ckpt.identity)
            self._track(ckpt, fd, dev, ino)
            return out
        except OSError as exc:
            self._error(path, exc)
            os.close(fd)
            return out

    def _sibling_checkpoints(self, path: str) -> list[Checkpoint]:
        directory, base = os.path.split(path)
        out = []
        for ckpt in self.known.values():
            cdir, cbase = os.path.split(ckpt.path)
            if cdir == directory and base != cbase and base.startswith(cbase) \
                    and base[len(cbase):len(cbase) + 1] in _ROTATED_SEPARATORS:
                out.append(ckpt)
        return out

    def _candidates(self, ckpt: Checkpoint) -> list[str]:
        directory, base = os.path.split(ckpt.path)
        try:
            names = os.listdir(directory or ".")
        except OSError:
            return []
        out = []
        for name in sorted(names):
            if name == base or not name.startswith(base) or name.endswith(_COMPRESSED):
                continue
            if name[len(base):len(base) + 1] in _ROTATED_SEPARATORS:
                out.append(os.path.join(directory, name))
        return [ckpt.path, *out]

    def _find_copy(self, ckpt: Checkpoint, min_size: int, by_inode: bool) -> tuple[int, int, int] | None:
        """An open descriptor (fd, dev, ino) of the file holding ``ckpt``'s content: the same inode
        under another name (``by_inode``), or a copy with the same first bytes."""
        for path in self._candidates(ckpt):
            try:
                hint = os.stat(path) if self.config.follow_symlinks else os.lstat(path)
            except OSError:
                continue
            hint_key = (hint.st_dev, hint.st_ino)
            if not stat.S_ISREG(hint.st_mode) or hint_key in self.tracked or hint.st_size < min_size \
                    or by_inode != (hint_key == (ckpt.dev, ckpt.ino)):
                continue  # a link, a FIFO, a file read already, or not it: not opened at all
            opened = self._open(path)
            if opened is None:
                continue
            fd, st = opened  # the checks that count are on the descriptor
            key = (st.st_dev, st.st_ino)
            try:
                if key not in self.tracked and st.st_size >= min_size and \
                        by_inode == (key == (ckpt.dev, ckpt.ino)) and \
                        fingerprint(fd, ckpt.fplen) == ckpt.fp:
                    return fd, st.st_dev, st.st_ino
            except OSError:
                pass  # unreadable candidate: try the next one
            os.close(fd)
        return None

    def _find_orphan(self, ckpt: Checkpoint) -> None:
        """A checkpoint whose file is not at a globbed path any more: renamed, or copied."""
        found = self._find_copy(ckpt, ckpt.offset, by_inode=True) or \
            self._find_copy(ckpt, ckpt.offset, by_inode=False)
        if found is not None:
            fd, dev, ino = found
            tracked = self._track(ckpt, fd, dev, ino)
            tracked.rotated_at = self.monotonic()

    def _recover_truncated(self, ckpt: Checkpoint) -> list[LogRecord]:
        found = self._find_copy(ckpt, ckpt.offset, by_inode=False)
        if found is not None:
            fd, dev, ino = found
            tracked = self._track(ckpt, fd, dev, ino)
            tracked.rotated_at = self.monotonic()
            return []
        self.stats.add2(self.stats.lost, (self.name, "truncated"))
        log.warning("%s: %s was truncated before it was read to the end, and no rotated copy was found",
                    self.name, ckpt.path)
        ckpt.done = True
        self.dirty.add(ckpt.identity)
        return []

    def _truncated(self, tracked: TrackedFile) -> list[LogRecord]:
        """The live file under ``tracked`` shrank or changed its first bytes (copytruncate)."""
        ckpt = tracked.ckpt
        offset, _skip = tracked.resume()
        del self.tracked[(tracked.dev, tracked.ino)]
        found = self._find_copy(ckpt, tracked.pos, by_inode=False)
        if found is not None:
            fd, dev, ino = found
            tracked.close()
            tracked.fd, tracked.dev, tracked.ino = fd, dev, ino
            tracked.rotated_at = self.monotonic()
            self.tracked[(dev, ino)] = tracked
            return []
        log.warning("%s: %s was truncated at %d (read up to %d) and no rotated copy was found",
                    self.name, ckpt.path, tracked.size(), offset)
        self.stats.add2(self.stats.lost, (self.name, "truncated"))
        out = tracked.finish()
        self._complete(tracked)
        ckpt.offset = tracked.pos
        tracked.close()
        self.by_identity.pop(ckpt.identity, None)
        return out

    def _job_of(self, path: str) -> str | None:
        if self.config.job_id:
            return self.config.job_id
        ref = self.matcher.job_of(path)
        if ref is not None:
            return ref.job_id
        if (self.config.job_id_pattern or self.config.job_id_patterns) and self.timeline is None \
                and not self._warned_no_job:
            self._warned_no_job = True
            log.warning("%s: no job_id pattern matches %s; patterns match the whole path from the root "
                        "(see docs/logs-collector.md)", self.name, path)
        return None

    def _decoder(self) -> Decoder:
        cfg = self.config
        if isinstance(cfg, CriSource):
            return CriDecoder(cfg.max_line_bytes, cfg.rank_prefix)
        if isinstance(cfg, DockerSource):
            return DockerDecoder(cfg.max_line_bytes, cfg.rank_prefix)
        return TextDecoder(cfg.format, cfg.rank_prefix)

    def _track(self, ckpt: Checkpoint, fd: int, dev: int, ino: int) -> TrackedFile:
        cfg = self.config
        ml = cfg.multiline
        labels = pod_labels(ckpt.path) if self.kind in ("cri", "docker") else {}
        job_id = self._job_of(ckpt.path)
        job_at = self.timeline.job_at if job_id is None and self.timeline is not None else None
        ctx = RecordContext(host=self.host, path=ckpt.path, identity=ckpt.identity, source=self.kind,
                            job_id=job_id, labels=labels, job_at=job_at)
        multiline = Multiline(enabled=ml.enabled, max_lines=ml.max_lines, max_bytes=ml.max_bytes,
                              flush_timeout=ml.flush_timeout, extra_patterns=ml.continuation_patterns,
                              clock=self.monotonic)
        pipeline = Pipeline(ctx, self._decoder(), multiline, self.rules, clock=self.clock)
        tracked = TrackedFile(ckpt, fd, dev, ino, pipeline, cfg.max_line_bytes, self.monotonic())
        self.tracked[(dev, ino)] = tracked
        self.by_identity[ckpt.identity] = tracked
        self.stats.files_open[self.name] = len(self.tracked)
        return tracked

    def _forget(self, ckpt: Checkpoint) -> None:
        self.known.pop(ckpt.identity, None)
        self.dirty.discard(ckpt.identity)
        self.removed.add(ckpt.identity)

    def _complete(self, tracked: TrackedFile) -> None:
        """``tracked`` is read to its end: its checkpoint is done and the descriptor can go once
        that is committed."""
        tracked.finished = True
        tracked.ckpt.done = True
        self.dirty.add(tracked.ckpt.identity)

    # ---- reading -----------------------------------------------------------------------------

    def poll(self, budget: int) -> tuple[list[LogRecord], int]:
        """Read up to ``budget`` bytes over all files; finish rotated files that stay at EOF."""
        out: list[LogRecord] = []
        total = 0
        now = self.monotonic()
        if self.timeline is not None:
            self.timeline.refresh()
        for tracked in list(self.tracked.values()):
            if tracked.finished:
                continue
            at_eof = False
            if total < budget:
                requested = min(budget - total, READ_CHUNK)
                try:
                    records, nread = tracked.read(budget - total, now)
                except Replaced:
                    out.extend(self._truncated(tracked))
                    continue
                except OSError as exc:
                    self._error(tracked.ckpt.path, exc)
                    continue
                out.extend(records)
                total += nread
                at_eof = nread < requested
            if at_eof:
                # The flush timeout counts only once we have caught up with the file: a block whose
                # next lines are already written but not read yet (we are behind) must not be cut.
                out.extend(tracked.pipeline.expire())
            if total >= budget:
                continue
            if tracked.rotated_at is not None:
                quiet = now - max(tracked.rotated_at, tracked.last_growth)
                try:
                    at_end = tracked.pos >= tracked.size()
                except OSError:
                    at_end = True
                if at_end and quiet >= self.config.rotate_wait:
                    out.extend(tracked.finish())
                    self._complete(tracked)
        for tracked in self.tracked.values():
            if tracked.dropped_bytes:
                self.stats.add(self.stats.dropped_bytes, self.name, tracked.dropped_bytes)
                tracked.dropped_bytes = 0
            if tracked.pipeline.truncated_lines:
                self.stats.add(self.stats.truncated_lines, self.name, tracked.pipeline.truncated_lines)
                tracked.pipeline.truncated_lines = 0
            if tracked.pipeline.multiline.truncated_blocks:
                self.stats.add(self.stats.multiline_truncated, self.name,
                               tracked.pipeline.multiline.truncated_blocks)
                tracked.pipeline.multiline.truncated_blocks = 0
        return out, total

    # ---- checkpoints -------------------------------------------------------------------------

    def pending_checkpoints(self) -> tuple[dict[str, str], list[str]]:
        """Checkpoints that changed since the last commit (key → value), and keys to delete."""
        updates: dict[str, str] = {}
        for tracked in self.tracked.values():
            offset, skip = tracked.resume()
            state = (offset, skip, tracked.ckpt.done)
            if state != tracked.committed or tracked.ckpt.identity in self.dirty:
                value = Checkpoint(**{**asdict(tracked.ckpt), "offset": offset, "skip": skip})
                updates[self.prefix + tracked.ckpt.identity] = value.dumps()
        for identity in self.dirty:
            ckpt = self.known.get(identity)
            if ckpt is not None and identity not in self.by_identity:
                updates[self.prefix + identity] = ckpt.dumps()
        return updates, [self.prefix + identity for identity in self.removed]

    def committed(self) -> None:
        """The checkpoints from :meth:`pending_checkpoints` are durable: remember them, and close
        files that are finished."""
        for key, tracked in list(self.tracked.items()):
            offset, skip = tracked.resume()
            tracked.committed = (offset, skip, tracked.ckpt.done)
            tracked.ckpt.offset, tracked.ckpt.skip = offset, skip
            if tracked.finished:
                tracked.close()
                del self.tracked[key]
                self.by_identity.pop(tracked.ckpt.identity, None)
        self.dirty.clear()
        self.removed.clear()
        self.stats.files_open[self.name] = len(self.tracked)

    def backlog_bytes(self) -> int:
        total = 0
        for tracked in self.tracked.values():
            try:
                total += max(0, tracked.size() - tracked.committed[0])
            except OSError:
                continue
        return total

    def close(self) -> None:
        for tracked in self.tracked.values():
            tracked.close()
        self.tracked.clear()
        self.by_identity.clear()
