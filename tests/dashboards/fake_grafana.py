"""An in-test HTTP server on 127.0.0.1 that answers the Grafana HTTP API calls jobsight makes
(folders, dashboards/db, annotations) with Grafana-shaped responses, and records every request."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.support import RecordedRequest, RecordingHTTPServer, Reply


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def _request(recorded: RecordedRequest) -> Request:
    body = json.loads(recorded.body) if recorded.body else None
    return Request(recorded.method, urlsplit(recorded.path).path, recorded.headers, body)


class FakeGrafana:
    def __init__(self, token: str) -> None:
        self.token = token
        self.folders: list[dict[str, Any]] = []
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.annotations: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self._http = RecordingHTTPServer(self._reply)
        self.url = self._http.url

    def __enter__(self) -> FakeGrafana:
        self._http.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.__exit__(*exc)

    @property
    def requests(self) -> list[Request]:
        """The requests so far, with the path without its query and the JSON body decoded."""
        return [_request(r) for r in self._http.snapshot()]

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def _reply(self, recorded: RecordedRequest) -> Reply:
        request = _request(recorded)
        status, answer = self._answer(
            request.method, request.path, recorded.headers.get("authorization"), request.body
        )
        return Reply(status, json.dumps(answer).encode(), "application/json")

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
