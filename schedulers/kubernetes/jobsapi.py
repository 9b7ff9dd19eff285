"""The job API as the watcher uses it: ``PUT /v1/jobs/{id}``, ``GET /v1/jobs/{id}`` and the paged
``GET /v1/jobs?scheduler=…``, with a ``scheduler`` token. httpx errors are translated here:
:class:`DependencyUnavailable` for what is worth retrying (the API down, 5xx, 429, a token refused:
a person fixes it and the state must still be delivered), :class:`InvalidInput` for a body the API
refuses for good."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx

from jobsight.errors import DependencyUnavailable, InvalidInput

_RETRY = {401, 403, 408, 425, 429}


class JobsApi:
    def __init__(self, api_url: str, token: str | None, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None, verify: Any = True) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.api_url = api_url.rstrip("/")
        self._client = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout,
                                    transport=transport, verify=verify)

    def _path(self, job_id: str) -> str:
        return f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}"

    def put(self, job_id: str, body: dict[str, Any]) -> None:
        self._check(self._send("PUT", job_id, body), job_id)

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job as the API has it, or None if it does not know it."""
        response = self._send("GET", job_id, None)
        if response.status_code == 404:
            return None
        self._check(response, job_id)
        found: dict[str, Any] = response.json()
        return found

    def list_jobs(self, scheduler: str, page_size: int = 1000,
                  max_pages: int = 10_000) -> Iterator[dict[str, Any]]:
        """Every job the API has from ``scheduler``, newest first, one request per ``page_size``.
        Raises :class:`DependencyUnavailable` (retry later) or :class:`InvalidInput` (an API that
        cannot filter by scheduler) as :meth:`get` does."""
        cursor: str | None = None
        for _ in range(max_pages):
            params: dict[str, Any] = {"scheduler": scheduler, "limit": page_size}
            if cursor:
                params["cursor"] = cursor
            try:
                response = self._client.get("/v1/jobs", params=params)
            except httpx.HTTPError as exc:
                raise DependencyUnavailable("jobsight API", f"GET /v1/jobs: {exc}") from exc
            self._check(response, "")
            try:
                page = response.json()
                jobs, cursor = page["jobs"], page.get("next_cursor")
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInput(f"GET /v1/jobs: not a job list: {exc}") from exc
            yield from (job for job in jobs if isinstance(job, dict))
            if not cursor:
                return

    def _send(self, method: str, job_id: str, body: dict[str, Any] | None) -> httpx.Response:
        try:
            return self._client.request(method, self._path(job_id), json=body)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("jobsight API", f"{method} {self._path(job_id)}: {exc}") from exc

    def _check(self, response: httpx.Response, job_id: str) -> None:
        if response.is_success:
            return
        detail = response.text[:2048].strip()
        message = f"{response.request.method} {self._path(job_id)}: HTTP {response.status_code}: {detail}"
        if response.status_code >= 500 or response.status_code in _RETRY:
            raise DependencyUnavailable("jobsight API", message)
        raise InvalidInput(message)

    def close(self) -> None:
        self._client.close()
