"""How ``jobsight api`` serves HTTP: uvicorn's h11 protocol, hardened against slow clients.

uvicorn alone lets a connection that never finishes its request stay open forever: its keep-alive
timer is cancelled by any byte received, and nothing times out a request head or body that
trickles in. A few hundred such connections exhaust the process' file descriptors and
``/healthz`` stops answering. :class:`GuardedH11Protocol` adds what a proxy such as nginx does
(``client_header_timeout``, ``client_body_timeout``):

- a whole request (head and body) must arrive within ``read_timeout`` of its first byte (or of
  the connection's opening), else the connection is closed;
- at most ``limit_concurrency`` connections are open: a new one makes room by dropping the
  connection that has waited longest without a complete request (a slow sender, or an idle
  keep-alive connection); when every connection has a request in progress, uvicorn answers 503.

The limit is kept below the process' file-descriptor limit, so the API can always accept.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("jobsight.api")

# Descriptors the API needs besides client connections: the listening socket, SQLite files, the
# Prometheus connection pool (64), TensorBoard processes, logs.
RESERVED_DESCRIPTORS = 128
_RECEIVING = (h11.IDLE, h11.SEND_BODY)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request read deadline and room-making at the connection
    limit. ``read_timeout`` is set on the subclass made by :func:`guarded_protocol`."""

    read_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting_since = time.monotonic()
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and self.conn.their_state is h11.IDLE:
            # The first byte of the next request on a kept-alive connection starts its deadline.
            self._arm()
        super().data_received(data)
        if self.conn.their_state not in _RECEIVING:
            self._disarm()

    def on_response_complete(self) -> None:
        self._waiting_since = time.monotonic()
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.conn.their_state in _RECEIVING and not self.transport.is_closing():
            log.debug("closing a connection from %s: no complete request within %gs",
                      self.client, self.read_timeout)
            self._drop()

    def _drop(self) -> None:
        self._disarm()
        # Out of the count at once, so the caller's room check sees the slot free; uvicorn's
        # connection_lost, when it comes, discards it again harmlessly.
        self.connections.discard(self)
        self.transport.abort()

    def _waiting(self) -> bool:
        """No request of this connection is being handled: it is sending one, or idle."""
        return self.conn.their_state in _RECEIVING and (self.cycle is None or self.cycle.response_complete)

    def _make_room(self) -> None:
        limit = self.limit_concurrency
        if limit is None:
            return
        # uvicorn answers 503 once len(connections) reaches the limit; keep one below it.
        while len(self.connections) >= limit:
            waiting = [p for p in self.connections
                       if p is not self and isinstance(p, GuardedH11Protocol) and p._waiting()]
            if not waiting:
                return
            min(waiting, key=lambda p: p._waiting_since)._drop()


def guarded_protocol(read_timeout: float) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with ``read_timeout`` (uvicorn builds protocols
    itself, from the class)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"read_timeout": read_timeout})


def descriptor_bound(limit: int, soft_nofile: int | None = None) -> int:
    """``limit`` lowered, where needed, to what the file-descriptor limit leaves for clients."""
    if soft_nofile is None:
        soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_nofile == resource.RLIM_INFINITY:
        return limit
    room = max(16, soft_nofile - RESERVED_DESCRIPTORS)
    if room < limit:
        log.warning("limit_concurrency lowered from %d to %d: the file-descriptor limit is %d "
                    "(raise it with LimitNOFILE= or ulimit -n)", limit, room, soft_nofile)
    return min(limit, room)


def server_config(app: Any, host: str, port: int, *, limit_concurrency: int, read_timeout: float,
                  keep_alive: float, max_header_bytes: int, backlog: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=10,
        lifespan="on", http=guarded_protocol(read_timeout),
        limit_concurrency=descriptor_bound(limit_concurrency), timeout_keep_alive=int(max(1, keep_alive)),
        h11_max_incomplete_event_size=max_header_bytes, backlog=backlog,
    )
