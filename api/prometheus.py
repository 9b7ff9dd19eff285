"""A small Prometheus HTTP API client (httpx) with escaping helpers.

Every failure to get an answer (connection refused, a call past its total deadline, 5xx, an
answer too large or of the wrong shape, an error status in the body) becomes
:class:`DependencyUnavailable` naming "prometheus"; a 4xx "bad_data" answer means we built a bad
query, which is a bug, and is raised as :class:`PrometheusQueryError`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from api.deadline import deadline
from jobsight.errors import DependencyUnavailable, JobsightError

# Prometheus refuses range queries that would return more than 11,000 points per series.
MAX_POINTS_PER_SERIES = 11_000
# 11,000 points of a few dozen series fit easily; a bigger answer is a fault, not data.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class PrometheusQueryError(JobsightError):
    """Prometheus rejected a query as malformed."""


def escape_label_value(value: str) -> str:
    """Escape a value for use inside a double-quoted PromQL label matcher."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def matcher(label: str, value: str) -> str:
    return f'{label}="{escape_label_value(value)}"'


# RE2 metacharacters: a label value put into a regex matcher is matched literally after these are
# escaped (Prometheus, VictoriaMetrics, Thanos and Mimir all anchor label regexes at both ends).
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def regex_literal(value: str) -> str:
    """``value`` as an RE2 pattern that matches exactly that string."""
    return _RE2_SPECIAL.sub(r"\\\1", value)


def any_of(label: str, values: Sequence[str]) -> str:
    """A matcher for exactly these label values: ``label="v"`` for one, an anchored alternation of
    escaped literals for several. An empty list would match series *without* the label, so it is
    refused: a caller with nothing to select must not ask."""
    unique = sorted(set(values))
    if not unique:
        raise ValueError(f"no values for a {label} matcher")
    if len(unique) == 1:
        return matcher(label, unique[0])
    pattern = "|".join(regex_literal(v) for v in unique)
    return f'{label}=~"{escape_label_value(pattern)}"'


def duration(seconds: float) -> str:
    """A PromQL duration literal of at least one second."""
    return f"{max(1, math.ceil(seconds))}s"


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class RangeSeries:
    labels: dict[str, str]
    points: list[tuple[float, float]]


class PrometheusClient:
    """Queries with a total deadline of ``timeout`` seconds per call (enforced at the socket when
    ``client`` uses :class:`api.deadline.DeadlineTransport`, and between body chunks always), an
    answer of at most ``max_bytes`` (decoded), and every answer checked for the shape the
    Prometheus HTTP API documents. Whatever goes wrong on Prometheus' side is
    :class:`DependencyUnavailable` (the API's 503), never a 500."""

    def __init__(self, base_url: str, client: httpx.Client, timeout: float = 5.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._clock = clock

    def _fetch(self, method: str, path: str, params: dict[str, Any] | None,
               max_bytes: int) -> tuple[int, bytes]:
        """Status and body of one call, within the deadline and the size cap."""
        with deadline(self._timeout, self._clock) as at:
            try:
                with self._client.stream(method, f"{self.base_url}{path}", data=params,
                                         timeout=self._timeout) as response:
                    if response.status_code >= 500 or response.status_code in (429, 503):
                        raise DependencyUnavailable("prometheus", f"HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise _too_big(max_bytes)
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise _too_big(max_bytes)
                        if self._clock() > at:
                            raise _too_slow(self._timeout)
                        chunks.append(chunk)
                    return response.status_code, b"".join(chunks)
            except httpx.TimeoutException as exc:
                raise _too_slow(self._timeout) from exc
            except (httpx.HTTPError, httpx.StreamError) as exc:
                raise DependencyUnavailable("prometheus", f"{type(exc).__name__}: {exc}") from exc

    def _get(self, path: str, params: dict[str, Any], result_key: str | None = "result") -> Any:
        status, raw = self._fetch("POST", path, params, self._max_bytes)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise DependencyUnavailable("prometheus", f"HTTP {status}: not JSON") from exc
        if not isinstance(body, dict):
            raise _malformed("the answer is not a JSON object")
        if body.get("status") != "success":
            # Prometheus' own words, shortened: they end up in an error answer and a log line.
            said = f"{str(body.get('errorType'))[:40]}: {str(body.get('error'))[:300]}"
            if status == 400 or body.get("errorType") == "bad_data":
                raise PrometheusQueryError(said)
            raise DependencyUnavailable("prometheus", said)
        data = body.get("data")
        if result_key is None:
            return data
        if not isinstance(data, dict) or not isinstance(data.get(result_key), list):
            raise _malformed("no data.result list")
        return data

    def ping(self) -> None:
        status, _ = self._fetch("GET", "/-/ready", None, 64 * 1024)
        if status != 200:
            raise DependencyUnavailable("prometheus", f"not ready (HTTP {status})")

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data.get("resultType") != "vector":
            raise _malformed(f"expected a vector, got {str(data.get('resultType'))[:40]}")
        out = []
        try:
            for item in data["result"]:
                value = float(item["value"][1])
                if math.isnan(value):
                    continue
                out.append(Sample(_labels(item["metric"]), value))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise _malformed(f"a vector sample is not [time, \"number\"]: {exc}") from exc
        return out

    def series(self, selector: str, start: float, end: float) -> list[dict[str, str]]:
        """Label sets of the series ``selector`` names that have samples in ``[start, end]``, from
        the index (``/api/v1/series``): no samples are read, so a month costs what a minute does."""
        params = {"match[]": selector, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        data = self._get("/api/v1/series", params, result_key=None)
        if not isinstance(data, list):
            raise _malformed("series data is not a list")
        try:
            return [_labels(item) for item in data]
        except TypeError as exc:
            raise _malformed(f"a series is not a label map: {exc}") from exc

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[RangeSeries]:
        data = self._get(
            "/api/v1/query_range",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": repr(float(step))},
        )
        if data.get("resultType") != "matrix":
            raise _malformed(f"expected a matrix, got {str(data.get('resultType'))[:40]}")
        try:
            return [
                RangeSeries(
                    _labels(item["metric"]),
                    [(float(t), float(v)) for t, v in item["values"] if not math.isnan(float(v))],
                )
                for item in data["result"]
            ]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise _malformed(f"a matrix series is not [[time, \"number\"], ...]: {exc}") from exc


def _labels(metric: Any) -> dict[str, str]:
    if not isinstance(metric, dict) or not all(isinstance(v, str) for v in metric.values()):
        raise TypeError("labels are not a string map")
    return dict(metric)


def _malformed(what: str) -> DependencyUnavailable:
    return DependencyUnavailable("prometheus", f"malformed answer: {what}")


def _too_big(limit: int) -> DependencyUnavailable:
    return DependencyUnavailable("prometheus", f"answer larger than {limit} bytes")


def _too_slow(seconds: float) -> DependencyUnavailable:
    return DependencyUnavailable("prometheus", f"no complete answer within {seconds:g} s")


def choose_step(start: float, end: float, requested: float | None, default_points: int = 720,
                min_step: float = 15.0) -> float:
    """The step for a range query: the requested one (or one giving about ``default_points``),
    raised where needed so that no series exceeds Prometheus' point limit."""
    span = max(end - start, 0.0)
    step = requested if requested is not None else max(min_step, span / default_points)
    # (span / step) + 1 points per series; keep a margin of one below the hard limit.
    floor = span / (MAX_POINTS_PER_SERIES - 2) if span > 0 else 0.0
    step = max(step, floor, 0.001)
    return float(math.ceil(step)) if step >= 1 else step
