"""Finding 7: an unauthenticated slow-client (slowloris) attack on the API. Hundreds of
connections that trickle a request head one byte at a time must not exhaust the API's file
descriptors: ``/healthz`` keeps answering while the attack goes on, and the attackers'
connections are closed by the server."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.live import start_api
from tests.support import Proc, free_port, wait_until

pytestmark = pytest.mark.security

# The API runs with this many descriptors: few enough that the attack below, bounded at a few
# hundred sockets, would exhaust them.
API_NOFILE = 256
ATTACKERS = 400
TRICKLE_ROUNDS = 120


def _raise_nofile(needed: int) -> None:
    """Raise this process' soft descriptor limit to ``needed`` if it is lower (never above hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Trickler:
    """Opens ``count`` connections that each send a request line, then one header byte per round
    to every connection still open, for at most ``rounds`` rounds or until stopped."""

    def __init__(self, port: int, count: int, rounds: int, interval: float = 0.5) -> None:
        self.port = port
        self.count = count
        self.rounds = rounds
        self.interval = interval
        self.sockets: list[socket.socket] = []
        self.closed_by_server = 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def open(self) -> None:
        for _ in range(self.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(5)
            try:
                sock.connect(("127.0.0.1", self.port))
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            self.sockets.append(sock)
        self._thread.start()

    def _run(self) -> None:
        for _ in range(self.rounds):
            if self.stop.wait(self.interval):
                return
            for sock in list(self.sockets):
                try:
                    sock.send(b"a")
                    if sock.recv(1) == b"":  # EOF: the server closed it
                        raise ConnectionResetError
                except BlockingIOError:
                    continue  # nothing to read: still open, as an attacker wants
                except OSError:
                    self.closed_by_server += 1
                    self.sockets.remove(sock)
                    sock.close()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


@pytest.fixture
def trickler_factory() -> Iterator[Callable[[int], Trickler]]:
    made: list[Trickler] = []

    def _make(port: int) -> Trickler:
        trickler = Trickler(port, ATTACKERS, TRICKLE_ROUNDS)
        made.append(trickler)
        return trickler

    yield _make
    for trickler in made:
        trickler.close()


def test_slow_clients_do_not_starve_healthz(
    spawn: Callable[..., Proc], tmp_path: Path, trickler_factory: Callable[[int], Trickler]
) -> None:
    _raise_nofile(ATTACKERS + 256)
    api = start_api(
        spawn,
        tmp_path,
        {
            "store_url": f"sqlite:///{tmp_path / 'api.db'}",
            "prometheus_url": f"http://127.0.0.1:{free_port()}",
        },
        wrapper=["prlimit", f"--nofile={API_NOFILE}:{API_NOFILE}", "--"],
    )
    port = int(api.url.rsplit(":", 1)[1])
    attack = trickler_factory(port)
    attack.open()
    assert len(attack.sockets) > API_NOFILE  # the attack really holds more than the API could

    started = time.monotonic()

    def healthy() -> bool:
        assert not attack.stop.is_set() and time.monotonic() - started < TRICKLE_ROUNDS * attack.interval
        return httpx.get(f"{api.url}/healthz", timeout=3).status_code == 200

    # While the attack goes on, the API still answers; it closed attackers' connections to do so.
    wait_until(healthy, timeout=30, interval=0.2, message="/healthz to answer during the slow-client attack")
    wait_until(
        lambda: attack.closed_by_server > 0, timeout=30, message="the server to close slow connections"
    )
    assert api.proc.alive()
    attack.close()
    # And once the attack is over, everything is as before.
    assert httpx.get(f"{api.url}/healthz", timeout=10).status_code == 200


def test_an_unfinished_request_is_closed_at_the_read_deadline(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    api = start_api(
        spawn,
        tmp_path,
        {
            "store_url": f"sqlite:///{tmp_path / 'api.db'}",
            "prometheus_url": f"http://127.0.0.1:{free_port()}",
            "server": {"request_read_timeout_seconds": 1.0},
        },
    )
    port = int(api.url.rsplit(":", 1)[1])
    # One request head that never ends, and one connection that never sends a byte.
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as slow,
        socket.create_connection(("127.0.0.1", port), timeout=20) as silent,
    ):
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        # recv returns b"" (or the connection is reset) once the server closes it; the socket's
        # own timeout bounds the wait.
        for sock in (slow, silent):
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""
    # A complete request on a kept-alive connection is served, twice.
    with httpx.Client(base_url=api.url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 200


def test_the_connection_limit_fits_the_descriptor_limit() -> None:
    from api.server import RESERVED_DESCRIPTORS, descriptor_bound

    assert descriptor_bound(1000, soft_nofile=256) == 256 - RESERVED_DESCRIPTORS
    assert descriptor_bound(1000, soft_nofile=20000) == 1000
    assert descriptor_bound(1000, soft_nofile=resource.RLIM_INFINITY) == 1000
    assert descriptor_bound(1000, soft_nofile=64) == 16  # never below a usable minimum
