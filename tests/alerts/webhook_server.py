"""A real HTTP server on 127.0.0.1 that records the requests it receives (for Alertmanager
webhook deliveries)."""

from __future__ import annotations

from tests.support import RecordingHTTPServer


class RecordingServer(RecordingHTTPServer):
    """Answers an empty 200 to every POST and keeps what it got; use as a context manager."""

    def __init__(self) -> None:
        super().__init__(methods=("POST",))
