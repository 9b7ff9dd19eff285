"""Job start and failure annotations in Grafana, when the API is given a Grafana URL and token.

Best effort and off the request path: an annotation that cannot be written is logged and counted,
never a failed request or a lost notification."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from jobsight.errors import JobsightError

log = logging.getLogger(__name__)


class JobAnnotator(Protocol):
    def annotate(self, job_id: str, text: str, time_ms: int, tags: Sequence[str]) -> None: ...


class NoAnnotations:
    """No Grafana configured."""

    def annotate(self, job_id: str, text: str, time_ms: int, tags: Sequence[str]) -> None:
        return None


class GrafanaAnnotator:
    """Writes annotations through grafana-client (``jobsight.grafana``); the client is made on first
    use so a Grafana that is down at start-up costs nothing until there is something to say."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self.failures = 0
        self._client: Any = None
        self._lock = threading.Lock()

    def annotate(self, job_id: str, text: str, time_ms: int, tags: Sequence[str]) -> None:
        from jobsight.grafana import annotate_job, make_client

        try:
            with self._lock:
                if self._client is None:
                    self._client = make_client(self.url, self.token, timeout=self.timeout)
                client = self._client
            annotate_job(client, job_id, text, time_ms, tags)
        except JobsightError as exc:
            self.failures += 1
            log.warning("Grafana annotation for job %s not written: %s", job_id, exc)
