"""The results cache: reuse for settled windows only, expiry, LRU bound, one computation for
concurrent identical requests, errors never cached."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.cache import ResultCache
from api.prometheus import PrometheusClient
from tests.api.conftest import SCHEDULER, TEAM_A, auth, register_demo
from tests.api.promdata import RunningPrometheus
from tests.api.scenario import Scenario
from tests.support import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_expiry_and_bound() -> None:
    clock = Clock()
    cache = ResultCache(ttl=10, max_entries=2, clock=clock)
    calls: list[str] = []

    def make(key: str) -> Callable[[], str]:
        return lambda: calls.append(key) or key  # type: ignore[func-returns-value]

    assert cache.get_or_compute("a", make("a")) == "a"
    assert cache.get_or_compute("a", make("a")) == "a"
    assert calls == ["a"]
    cache.get_or_compute("b", make("b"))
    cache.get_or_compute("a", make("a"))  # a is now the most recent
    cache.get_or_compute("c", make("c"))  # evicts b
    cache.get_or_compute("b", make("b"))
    assert calls == ["a", "b", "c", "b"] and len(cache) == 2
    clock.now = 11
    cache.get_or_compute("b", make("b"))
    assert calls[-1] == "b" and len(calls) == 5
    assert ResultCache(ttl=0, max_entries=5).enabled is False


def test_concurrent_requests_share_one_computation_and_errors_are_not_kept() -> None:
    cache = ResultCache(ttl=60, max_entries=10)
    release = threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        release.wait(10)
        return 42

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("k", slow))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    # Let every thread reach the cache before the computation finishes.
    wait_until(lambda: cache.misses == 1, timeout=10, message="the first computation to start")
    release.set()
    for t in threads:
        t.join(10)
    assert results == [42] * 8 and calls == [1]

    def boom() -> int:
        raise RuntimeError("prometheus said no")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("e", boom)
    assert cache.get_or_compute("e", lambda: 7) == 7


class CountingPrometheus(PrometheusClient):
    def __init__(self, url: str) -> None:
        super().__init__(url, httpx.Client(), timeout=10)
        self.calls = 0

    def query(self, promql: str, at: float | None = None) -> Any:
        self.calls += 1
        return super().query(promql, at)

    def query_range(self, promql: str, start: float, end: float, step: float) -> Any:
        self.calls += 1
        return super().query_range(promql, start, end, step)

    def series(self, selector: str, start: float, end: float) -> Any:
        self.calls += 1
        return super().series(selector, start, end)


def test_settled_windows_are_reused_running_ones_are_not(
    make_client: Callable[..., TestClient], prometheus: RunningPrometheus, scenario: Scenario
) -> None:
    counting = CountingPrometheus(prometheus.url)
    client = make_client(prometheus=counting)
    register_demo(client, scenario)
    first = client.get("/v1/jobs/demo-fail/summary", headers=auth(TEAM_A)).json()
    after_first = counting.calls
    second = client.get("/v1/jobs/demo-fail/summary", headers=auth(TEAM_A)).json()
    assert counting.calls == after_first and second["gpus"] == first["gpus"]
    client.get("/v1/jobs/demo-fail/metrics", params={"name": "gpu_util"}, headers=auth(TEAM_A))
    calls = counting.calls
    client.get("/v1/jobs/demo-fail/metrics", params={"name": "gpu_util"}, headers=auth(TEAM_A))
    assert counting.calls == calls
    # A running job's window ends now: always asked afresh (here: which GPUs it holds, none).
    live = {"tenant": "team-a", "status": "running", "started_at": scenario.base}
    client.put("/v1/jobs/live", json=live, headers=auth(SCHEDULER))
    client.get("/v1/jobs/live/metrics", params={"name": "gpu_util"}, headers=auth(TEAM_A))
    calls = counting.calls
    client.get("/v1/jobs/live/metrics", params={"name": "gpu_util"}, headers=auth(TEAM_A))
    assert counting.calls == calls + 1
