"""An in-test HTTP server that speaks the Kubernetes API's list/watch protocol, for the watcher.

What it implements, as the API server does:
- lists at ``/api/v1/pods``, ``/apis/batch/v1/jobs`` and ``/apis/<group>/<version>/<plural>`` with
  ``limit``/``continue`` pages and the list's ``metadata.resourceVersion``;
- ``?watch=true&resourceVersion=N``: a chunked stream of JSON lines (``ADDED``/``MODIFIED``/
  ``DELETED`` with the object, ``BOOKMARK`` with only a version), every event after ``N``; a
  version older than the compaction floor gets an ``ERROR`` event with a 410 Status, as a real
  watch cache does; ``timeoutSeconds`` ends the stream cleanly;
- ``GET /api/v1/namespaces/<ns>/pods/<name>``, as PartialObjectMetadata when asked;
- 404 for resources it does not serve (a CRD that is not installed).

Faults the tests inject: :meth:`drop_watches` cuts every open watch mid-stream (no final chunk, as a
dying API server or a load balancer does), :meth:`compact` moves the floor so resumes get 410,
:meth:`hold_watches` keeps new watches waiting (an API server restarting), :meth:`fail_next`
answers the next requests with an error status.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support import ServerThread

PODS = "/api/v1/pods"


def resource_path(group: str, version: str, plural: str) -> str:
    if not group:
        return f"/api/{version}/{plural}"
    return f"/apis/{group}/{version}/{plural}"


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    path: str
    query: dict[str, str]
    authorization: str | None = None

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


class FakeKube(ServerThread):
    def __init__(self, served: set[str]) -> None:
        self.served = set(served) | {PODS}
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in self.served}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, path, type, object)
        self.rv = 100
        self.floor = 0
        self.cond = threading.Condition()
        self.seen: list[Seen] = []
        self._drop_generation = 0
        self._held = False
        self._fail: list[int] = []
        self._open_watches: set[socket.socket] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._get(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(Handler)

    def __exit__(self, *exc: object) -> None:
        self.drop_watches()
        super().__exit__(*exc)

    # -- the cluster's state --------------------------------------------------------------------
    def put(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace ``obj`` (by namespace/name); returns it with its new version."""
        with self.cond:
            meta = obj.setdefault("metadata", {})
            key = (meta["namespace"], meta["name"])
            store = self.objects[path]
            etype = "MODIFIED" if key in store else "ADDED"
            if etype == "ADDED":
                meta.setdefault("uid", str(uuid.uuid4()))
            else:  # an update keeps the object's identity
                meta.setdefault("uid", store[key]["metadata"]["uid"])
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            stored: dict[str, Any] = json.loads(json.dumps(obj))
            store[key] = stored
            self.events.append((self.rv, path, etype, stored))
            self.cond.notify_all()
            return stored

    def delete(self, path: str, namespace: str, name: str) -> None:
        with self.cond:
            obj = self.objects[path].pop((namespace, name))
            self.rv += 1
            gone = json.loads(json.dumps(obj))
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append((self.rv, path, "DELETED", gone))
            self.cond.notify_all()

    def compact(self) -> None:
        """Forget history: a watch resuming from any version seen so far gets 410 Gone."""
        with self.cond:
            self.floor = self.rv
            self.cond.notify_all()

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream."""
        with self.cond:
            self._drop_generation += 1
            for sock in list(self._open_watches):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.cond.notify_all()

    def hold_watches(self, held: bool = True) -> None:
        """While held, new watch requests wait before answering (an API server that is down or
        restarting); changes made meanwhile reach the watcher only after it is released."""
        with self.cond:
            self._held = held
            self.cond.notify_all()

    def fail_next(self, *statuses: int) -> None:
        with self.cond:
            self._fail.extend(statuses)

    def requests(self) -> list[Seen]:
        with self.cond:
            return list(self.seen)

    # -- HTTP -----------------------------------------------------------------------------------
    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        with self.cond:
            self.seen.append(Seen(parsed.path, query, handler.headers.get("Authorization")))
            fail = self._fail.pop(0) if self._fail else None
        if fail is not None:
            self._json(handler, fail, _status(fail, "injected failure"))
            return
        parts = parsed.path.split("/")
        if parsed.path.startswith("/api/v1/namespaces/") and len(parts) == 7 and parts[5] == "pods":
            self._get_pod(handler, parts[4], parts[6])
            return
        if parsed.path not in self.served:
            self._json(handler, 404, _status(404, f"the server could not find {parsed.path}"))
            return
        if query.get("watch") in ("true", "1"):
            self._watch(handler, parsed.path, query)
        else:
            self._list(handler, parsed.path, query)

    def _get_pod(self, handler: BaseHTTPRequestHandler, namespace: str, name: str) -> None:
        with self.cond:
            pod = self.objects[PODS].get((namespace, name))
        if pod is None:
            self._json(handler, 404, _status(404, f'pods "{name}" not found'))
            return
        if "PartialObjectMetadata" in (handler.headers.get("Accept") or ""):
            body = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": pod["metadata"],
            }
        else:
            body = pod
        self._json(handler, 200, body)

    def _list(self, handler: BaseHTTPRequestHandler, path: str, query: Mapping[str, str]) -> None:
        with self.cond:
            items = [self.objects[path][k] for k in sorted(self.objects[path])]
            rv = self.rv
        selector = query.get("fieldSelector")
        if selector:
            # The one field selector jobsight sends: pods bound to a node.
            field, _, value = selector.partition("=")
            if field != "spec.nodeName":
                self._json(handler, 400, _status(400, f'field label not supported: "{field}"'))
                return
            items = [i for i in items if (i.get("spec") or {}).get("nodeName") == value]
        kind = "List"
        if "PartialObjectMetadataList" in (handler.headers.get("Accept") or ""):
            kind = "PartialObjectMetadataList"
            items = [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                      "metadata": i["metadata"]} for i in items]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        api_version = "meta.k8s.io/v1" if kind != "List" else "v1"
        self._json(handler, 200, {"kind": kind, "apiVersion": api_version, "metadata": meta, "items": page})

    def _watch(self, handler: BaseHTTPRequestHandler, path: str, query: Mapping[str, str]) -> None:
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 30)
        with self.cond:
            self.cond.wait_for(lambda: not self._held, timeout=60)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        sock = handler.connection
        with self.cond:
            self._open_watches.add(sock)
            generation = self._drop_generation
        try:
            if since < self.floor:
                self._chunk(
                    handler,
                    {
                        "type": "ERROR",
                        "object": _status(
                            410, f"too old resource version: {since} ({self.floor})", reason="Expired"
                        ),
                    },
                )
                self._end(handler)
                return
            position = since
            with self.cond:
                deadline_wait = timeout
                while True:
                    if self._drop_generation != generation:
                        return  # cut: no final chunk
                    if position < self.floor:
                        # compacted while watching: a real server ends the watch with 410 too
                        pending_error = True
                        break
                    pending = [e for e in self.events if e[0] > position and e[1] == path]
                    if pending:
                        self.cond.release()
                        try:
                            for rv, _, etype, obj in pending:
                                self._chunk(handler, {"type": etype, "object": obj})
                                position = rv
                        finally:
                            self.cond.acquire()
                        continue
                    # Nothing for this resource: tell the client how far it is (a bookmark).
                    if self.rv > position and query.get("allowWatchBookmarks") == "true":
                        position = self.rv
                        self.cond.release()
                        try:
                            self._chunk(
                                handler,
                                {
                                    "type": "BOOKMARK",
                                    "object": {
                                        "kind": "Pod",
                                        "apiVersion": "v1",
                                        "metadata": {"resourceVersion": str(position)},
                                    },
                                },
                            )
                        finally:
                            self.cond.acquire()
                        continue
                    if deadline_wait <= 0:
                        pending_error = False
                        break
                    self.cond.wait(timeout=min(deadline_wait, 0.5))
                    deadline_wait -= 0.5
            if pending_error:
                self._chunk(handler, {"type": "ERROR", "object": _status(410, "compacted", reason="Expired")})
            self._end(handler)
        except OSError:
            return
        finally:
            with self.cond:
                self._open_watches.discard(sock)

    @staticmethod
    def _chunk(handler: BaseHTTPRequestHandler, event: Mapping[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()

    @staticmethod
    def _end(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
        handler.close_connection = True

    @staticmethod
    def _json(handler: BaseHTTPRequestHandler, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def _status(code: int, message: str, reason: str = "") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or {404: "NotFound", 410: "Gone"}.get(code, "InternalError"),
        "code": code,
    }


def kubeconfig(server: str) -> str:
    """A kubeconfig naming ``server`` with no credentials (the fake asks for none)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": server}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }
    )
