"""Helpers shared by the test suites: free ports, waiting on a condition with a deadline,
processes that are always cleaned up, promtool, and small in-test HTTP servers. Real parts, no
sleeping-and-hoping."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], T | bool | None],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail with
    ``message`` after ``timeout`` seconds. Exceptions inside ``condition`` count as "not yet"."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - "not yet" while waiting
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


class Proc:
    """A child process with its output in a file, stopped and reaped on :meth:`stop`."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the whole process group, SIGKILL it after ``timeout``; returns the exit code."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        code = self.popen.wait(timeout=timeout)
        self._log.close()
        return code


def jobsight_command(*args: str) -> list[str]:
    """The argv that runs the jobsight CLI from this checkout with the test's interpreter."""
    return [sys.executable, "-m", "launch", *args]


def wait_for_http(url: str, timeout: float = 30.0, proc: Proc | None = None) -> httpx.Response:
    """Wait until ``url`` answers 200; fail early, with the process output, if ``proc`` dies."""

    def ready() -> httpx.Response | None:
        if proc is not None and not proc.alive():
            raise AssertionError(f"process exited with {proc.popen.returncode}:\n{proc.output()}")
        response = httpx.get(url, timeout=2.0)
        return response if response.status_code == 200 else None

    try:
        return wait_until(ready, timeout=timeout, interval=0.1, message=f"{url} to answer 200")
    except AssertionError as exc:
        if proc is not None:
            raise AssertionError(f"{exc}\n--- process output ---\n{proc.output()}") from None
        raise


def start_alertmanager(
    spawn: Callable[..., Proc], binary: str, config: Path, storage: Path, port: int | None = None
) -> str:
    """Alertmanager (``binary``) with ``config``, on ``port`` of 127.0.0.1 (a free one if not
    given), without clustering, started with the test's ``spawn`` fixture; returns its base URL
    once it reports ready."""
    port = port or free_port()
    proc = spawn(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        name="alertmanager",
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/-/ready", proc=proc)
    return base


def require_binary(name: str) -> str:
    """Path of a binary the suite needs (installed by `make test`); a clear failure otherwise."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed; `make test` installs it (see Makefile)")
    return path


def nvml_loads() -> bool:
    """Whether the real NVML initialises on this machine (an NVIDIA driver is there)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def promtool_check_metrics(exposition: str, allow: Iterable[str] = ()) -> list[str]:
    """Run ``promtool check metrics`` on ``exposition``. Parse errors always fail; lint problems
    fail unless a line contains one of ``allow`` (e.g. DCGM's camelCase label names, which we keep
    for compatibility). Returns the lint lines that were allowed."""
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition.encode(), capture_output=True, timeout=60
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode == 0:
        return []
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    allowed_words = tuple(allow)
    problems = [line for line in lines if not any(word in line for word in allowed_words)]
    # promtool exits 3 for lint findings only, 1 for a parse failure.
    assert result.returncode == 3 and not problems, f"promtool check metrics failed:\n{output}"
    return lines


@dataclass(frozen=True)
class RecordedRequest:
    """One request a :class:`RecordingHTTPServer` received: ``path`` as sent (query included),
    header names lower-cased, the raw body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """What a :class:`RecordingHTTPServer` answers (``headers``: any others to send). An error
    status with neither body nor content type is sent as the standard error page (``send_error``)."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ServerThread:
    """An HTTP server on a free 127.0.0.1 port, serving in a background thread while used as a
    context manager; shut down, closed and joined on exit. The in-test servers build their
    handler class and hand it here."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, daemon_threads: bool = True) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = daemon_threads
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class RecordingHTTPServer(ServerThread):
    """A real HTTP server on 127.0.0.1 (a free port) that serves in a thread while used as a
    context manager. Every request with one of ``methods`` is recorded (unless ``record`` is
    false) and answered with ``respond(request)``, by default an empty 200; other methods get 501.
    ``respond`` runs under :attr:`lock`, together with the recording, so it may update state."""

    def __init__(
        self,
        respond: Callable[[RecordedRequest], Reply] | None = None,
        *,
        methods: Iterable[str] = ("GET", "POST"),
        record: bool = True,
    ) -> None:
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self._respond = respond or (lambda request: Reply())
        self._record = record
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                owner._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        for method in methods:
            setattr(Handler, f"do_{method}", Handler._handle)
        super().__init__(Handler, daemon_threads=False)

    def snapshot(self) -> list[RecordedRequest]:
        """The requests recorded so far, in arrival order."""
        with self.lock:
            return list(self.requests)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        request = RecordedRequest(handler.command, handler.path, headers, body)
        with self.lock:
            if self._record:
                self.requests.append(request)
            reply = self._respond(request)
        if reply.status >= 400 and not reply.body and reply.content_type is None:
            handler.send_error(reply.status)
            return
        handler.send_response(reply.status)
        if reply.content_type is not None:
            handler.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(reply.body)))
        handler.end_headers()
        handler.wfile.write(reply.body)


# The attacker of the security tests: an ordinary user, no capabilities, no supplementary groups.
NOBODY_UID = 65534
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def as_nobody(*argv: str) -> None:
    """Run ``argv`` as the unprivileged user ``nobody`` (the attacker): the tests run as root, and
    every file the attack makes must be one an ordinary cluster user can make."""
    result = subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"as nobody: {argv} exited with {result.returncode}: {result.stderr}")


def nobody_python(code: str) -> subprocess.Popen[bytes]:
    """Start ``python -c code`` as ``nobody`` (a long-running attacker)."""
    return subprocess.Popen([*AS_NOBODY, sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def world_dir(parent: Path, name: str, mode: int = 0o755, owner: int = 0) -> Path:
    """A directory ``nobody`` can reach (pytest's tmp_path is 0700 root)."""
    path = parent / name
    path.mkdir()
    os.chown(path, owner, owner)
    path.chmod(mode)
    return path
