"""TensorBoard for a job: a bounded set of ``tensorboard`` processes (one per logdir, reused,
stopped when idle or when the least recently used one must make room), and scalar series read
straight from event files with TensorBoard's own event reader."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from jobsight.errors import DependencyUnavailable, InvalidInput

MAX_SCALAR_POINTS = 10_000


def check_logdir(logdir: str, allowed_roots: Sequence[Path]) -> Path:
    """The resolved logdir, refused unless it exists and lies under an allowed root (if any)."""
    path = Path(logdir).expanduser()
    if not path.is_absolute():
        raise InvalidInput("tensorboard_logdir must be an absolute path")
    resolved = path.resolve()
    if allowed_roots and not any(resolved.is_relative_to(Path(root).resolve()) for root in allowed_roots):
        raise InvalidInput("tensorboard_logdir is outside the allowed TensorBoard roots")
    if not resolved.is_dir():
        raise InvalidInput("tensorboard_logdir does not exist or is not a directory")
    return resolved


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
    process: subprocess.Popen[bytes]
    last_used: float


class TensorBoardManager:
    def __init__(self, command: Sequence[str], *, host: str = "127.0.0.1", public_host: str | None = None,
                 max_instances: int = 4, idle_seconds: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic, log_dir: Path | None = None) -> None:
        self._command = list(command)
        self._host = host
        self._public_host = public_host or host
        self._max = max_instances
        self._idle = idle_seconds
        self._clock = clock
        self._log_dir = log_dir
        self._instances: dict[Path, _Instance] = {}
        self._lock = threading.Lock()

    def url(self, instance: _Instance) -> str:
        return f"http://{self._public_host}:{instance.port}/"

    def ensure(self, logdir: Path) -> tuple[str, bool]:
        """Start (or reuse) the TensorBoard for ``logdir``; returns its URL and whether it answers yet."""
        with self._lock:
            self._reap_locked()
            instance = self._instances.get(logdir)
            if instance is None:
                while len(self._instances) >= self._max:
                    oldest = min(self._instances.values(), key=lambda i: i.last_used)
                    self._stop_locked(oldest)
                instance = self._start_locked(logdir)
            instance.last_used = self._clock()
            return self.url(instance), _listening(self._host, instance.port)

    def _start_locked(self, logdir: Path) -> _Instance:
        port = _free_port(self._host)
        argv = [*self._command, "--logdir", str(logdir), "--port", str(port), "--host", self._host]
        log_file: IO[bytes] | None = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self._log_dir / f"tensorboard-{port}.log", "wb")  # noqa: SIM115 - closed below
        try:
            process = subprocess.Popen(argv, stdout=log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise DependencyUnavailable("tensorboard",
                                        f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
        finally:
            # The child holds its own copy of the descriptor.
            if log_file is not None:
                log_file.close()
        instance = _Instance(logdir, port, process, self._clock())
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
        with self._lock:
            for instance in list(self._instances.values()):
                self._stop_locked(instance)


@dataclass(frozen=True)
class ScalarRun:
    run: str
    tag: str
    points: list[tuple[int, float, float]]  # (step, wall_time, value)


def read_scalars(logdir: Path, tag: str | None = None, max_points: int = MAX_SCALAR_POINTS
                 ) -> tuple[list[str], list[ScalarRun]]:
    """All scalar tags under ``logdir`` (each subdirectory with event files is a run) and the
    series of ``tag`` (or of every tag when ``tag`` is None). Reads both classic ``simple_value``
    scalars and the scalar plugin's tensors that ``tensorboard.summary.Writer`` writes."""
    from tensorboard.backend.event_processing import event_accumulator, event_multiplexer
    from tensorboard.util import tensor_util

    guidance = {event_accumulator.SCALARS: max_points, event_accumulator.TENSORS: max_points}
    multiplexer = event_multiplexer.EventMultiplexer(size_guidance=guidance)
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    tags: set[str] = set()
    runs: list[ScalarRun] = []
    for run_name, run_tags in sorted(multiplexer.Runs().items()):
        accumulator = multiplexer.GetAccumulator(run_name)
        for scalar_tag in run_tags.get(event_accumulator.SCALARS, []):
            tags.add(scalar_tag)
            if tag is None or scalar_tag == tag:
                events = accumulator.Scalars(scalar_tag)
                runs.append(ScalarRun(run_name, scalar_tag,
                                      [(e.step, e.wall_time, float(e.value)) for e in events]))
        for tensor_tag in run_tags.get(event_accumulator.TENSORS, []):
            metadata = accumulator.SummaryMetadata(tensor_tag)
            if metadata.plugin_data.plugin_name != "scalars":
                continue
            tags.add(tensor_tag)
            if tag is None or tensor_tag == tag:
                events = accumulator.Tensors(tensor_tag)
                points = [(e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto).item()))
                          for e in events]
                runs.append(ScalarRun(run_name, tensor_tag, points))
    return sorted(tags), runs
