"""Starting, watching and stopping the child processes of ``jobsight up``.

Every child runs in its own process group with its output in ``<state>/logs/<name>.log``. The
supervisor records the children's PIDs in ``<state>/children.json`` so that a second ``jobsight up``
after a crash (or a SIGKILL of the first) can end leftovers instead of failing on busy ports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from jobsight.errors import JobsightError

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class ChildFailed(JobsightError):
    """A child process exited or never became ready; the message carries the end of its log."""


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    critical: bool = True
    ready_url: str | None = None
    stopped: bool = field(default=False)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(self, state_dir: Path, clock: Clock = time.monotonic) -> None:
        self.state_dir = state_dir
        self.log_dir = state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file = state_dir / "children.json"
        self.clock = clock
        self.children: list[Child] = []

    # --- leftovers of an earlier run -------------------------------------------------------
    def end_leftovers(self) -> list[str]:
        """End the process groups a previous run recorded, if they still run the same command."""
        ended: list[str] = []
        try:
            recorded = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return ended
        for entry in recorded if isinstance(recorded, list) else []:
            pid, name, argv0 = entry.get("pid"), entry.get("name"), entry.get("argv0", "")
            if not isinstance(pid, int) or not _runs(pid, str(argv0)):
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            _wait_gone(pid, 5.0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            ended.append(f"{name} (pid {pid})")
        self.pid_file.unlink(missing_ok=True)
        return ended

    def _record(self) -> None:
        entries = [
            {"pid": c.popen.pid, "name": c.name, "argv0": os.path.basename(c.argv[0])} for c in self.children
        ]
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(self.pid_file)

    # --- starting --------------------------------------------------------------------------
    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_url: str | None = None,
        critical: bool = True,
        cwd: Path | None = None,
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            out.flush()
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ChildFailed(f"{name}: cannot start {argv[0]}: {exc.strerror or exc}") from exc
        child = Child(name, list(argv), log_path, popen, critical=critical, ready_url=ready_url)
        self.children.append(child)
        self._record()
        return child

    def wait_ready(self, child: Child, timeout: float = 60.0) -> None:
        """Wait until ``child.ready_url`` answers 200; fail with its log if it exits or times out."""
        if child.ready_url is None:
            return
        deadline = self.clock() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if not child.alive():
                    raise ChildFailed(
                        f"{child.name} exited with code {child.popen.returncode} while starting; "
                        f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(child.ready_url).status_code == 200:
                        return
                if self.clock() >= deadline:
                    raise ChildFailed(
                        f"{child.name} did not answer {child.ready_url} within {timeout:.0f}s; "
                        f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
                    )
                time.sleep(0.2)

    # --- watching and stopping -------------------------------------------------------------
    def dead_critical(self) -> Child | None:
        for child in self.children:
            if child.critical and not child.stopped and not child.alive():
                return child
        return None

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (newest first), wait up to ``timeout``, then SIGKILL what is left."""
        for child in reversed(self.children):
            if child.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.popen.pid, signal.SIGTERM)
        deadline = self.clock() + timeout
        for child in reversed(self.children):
            remaining = max(0.1, deadline - self.clock())
            try:
                child.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", child.name, timeout)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.popen.pid, signal.SIGKILL)
                child.popen.wait(timeout=5)
            child.stopped = True
            # The group may still hold grandchildren (e.g. TensorBoard started by the API).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.popen.pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def _runs(pid: int, argv0: str) -> bool:
    """True when ``pid`` is alive and its command line starts with ``argv0`` (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and os.path.basename(cmdline[0].decode(errors="replace")) == argv0


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap it if it happens to be our own child.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
