"""An HTTP server on 127.0.0.1 that speaks the part of the Elasticsearch API the official client
uses for the sink: the product header, ILM policy and index template PUTs, and ``_bulk`` NDJSON
with per-item results. Tests script per-document answers (429, 400, 500, ...) and dropped
connections, to check the sink's contract at the HTTP boundary."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ERRORS = {
    400: {"type": "document_parsing_exception",
          "reason": "[1:42] failed to parse field [log.offset] of type [long]"},
    429: {"type": "es_rejected_execution_exception",
          "reason": "rejected execution of coordinating operation"},
    500: {"type": "internal_server_error", "reason": "boom"},
    503: {"type": "unavailable_shards_exception", "reason": "primary shard is not active"},
}


class FakeElasticsearch:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.index_of: dict[str, str] = {}
        self.policies: dict[str, Any] = {}
        self.templates: dict[str, Any] = {}
        self.plan: dict[str, list[int]] = defaultdict(list)  # doc id → statuses to answer first
        self.drop_requests = 0  # next N bulk requests: close the connection without answering
        self.fail_requests: list[int] = []  # next bulk requests: answer this HTTP status as a whole
        self.bulk_calls = 0
        self.attempts: dict[str, int] = defaultdict(int)
        self.observer: Callable[[], Any] | None = None  # called at every bulk request
        self.observations: list[Any] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def do_GET(self) -> None:
                self._send(200, {"name": "fake", "cluster_name": "fake", "version": {"number": "9.1.0"},
                                 "tagline": "You Know, for Search"})

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_PUT(self) -> None:
                body = self._body()
                path = self.path.split("?")[0]
                if path.startswith("/_ilm/policy/"):
                    fake.policies[path.rsplit("/", 1)[1]] = json.loads(body)
                    self._send(200, {"acknowledged": True})
                elif path.startswith("/_index_template/"):
                    fake.templates[path.rsplit("/", 1)[1]] = json.loads(body)
                    self._send(200, {"acknowledged": True})
                elif path.endswith("/_bulk"):
                    self._bulk(body)
                else:
                    self._send(404, {"error": {"type": "not_found", "reason": path}, "status": 404})

            def do_POST(self) -> None:
                body = self._body()
                if self.path.split("?")[0].endswith("/_bulk"):
                    self._bulk(body)
                else:
                    self._send(404, {"error": {"type": "not_found", "reason": self.path}, "status": 404})

            def _bulk(self, body: bytes) -> None:
                with fake.lock:
                    fake.bulk_calls += 1
                    if fake.observer is not None:
                        fake.observations.append(fake.observer())
                    if fake.drop_requests > 0:
                        fake.drop_requests -= 1
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if fake.fail_requests:
                        status = fake.fail_requests.pop(0)
                        self._send(status, {"error": _ERRORS.get(status, {"type": "x", "reason": "x"}),
                                            "status": status})
                        return
                    lines = [line for line in body.split(b"\n") if line.strip()]
                    items = []
                    for action_line, doc_line in zip(lines[::2], lines[1::2], strict=True):
                        action = json.loads(action_line)
                        op, meta = next(iter(action.items()))
                        doc_id = meta["_id"]
                        fake.attempts[doc_id] += 1
                        planned = fake.plan.get(doc_id)
                        if op != "create":
                            status = 400
                        elif planned:
                            status = planned.pop(0)
                        elif doc_id in fake.docs:
                            status = 409
                        else:
                            status = 201
                        result: dict[str, Any] = {"_index": meta["_index"], "_id": doc_id, "status": status}
                        if status in (200, 201):
                            fake.docs[doc_id] = json.loads(doc_line)
                            fake.index_of[doc_id] = meta["_index"]
                            result["result"] = "created"
                        elif status == 409:
                            result["error"] = {
                                "type": "version_conflict_engine_exception",
                                "reason": f"[{doc_id}]: version conflict, document already exists "
                                          "(current version [1])"}
                        else:
                            result["error"] = _ERRORS.get(status, {"type": "error", "reason": str(status)})
                        items.append({op: result})
                    errors = any(i[next(iter(i))]["status"] >= 300 for i in items)
                    self._send(200, {"took": 1, "errors": errors, "items": items})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeElasticsearch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
