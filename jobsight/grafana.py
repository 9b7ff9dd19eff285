"""The boundary to Grafana: a grafana-client ``GrafanaApi`` made from a URL and a token, the
translation of its errors into jobsight's, and job annotations.

In the kernel because two components talk to Grafana: ``dashboards`` (installing dashboards) and
``api`` (job start and failure annotations). Everything else takes the client as an argument.

Annotations are organisation-wide (not bound to one dashboard) and tagged ``jobsight`` and
``job_id:<id>``; the job dashboard shows those whose tag matches its ``job_id`` variable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from jobsight.errors import ConfigError, DependencyUnavailable, InvalidInput
from jobsight.jobid import validate_job_id

T = TypeVar("T")


def make_client(url: str, token: str, *, timeout: float = 10.0) -> Any:
    """A grafana-client ``GrafanaApi`` for ``url`` (e.g. ``http://grafana:3000``) authenticating with
    a service-account token (sent as ``Authorization: Bearer``)."""
    from grafana_client.api import GrafanaApi

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"invalid Grafana URL {url!r}: expected http(s)://host[:port][/path]")
    if not token or any(c.isspace() for c in token):
        raise ConfigError("invalid Grafana token: it must be non-empty and have no whitespace")
    return GrafanaApi.from_url(url, credential=token, timeout=timeout)


def call(what: str, request: Callable[[], T]) -> T:
    """Run one grafana-client call, translating its failures: a rejected token is a ConfigError, an
    unreachable or failing Grafana is DependencyUnavailable("grafana"), another 4xx is
    InvalidInput, all naming ``what`` was being done."""
    from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

    try:
        return request()
    except GrafanaUnauthorizedError as exc:
        raise ConfigError(f"Grafana rejected the token while trying to {what} (401)") from exc
    except GrafanaClientError as exc:
        if exc.status_code == 403:
            raise ConfigError(f"the Grafana token may not {what} (403): {exc.message}") from exc
        raise InvalidInput(f"Grafana refused to {what} ({exc.status_code}): {exc.message}") from exc
    except GrafanaException as exc:
        raise DependencyUnavailable("grafana", f"cannot {what}: {exc.message}") from exc
    except OSError as exc:  # connection refused, DNS, TLS: niquests' errors are OSErrors
        raise DependencyUnavailable("grafana", f"cannot {what}: {exc}") from exc


def job_tag(job_id: str) -> str:
    return f"job_id:{job_id}"


def annotate_job(
    client: Any,
    job_id: str,
    text: str,
    time_ms: int,
    tags: Sequence[str] = (),
    *,
    time_end_ms: int | None = None,
) -> int:
    """Add an annotation for job ``job_id`` at ``time_ms`` (epoch milliseconds; with ``time_end_ms``
    a region) and return its Grafana id. ``tags`` are added to ``jobsight`` and ``job_id:<id>``."""
    validate_job_id(job_id)
    if time_ms < 0 or (time_end_ms is not None and time_end_ms < time_ms):
        raise InvalidInput(f"invalid annotation time {time_ms}..{time_end_ms}")
    if not text.strip():
        raise InvalidInput("annotation text is empty")
    all_tags = ["jobsight", job_tag(job_id), *(t for t in tags if t not in ("jobsight", job_tag(job_id)))]
    answer = call(
        f"annotate job {job_id}",
        lambda: client.annotations.add_annotation(
            time_from=time_ms, time_to=time_end_ms, tags=all_tags, text=text
        ),
    )
    return int(answer["id"])
