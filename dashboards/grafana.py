"""The boundary to Grafana: a grafana-client ``GrafanaApi`` made from a URL and a token, and the
translation of its errors into jobsight's. Everything else in this package takes the client as an
argument."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from jobsight.errors import ConfigError, DependencyUnavailable, InvalidInput

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
