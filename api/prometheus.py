"""A small Prometheus HTTP API client (httpx) with escaping helpers.

Every failure to get an answer (connection refused, timeout, 5xx, an error status in the body)
becomes :class:`DependencyUnavailable` naming "prometheus"; a 4xx "bad_data" answer means we built
a bad query, which is a bug, and is raised as :class:`PrometheusQueryError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from jobsight.errors import DependencyUnavailable, JobsightError

# Prometheus refuses range queries that would return more than 11,000 points per series.
MAX_POINTS_PER_SERIES = 11_000


class PrometheusQueryError(JobsightError):
    """Prometheus rejected a query as malformed."""


def escape_label_value(value: str) -> str:
    """Escape a value for use inside a double-quoted PromQL label matcher."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def matcher(label: str, value: str) -> str:
    return f'{label}="{escape_label_value(value)}"'


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
    def __init__(self, base_url: str, client: httpx.Client, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client
        self._timeout = timeout

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            response = self._client.post(
                f"{self.base_url}{path}", data=params, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("prometheus", f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code in (429, 503):
            raise DependencyUnavailable("prometheus", f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise DependencyUnavailable("prometheus", f"HTTP {response.status_code}: not JSON") from exc
        if body.get("status") != "success":
            if response.status_code == 400 or body.get("errorType") == "bad_data":
                raise PrometheusQueryError(f"{body.get('errorType')}: {body.get('error')}")
            raise DependencyUnavailable("prometheus", f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def ping(self) -> None:
        try:
            response = self._client.get(f"{self.base_url}/-/ready", timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("prometheus", f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise DependencyUnavailable("prometheus", f"not ready (HTTP {response.status_code})")

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data.get("resultType") != "vector":
            raise PrometheusQueryError(f"expected a vector, got {data.get('resultType')}")
        out = []
        for item in data["result"]:
            value = float(item["value"][1])
            if math.isnan(value):
                continue
            out.append(Sample(dict(item["metric"]), value))
        return out

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[RangeSeries]:
        data = self._get(
            "/api/v1/query_range",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": repr(float(step))},
        )
        return [
            RangeSeries(
                dict(item["metric"]),
                [(float(t), float(v)) for t, v in item["values"] if not math.isnan(float(v))],
            )
            for item in data["result"]
        ]


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
