"""TensorBoard for a job: a bounded set of ``tensorboard`` processes (one per logdir, reused,
stopped when idle or when the least recently used one must make room), and scalar series read
straight from event files.

A job's ``tensorboard_logdir`` is a path a tenant chose, read by a process that may run as root,
so (docs/security.md):

- it must resolve (symlinks and ``..`` followed, :func:`check_logdir`) to a directory under one
  of the allowed roots of the job's tenant; with no roots configured, TensorBoard is off;
- the event-file walk of ``/scalars`` (:func:`read_scalars`) follows no symlink: directories are
  opened relative to their parent's descriptor (``os.fwalk``), files with ``O_NOFOLLOW``, and the
  opened descriptor must be a regular file; it is bounded in entries, files, bytes and time, and
  stops when the API shuts down;
- a TensorBoard process is started only for a logdir without symlinks, listens on loopback under
  a secret random path prefix (given in a private ``--flagfile``, so it is not on the command
  line), and is reached by users only through the API's authenticated reverse proxy.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from jobsight.errors import ConfigError, DependencyUnavailable, InvalidInput

MAX_SCALAR_POINTS = 10_000


class NotAllowed(Exception):
    """TensorBoard is not enabled for this tenant (no allowed roots): the API answers 403."""


def roots_for(allowed_roots: Mapping[str, Sequence[str | Path]], tenant: str) -> list[Path]:
    """The roots of ``tenant``: its own entry and the ``"*"`` entry, with ``{tenant}`` in a path
    replaced by the tenant's name."""
    paths = [*allowed_roots.get(tenant, ()), *allowed_roots.get("*", ())]
    return [Path(str(p).replace("{tenant}", tenant)) for p in paths]


def check_logdir(logdir: str, roots: Sequence[Path], tenant: str = "") -> Path:
    """The resolved logdir, refused unless it exists and lies under one of ``roots`` (resolved
    too). No roots at all: :class:`NotAllowed`."""
    if not roots:
        raise NotAllowed(f"TensorBoard is not enabled for tenant {tenant!r}: no tensorboard.allowed_roots "
                         "are configured for it")
    path = Path(logdir).expanduser()
    if not path.is_absolute():
        raise InvalidInput("tensorboard_logdir must be an absolute path")
    resolved = Path(os.path.realpath(path))
    real_roots = [Path(os.path.realpath(root)) for root in roots]
    if not any(resolved.is_relative_to(root) for root in real_roots):
        raise InvalidInput("tensorboard_logdir is outside the allowed TensorBoard roots")
    if not resolved.is_dir():
        raise InvalidInput("tensorboard_logdir does not exist or is not a directory")
    return resolved


@dataclass(frozen=True)
class WalkLimits:
    """Bounds of one event-file walk: directory entries looked at, event files read, bytes read,
    seconds spent."""

    entries: int = 100_000
    files: int = 1_000
    bytes: int = 512 * 1024 * 1024
    seconds: float = 20.0


@dataclass
class _Walk:
    limits: WalkLimits
    stop: threading.Event
    clock: Callable[[], float]
    started: float = 0.0
    entries: int = 0
    files: int = 0
    bytes: int = 0
    symlinks: list[str] = field(default_factory=list)

    def tick(self) -> None:
        if self.stop.is_set():
            raise DependencyUnavailable("tensorboard", "the API is shutting down")
        if self.clock() - self.started > self.limits.seconds:
            raise DependencyUnavailable("tensorboard", f"reading the event files took over "
                                                       f"{self.limits.seconds:g} s; point tensorboard_logdir "
                                                       "at the job's own runs")
        if self.entries > self.limits.entries:
            raise InvalidInput(f"tensorboard_logdir holds over {self.limits.entries} entries; point it at "
                               "the job's own runs")


def _check_top(logdir: Path) -> None:
    """``logdir`` (already resolved) must still be that directory, not a symlink swapped in."""
    try:
        st = os.lstat(logdir)
    except OSError as exc:
        raise InvalidInput("tensorboard_logdir does not exist or is not a directory") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidInput("tensorboard_logdir changed while it was read")


def _fd_path(fd: int) -> str | None:
    """Where an open descriptor really is (Linux ``/proc``); None where that cannot be read."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _event_files(logdir: Path, walk: _Walk) -> Iterator[tuple[str, str, int]]:
    """(run, file name, dir descriptor) of every event file under ``logdir``, without following
    a symlink anywhere; symlinks met are recorded in ``walk.symlinks``."""
    _check_top(logdir)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(logdir, follow_symlinks=False):
        if dirpath == str(logdir) and _fd_path(dirfd) not in (None, str(logdir)):
            # A directory above the logdir was swapped for a symlink after the check: the
            # descriptor opened is elsewhere.
            raise InvalidInput("tensorboard_logdir changed while it was read")
        dirnames.sort()
        walk.entries += len(dirnames) + len(filenames)
        walk.tick()
        rel = os.path.relpath(dirpath, logdir)
        for name in [*dirnames, *filenames]:
            try:
                if stat.S_ISLNK(os.lstat(name, dir_fd=dirfd).st_mode):
                    walk.symlinks.append(os.path.join(rel, name))
            except OSError:
                continue
        for name in sorted(filenames):
            if "tfevents" in name:
                yield rel, name, dirfd


def _open_regular(name: str, dirfd: int) -> int | None:
    """A descriptor of ``name`` in ``dirfd`` if it is a regular file (never a symlink, FIFO or
    device: opened with O_NOFOLLOW | O_NONBLOCK, then checked by fstat)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dirfd)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _records(fd: int, walk: _Walk) -> Iterator[bytes]:
    """The TFRecord payloads of an event file (length, length CRC, data, data CRC), stopping at
    a truncated record (a writer still writing) and at the walk's byte budget."""
    with os.fdopen(fd, "rb", closefd=True) as handle:
        while True:
            walk.tick()
            header = handle.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            if walk.bytes + length + 16 > walk.limits.bytes:
                raise InvalidInput(f"the event files under tensorboard_logdir exceed {walk.limits.bytes} "
                                   "bytes")
            data = handle.read(length)
            crc = handle.read(4)
            if len(data) < length or len(crc) < 4:
                return
            walk.bytes += length + 16
            yield data


def logdir_symlinks(logdir: Path, limits: WalkLimits | None = None, stop: threading.Event | None = None,
                    clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Symlinks anywhere under ``logdir`` (relative paths), found by the same bounded walk."""
    walk = _Walk(limits or WalkLimits(), stop or threading.Event(), clock, started=clock())
    for _ in _event_files(logdir, walk):
        pass
    return walk.symlinks


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class _Instance:
    logdir: Path
    port: int
    prefix: str
    flagfile: Path
    process: subprocess.Popen[bytes]
    last_used: float


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int


def run_as(user: str | int | None, euid: int | None = None) -> RunAs | None:
    """The account ``tensorboard.user`` names (a name or a uid), or None to run TensorBoards as
    the API itself. TensorBoard parses event files that users wrote; run by a root API, it
    should not have root's reach. Raises :class:`ConfigError` for an unknown user, or one the
    API cannot switch to (only root can)."""
    if user is None:
        return None
    import pwd

    try:
        entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"tensorboard.user: no such user {user!r}") from None
    current = os.geteuid() if euid is None else euid
    if current != 0 and entry.pw_uid != current:
        raise ConfigError(f"tensorboard.user: the API runs as uid {current}, and only root may start "
                          f"TensorBoard as {entry.pw_name}")
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


class TensorBoardManager:
    """Starts TensorBoards on ``host`` (loopback) under a secret path prefix each; the API's proxy
    reaches them at :meth:`ensure`'s URL, nobody else knows it. ``stop`` is set by :meth:`close`
    and ends event-file walks in progress (pass it to :func:`read_scalars`)."""

    def __init__(self, command: Sequence[str], *, host: str = "127.0.0.1", max_instances: int = 4,
                 idle_seconds: float = 1800.0, clock: Callable[[], float] = time.monotonic,
                 log_dir: Path | None = None, limits: WalkLimits | None = None,
                 user: RunAs | None = None) -> None:
        """``user``: the account TensorBoards run as (:func:`run_as`), when the API may switch."""
        self._user = user
        self._command = list(command)
        self._host = host
        self._max = max_instances
        self._idle = idle_seconds
        self._clock = clock
        self._log_dir = log_dir
        self._limits = limits or WalkLimits()
        self._instances: dict[Path, _Instance] = {}
        self._lock = threading.Lock()
        self._private: Path | None = None
        self.stop = threading.Event()

    def url(self, instance: _Instance) -> str:
        return f"http://{self._host}:{instance.port}{instance.prefix}/"

    def ensure(self, logdir: Path) -> tuple[str, bool]:
        """Start (or reuse) the TensorBoard for ``logdir``; returns its internal URL (secret
        prefix included: never hand it out) and whether it answers yet. A logdir with symlinks
        anywhere under it is refused: TensorBoard would follow them out of the allowed roots."""
        with self._lock:
            self._reap_locked()
            instance = self._instances.get(logdir)
            if instance is None:
                links = logdir_symlinks(logdir, self._limits, self.stop)
                if links:
                    shown = ", ".join(links[:3]) + (" ..." if len(links) > 3 else "")
                    raise InvalidInput(f"tensorboard_logdir contains symbolic links ({shown}); TensorBoard "
                                       "would follow them, so it is not started")
                while len(self._instances) >= self._max:
                    oldest = min(self._instances.values(), key=lambda i: i.last_used)
                    self._stop_locked(oldest)
                instance = self._start_locked(logdir)
            instance.last_used = self._clock()
            return self.url(instance), _listening(self._host, instance.port)

    def _start_locked(self, logdir: Path) -> _Instance:
        port = _free_port(self._host)
        if self._private is None:
            self._private = Path(tempfile.mkdtemp(prefix="jobsight-tensorboard-"))  # mode 0700
            if self._user is not None:  # the TensorBoards read their flag files from here
                os.chown(self._private, self._user.uid, self._user.gid)
        prefix = "/" + secrets.token_urlsafe(24)
        flagfile = self._private / f"flags-{port}"
        fd = os.open(flagfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        if self._user is not None:
            os.fchown(fd, self._user.uid, self._user.gid)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"--path_prefix={prefix}\n")
        argv = [*self._command, "--flagfile", str(flagfile), "--logdir", str(logdir), "--port", str(port),
                "--host", self._host]
        log_file: IO[bytes] | None = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self._log_dir / f"tensorboard-{port}.log", "wb")  # noqa: SIM115 - closed below
        try:
            switch: dict[str, object] = {}
            if self._user is not None:
                switch = {"user": self._user.uid, "group": self._user.gid, "extra_groups": []}
            process = subprocess.Popen(argv, stdout=log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       **switch)  # type: ignore[call-overload]
        except OSError as exc:
            flagfile.unlink(missing_ok=True)
            raise DependencyUnavailable("tensorboard",
                                        f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
        finally:
            # The child holds its own copy of the descriptor.
            if log_file is not None:
                log_file.close()
        instance = _Instance(logdir, port, prefix, flagfile, process, self._clock())
        self._instances[logdir] = instance
        return instance

    def _stop_locked(self, instance: _Instance) -> None:
        self._instances.pop(instance.logdir, None)
        if instance.process.poll() is None:
            try:
                os.killpg(instance.process.pid, signal.SIGTERM)
                instance.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(instance.process.pid, signal.SIGKILL)
                instance.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        instance.flagfile.unlink(missing_ok=True)

    def _reap_locked(self) -> None:
        now = self._clock()
        for instance in list(self._instances.values()):
            if instance.process.poll() is not None or now - instance.last_used > self._idle:
                self._stop_locked(instance)

    def reap(self) -> int:
        """Stop idle or dead instances; returns how many remain."""
        with self._lock:
            self._reap_locked()
            return len(self._instances)

    def running(self) -> dict[Path, int]:
        with self._lock:
            return {i.logdir: i.port for i in self._instances.values() if i.process.poll() is None}

    def close(self) -> None:
        self.stop.set()
        with self._lock:
            for instance in list(self._instances.values()):
                self._stop_locked(instance)
            if self._private is not None:
                shutil.rmtree(self._private, ignore_errors=True)
                self._private = None


@dataclass(frozen=True)
class ScalarRun:
    run: str
    tag: str
    points: list[tuple[int, float, float]]  # (step, wall_time, value)


def read_scalars(logdir: Path, tag: str | None = None, max_points: int = MAX_SCALAR_POINTS, *,
                 limits: WalkLimits | None = None, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic) -> tuple[list[str], list[ScalarRun]]:
    """All scalar tags under ``logdir`` (each directory with event files is a run, named by its
    path relative to ``logdir``, ``.`` for the logdir itself) and the series of ``tag`` (or of
    every tag when ``tag`` is None). Reads classic ``simple_value`` scalars and the scalar
    plugin's tensors that ``tensorboard.summary.Writer`` writes. The walk is bounded by
    ``limits`` and ends when ``stop`` is set (the API's shutdown)."""
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util

    walk = _Walk(limits or WalkLimits(), stop or threading.Event(), clock, started=clock())
    series: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    tags: set[str] = set()
    for run, name, dirfd in _event_files(logdir, walk):
        fd = _open_regular(name, dirfd)
        if fd is None:
            continue
        walk.files += 1
        if walk.files > walk.limits.files:
            os.close(fd)
            raise InvalidInput(f"tensorboard_logdir holds over {walk.limits.files} event files; point it at "
                               "the job's own runs")
        plugins: dict[str, str] = {}
        for data in _records(fd, walk):
            try:
                event = event_pb2.Event.FromString(data)
            except DecodeError:
                continue
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name:
                    plugins[value.tag] = value.metadata.plugin_data.plugin_name
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    number = float(value.simple_value)
                elif kind == "tensor" and plugins.get(value.tag) == "scalars":
                    try:
                        number = float(tensor_util.make_ndarray(value.tensor).item())
                    except (ValueError, TypeError):
                        continue
                else:
                    continue
                tags.add(value.tag)
                if tag is None or value.tag == tag:
                    series.setdefault((run, value.tag), []).append((event.step, event.wall_time, number))
    runs = [ScalarRun(run, name, _thin(points, max_points)) for (run, name), points in sorted(series.items())]
    return sorted(tags), runs


def _thin(points: list[tuple[int, float, float]], limit: int) -> list[tuple[int, float, float]]:
    """At most ``limit`` points, evenly spread, the last one always kept."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[min(len(points) - 1, int((i + 1) * step) - 1)] for i in range(limit)]
