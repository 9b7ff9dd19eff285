"""A total deadline for an outgoing HTTP call, enforced at the socket.

httpx's timeouts are per operation: a read that returns one byte every few seconds never trips a
5 s read timeout, so a dependency that trickles its answer can hold a request (and a worker
thread) for minutes. Here every connect, read and write of the transport is given at most the
time left before the deadline of the call in progress (a context variable set by
:func:`deadline`); past it, the operation raises httpcore's timeout, which httpx reports as
``httpx.TimeoutException``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

_DEADLINE: ContextVar[float | None] = ContextVar("jobsight_http_deadline", default=None)


@contextmanager
def deadline(seconds: float, clock: Callable[[], float] = time.monotonic) -> Iterator[float]:
    """Calls made inside the block, through a :class:`DeadlineTransport`, end within ``seconds``
    in total. Yields the deadline (on ``clock``'s scale). Nested blocks keep the earlier deadline."""
    at = clock() + seconds
    outer = _DEADLINE.get()
    token = _DEADLINE.set(at if outer is None else min(outer, at))
    try:
        yield at
    finally:
        _DEADLINE.reset(token)


class _Clip:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def __call__(self, timeout: float | None, error: type[Exception]) -> float | None:
        at = _DEADLINE.get()
        if at is None:
            return timeout
        left = at - self._clock()
        if left <= 0:
            raise error("the call's total deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, clip: _Clip) -> None:
        self._inner = inner
        self._clip = clip

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._clip(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clip(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        clipped = self._clip(timeout, httpcore.ConnectTimeout)
        inner = self._inner.start_tls(ssl_context, server_hostname, clipped)
        return _DeadlineStream(inner, self._clip)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's synchronous socket backend, with every operation clipped to the deadline."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._inner = inner or httpcore.SyncBackend()
        self._clip = _Clip(clock)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, self._clip(timeout, httpcore.ConnectTimeout),
                                         local_address=local_address, socket_options=socket_options)
        return _DeadlineStream(stream, self._clip)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, self._clip(timeout, httpcore.ConnectTimeout),
                                                 socket_options=socket_options)
        return _DeadlineStream(stream, self._clip)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` (HTTP/1.1, plain or TLS) over a :class:`DeadlineBackend`.

    httpx has no public way to hand its transport a network backend, so the connection pool is
    built here with the same limits; the rest (request and error mapping) is httpx's own."""

    def __init__(self, limits: httpx.Limits | None = None, retries: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        limits = limits or httpx.Limits()
        super().__init__(limits=limits, retries=retries)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=DeadlineBackend(clock=clock),
        )
