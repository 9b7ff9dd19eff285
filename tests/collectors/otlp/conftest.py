"""A real receiver on 127.0.0.1 (free port) over a store with a hand-moved clock."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from collectors.otlp.collector import TrainingCollector
from collectors.otlp.server import OtlpReceiver
from collectors.otlp.store import TrainingStore
from jobsight.serving import ListenAddress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Agent:
    receiver: OtlpReceiver
    store: TrainingStore
    clock: FakeClock
    registry: CollectorRegistry

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def make_agent(max_series_per_job: int = 2048, max_jobs: int = 256, max_body_bytes: int = 8 << 20) -> Agent:
    clock = FakeClock()
    store = TrainingStore(
        max_jobs=max_jobs, max_series_per_job=max_series_per_job, expire_after_s=60.0, clock=clock
    )
    receiver = OtlpReceiver(store, ListenAddress("127.0.0.1", 0), max_body_bytes=max_body_bytes).start()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrainingCollector(store, "node-a", receiver.request_counts))
    return Agent(receiver, store, clock, registry)


@pytest.fixture
def agent() -> Iterator[Agent]:
    made = make_agent()
    yield made
    made.receiver.stop()
