"""``PUT /v1/jobs/{id}`` for the hooks, with the standard library's HTTP client.

A hook's whole run must stay within tens of milliseconds of start-up (a Prolog delays the job),
and importing a full HTTP client costs more than this one request needs; everything here is one
request with one deadline. Failures are sorted into the spool's two kinds: worth retrying
(connection refused, timeout, 5xx, 429, and 401/403 — a token misconfigured is fixed by a person,
and the record must still be there when it is) and refused for good (other 4xx).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from schedulers.slurm.spool import PermanentRejection, TransientFailure

_RETRY_STATUSES = {401, 403, 408, 425, 429}
_MAX_ERROR_BYTES = 2048


class JobsClient:
    def __init__(self, api_url: str, token: str | None, timeout: float) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def put_job(self, job_id: str, body: dict[str, Any]) -> None:
        url = f"{self.api_url}/v1/jobs/{urllib.parse.quote(job_id, safe='')}"
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(_MAX_ERROR_BYTES)
        except urllib.error.HTTPError as exc:
            detail = exc.read(_MAX_ERROR_BYTES).decode("utf-8", "replace").strip()
            message = f"PUT {url}: HTTP {exc.code}: {detail}"
            if exc.code >= 500 or exc.code in _RETRY_STATUSES:
                raise TransientFailure(message) from exc
            raise PermanentRejection(message) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientFailure(f"PUT {url}: {reason}") from exc
