"""``POST /v1/metrics``: the OTLP/HTTP metrics endpoint, on its own port (OTLP's 4318).

Answers as the OTLP/HTTP specification asks: 200 with an ``ExportMetricsServiceResponse`` (with
``partial_success`` when some points were refused), 400 with a ``google.rpc.Status`` for a body
that does not decode (the SDK does not retry a 400), 413 for a body over the limit, 415 for a
content type other than protobuf or JSON; responses in the request's own encoding. One thread
per connection, kept alive: each rank's exporter holds one connection.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from google.protobuf import json_format
from google.rpc.status_pb2 import Status

from collectors.otlp.decode import (
    JSON,
    MAX_BODY_BYTES,
    PROTOBUF,
    UnsupportedMediaType,
    decode_request,
    decompress,
    encode_response,
    media_type,
)
from collectors.otlp.peer import SenderJobs
from collectors.otlp.store import SenderCheck, TrainingStore
from jobsight.errors import ConfigError, InvalidInput
from jobsight.serving import ListenAddress

log = logging.getLogger(__name__)

METRICS_PATH = "/v1/metrics"
IDLE_TIMEOUT_S = 60.0
# google.rpc.Code.INVALID_ARGUMENT; the body of a 400 carries it, as OTLP/HTTP asks.
_INVALID_ARGUMENT = 3


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], receiver: OtlpReceiver) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.receiver = receiver
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's FQDN up in DNS, which nothing here needs.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S

    _sender: SenderCheck | None = None
    _sender_known = False

    def do_POST(self) -> None:
        receiver = cast(_Server, self.server).receiver
        if not self._sender_known:
            # Once per connection (a rank's exporter keeps one): the process behind it does not change.
            # The connection's own local address, not the listening one (which may be 0.0.0.0).
            self._sender = receiver.sender_of(self.client_address, self.connection.getsockname())
            self._sender_known = True
        status, content_type, body = receiver.handle(
            self.path,
            self.headers.get("Content-Type"),
            self.headers.get("Content-Encoding"),
            self.headers.get("Content-Length"),
            self.headers.get("Transfer-Encoding"),
            self.rfile,
            self._sender,
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status in (404, 411, 413):  # the body was not read: the connection cannot be reused
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        text = b"OTLP/HTTP metrics receiver: POST /v1/metrics\n"
        self.send_response(405 if self.path.partition("?")[0] == METRICS_PATH else 404)
        self.send_header("Allow", "POST")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def _status(message: str, content_type: str | None) -> tuple[bytes, str]:
    status = Status(code=_INVALID_ARGUMENT, message=message)
    if media_type(content_type) == JSON:
        return json_format.MessageToJson(status, indent=None).encode(), JSON
    return status.SerializeToString(), PROTOBUF


class OtlpReceiver:
    """Decodes requests into ``store``; serves them from a background thread once started."""

    def __init__(
        self, store: TrainingStore, listen: ListenAddress, max_body_bytes: int = MAX_BODY_BYTES,
        senders: SenderJobs | None = None, require_sender_job: bool = False,
    ) -> None:
        """``senders`` finds the job of the process behind a connection; with it, points that
        claim another job than the sender's are refused, and with ``require_sender_job`` also
        points whose sender's job cannot be found."""
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.senders = senders
        self.require_sender_job = require_sender_job
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        try:
            self._server = _Server((listen.host, listen.port), self)
        except OSError as exc:
            raise ConfigError(f"cannot listen for OTLP on {listen}: {exc.strerror or exc}") from exc
        host, port = self._server.server_address[:2]
        self.address = ListenAddress(str(host), int(port))
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"http://{host}:{self.address.port}{METRICS_PATH}"

    def request_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._requests)

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def sender_of(self, client: Any, server: Any) -> SenderCheck | None:
        if self.senders is None:
            return SenderCheck(None, required=True) if self.require_sender_job else None
        try:
            job_id = self.senders.job_of((str(client[0]), int(client[1])), (str(server[0]), int(server[1])))
        except (OSError, ValueError, IndexError, TypeError) as exc:
            log.warning("otlp: the sender of a connection from %s could not be looked up: %s", client, exc)
            job_id = None
        return SenderCheck(job_id, required=self.require_sender_job)

    def handle(
        self,
        path: str,
        content_type: str | None,
        content_encoding: str | None,
        content_length: str | None,
        transfer_encoding: str | None,
        rfile: Any,
        sender: SenderCheck | None = None,
    ) -> tuple[int, str, bytes]:
        status, out_type, body = self._handle(
            path, content_type, content_encoding, content_length, transfer_encoding, rfile, sender
        )
        with self._lock:
            self._requests[str(status)] += 1
        return status, out_type, body

    def _handle(
        self,
        path: str,
        content_type: str | None,
        content_encoding: str | None,
        content_length: str | None,
        transfer_encoding: str | None,
        rfile: Any,
        sender: SenderCheck | None,
    ) -> tuple[int, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path.partition("?")[0] != METRICS_PATH:
            return 404, text, f"not found: OTLP metrics go to POST {METRICS_PATH}\n".encode()
        if transfer_encoding or not (content_length or "").strip().isdigit():
            return 411, text, b"a Content-Length is required\n"
        length = int(content_length or "0")
        if length > self.max_body_bytes:
            return 413, text, f"body larger than {self.max_body_bytes} bytes\n".encode()
        raw = rfile.read(length)
        try:
            request = decode_request(decompress(raw, content_encoding, self.max_body_bytes), content_type)
        except UnsupportedMediaType as exc:
            return 415, text, f"{exc}\n".encode()
        except InvalidInput as exc:
            body, out_type = _status(str(exc), content_type)
            return 400, out_type, body
        result = self.store.ingest(request, sender)
        body, out_type = encode_response(result.rejected, result.message(), content_type)
        return 200, out_type, body
