"""An in-test HTTP server on 127.0.0.1 that answers the Grafana HTTP API calls jobsight makes
(folders, dashboards/db, annotations) with Grafana-shaped responses, and records every request."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeGrafana:
    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[Request] = []
        self.folders: list[dict[str, Any]] = []
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.annotations: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path = urlsplit(self.path).path
                with fake._lock:
                    fake.requests.append(
                        Request(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status, answer = fake._answer(self.command, path, self.headers.get("Authorization"), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _handle
            do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGrafana:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def calls(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(r.method, r.path) for r in self.requests]

    def _answer(self, method: str, path: str, authorization: str | None, body: Any) -> tuple[int, Any]:
        if authorization != f"Bearer {self.token}":
            return 401, {"message": "invalid API key"}
        if self.fail_with is not None:
            return self.fail_with, {"message": "internal server error"}
        if (method, path) == ("GET", "/api/folders"):
            return 200, self.folders
        if (method, path) == ("POST", "/api/folders"):
            if any(f["title"] == body["title"] for f in self.folders):
                return 409, {"message": "a folder with the same name already exists"}
            folder = {
                "id": len(self.folders) + 1,
                "uid": f"folder{len(self.folders) + 1}",
                "title": body["title"],
            }
            self.folders.append(folder)
            return 200, {**folder, "url": f"/dashboards/f/{folder['uid']}/"}
        if (method, path) == ("POST", "/api/dashboards/db"):
            dashboard = body["dashboard"]
            uid = dashboard["uid"]
            if uid in self.dashboards and not body.get("overwrite"):
                return 412, {
                    "message": "The dashboard has been changed by someone else",
                    "status": "version-mismatch",
                }
            version = self.dashboards.get(uid, {}).get("version", 0) + 1
            slug = re.sub(r"[^a-z0-9]+", "-", dashboard["title"].lower()).strip("-")
            self.dashboards[uid] = {
                "version": version,
                "folderUid": body.get("folderUid"),
                "dashboard": dashboard,
            }
            return 200, {
                "id": len(self.dashboards),
                "uid": uid,
                "url": f"/d/{uid}/{slug}",
                "status": "success",
                "version": version,
                "slug": slug,
            }
        if (method, path) == ("POST", "/api/annotations"):
            self.annotations.append(body)
            return 200, {"message": "Annotation added", "id": len(self.annotations)}
        return 404, {"message": "Not found"}
