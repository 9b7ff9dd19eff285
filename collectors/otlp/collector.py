"""``jobsight_train_*`` families from the training store, built fresh on every scrape.

Every series carries ``job_id``, ``rank`` and ``Hostname`` (this node's host key: the agent's,
not one a sender names, so a rank's series join to its node's GPU and node series by host).
``jobsight_train_rank_info`` adds ``local_rank``, ``world_size`` and ``gpu`` where the tracker
knew them; the rules join it on ``(job_id, rank)`` to name a rank's GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString as _float_to_go_string

from collectors.otlp.store import COUNTER, FAMILIES, HISTOGRAM, TrainingStore

PREFIX = "jobsight_train_"
# prometheus_client's own ``le`` formatting (untyped there), so bounds read as its histograms' do.
floatToGoString = cast(Callable[[float], str], _float_to_go_string)
_LABELS = ["job_id", "rank", "Hostname"]
_INFO_LABELS = ["local_rank", "world_size", "gpu"]

_HELP = {
    "step_seconds": "Time between consecutive training steps of a rank (jobsight.training).",
    "phase_seconds": "Time a rank spent in each phase of its steps.",
    "steps": "Training steps a rank finished.",
    "samples": "Samples a rank processed.",
    "tokens": "Tokens a rank processed.",
    "export_failures": "Exports of a rank's tracker that failed (agent away, slow or erroring).",
    "last_step_timestamp_seconds": "When a rank last finished a step (Unix time).",
    "loss": "Loss a rank reported with its last step.",
    "phase_entered_timestamp_seconds": "When a rank entered the phase it is in now (Unix time).",
}


class TrainingCollector:
    def __init__(
        self,
        store: TrainingStore,
        hostname: str,
        request_counts: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.store = store
        self.hostname = hostname
        self.request_counts = request_counts

    def collect(self) -> Iterator[Metric]:
        snapshot = self.store.snapshot()
        families: dict[str, Metric] = {}
        for family in FAMILIES.values():
            labels = [*_LABELS, "phase"] if family.phased else _LABELS
            name = PREFIX + family.name
            if family.kind == HISTOGRAM:
                families[family.name] = HistogramMetricFamily(name, _HELP[family.name], labels=labels)
            elif family.kind == COUNTER:
                families[family.name] = CounterMetricFamily(name, _HELP[family.name], labels=labels)
            else:
                families[family.name] = GaugeMetricFamily(name, _HELP[family.name], labels=labels)
        info = GaugeMetricFamily(
            PREFIX + "rank_info",
            "A rank of a training job reporting through jobsight.training, with its GPU where known.",
            labels=[*_LABELS, *_INFO_LABELS],
        )
        for state in snapshot.ranks:
            base = [state.job_id, str(state.rank), self.hostname]
            info.add_metric([*base, *(state.info.get(k, "") for k in _INFO_LABELS)], 1.0)
            for (name, phase), value in state.values.items():
                family_metric = families[name]
                labels = [*base, phase] if phase else base
                assert isinstance(family_metric, CounterMetricFamily | GaugeMetricFamily)
                family_metric.add_metric(labels, value)
            for (name, phase), hist in state.histograms.items():
                histogram = families[name]
                assert isinstance(histogram, HistogramMetricFamily)
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
                    cumulative += count
                    buckets.append((floatToGoString(bound), float(cumulative)))
                histogram.add_metric([*base, phase] if phase else base, buckets, hist.sum)
        yield info
        yield from families.values()
        dropped = CounterMetricFamily(
            "jobsight_otlp_series_dropped",
            "Data points of a job the receiver dropped because the job reached its series cap.",
            labels=["job_id"],
        )
        for job_id, count in sorted(snapshot.dropped_by_job.items()):
            dropped.add_metric([job_id], float(count))
        yield dropped
        rejected = CounterMetricFamily(
            "jobsight_otlp_data_points_rejected",
            "OTLP data points the receiver refused, by reason (series_cap, job_id, rank, phase, "
            "unknown_metric, type, value, too_many_jobs).",
            labels=["reason"],
        )
        for reason, count in sorted(snapshot.rejected.items()):
            rejected.add_metric([reason], float(count))
        yield rejected
        yield GaugeMetricFamily("jobsight_otlp_jobs", "Jobs with live training series.", value=snapshot.jobs)
        if self.request_counts is not None:
            requests = CounterMetricFamily(
                "jobsight_otlp_requests",
                "OTLP export requests answered, by HTTP status code.",
                labels=["code"],
            )
            for code, count in sorted(self.request_counts().items()):
                requests.add_metric([code], float(count))
            yield requests
