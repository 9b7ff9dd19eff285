"""The summary's ``training`` section and the hang finding (api/training.py) against a real
Prometheus over a promtool-built history, and the diagnosis using a hang as a cause."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api.diagnosis import Finding, diagnose
from api.models import TrainingSummary
from api.prometheus import PrometheusClient
from api.training import training_facts
from tests.api.promdata import RunningPrometheus, SeriesBook, run_prometheus

T0 = 1_700_000_000.0
STEP = 15.0  # one sample per scrape; the job steps once per second
HANG_AT = T0 + 600
END = T0 + 1200


def _job(book: SeriesBook, job_id: str, hang: bool) -> None:
    """Four ranks on two hosts stepping once a second (0.5 s of compute, 1.5 s for rank 3 of the
    healthy job); with ``hang`` they stop at HANG_AT: rank 2 inside compute, the others in sync."""
    stop = HANG_AT if hang else END

    def steps(t: float) -> float:
        return min(t, stop) - T0

    def last(t: float) -> float:
        return min(t, stop)

    def per_step(k: float) -> Callable[[float], float]:
        return lambda t: k * steps(t)

    def entered_at(at: float) -> Callable[[float], float | None]:
        return lambda t: at if t >= HANG_AT else None

    for rank in range(4):
        labels = {"job_id": job_id, "rank": str(rank), "Hostname": "n1" if rank < 2 else "n2"}
        book.add_range("jobsight_train_rank_info", {**labels, "gpu": str(rank % 2)}, _times(), lambda t: 1.0)
        compute = 1.5 if (rank == 3 and not hang) else 0.5
        book.add_range("jobsight_train_steps_total", labels, _times(), steps)
        book.add_range("jobsight_train_samples_total", labels, _times(), per_step(8))
        book.add_range("jobsight_train_last_step_timestamp_seconds", labels, _times(), last)
        for le, share in (("0.5", 0.0), ("1.0", 1.0), ("+Inf", 1.0)):
            book.add_range(
                "jobsight_train_step_seconds_bucket", {**labels, "le": le}, _times(), per_step(share)
            )
        book.add_range("jobsight_train_step_seconds_sum", labels, _times(), steps)
        book.add_range("jobsight_train_step_seconds_count", labels, _times(), steps)
        phase = {**labels, "phase": "compute"}
        book.add_range("jobsight_train_phase_seconds_sum", phase, _times(), per_step(compute))
        book.add_range("jobsight_train_phase_seconds_count", phase, _times(), steps)
        if hang:
            where = "compute" if rank == 2 else "sync"
            entered = HANG_AT - (0.6 if rank == 2 else 0.1)
            book.add_range(
                "jobsight_train_phase_entered_timestamp_seconds",
                {**labels, "phase": where},
                _times(),
                entered_at(entered),
            )


def _times() -> list[float]:
    return [T0 + i * STEP for i in range(int((END - T0) / STEP) + 1)]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPrometheus]:
    work = tmp_path_factory.mktemp("train-summary")
    book = SeriesBook()
    _job(book, "hung-job", hang=True)
    _job(book, "fine-job", hang=False)
    with run_prometheus(book.write_blocks(work), work) as running:
        yield running


def _facts(prometheus: RunningPrometheus, job_id: str) -> tuple[TrainingSummary | None, list[Finding]]:
    with httpx.Client() as http, ThreadPoolExecutor(4) as pool:
        client = PrometheusClient(prometheus.url, http, timeout=30)
        return training_facts(client, pool, job_id, T0, END)


def test_a_hung_job_names_the_rank_not_in_the_others_phase(prometheus: RunningPrometheus) -> None:
    summary, findings = _facts(prometheus, "hung-job")
    assert summary is not None
    assert summary.ranks == 4 and summary.steps == pytest.approx(600)
    assert summary.samples == pytest.approx(4 * 8 * 600)
    assert summary.step_seconds_p50 is not None and 0.5 < summary.step_seconds_p50 <= 1.0
    assert summary.hang is not None
    assert summary.hang.ranks == [2] and summary.hang.waiting_phase == "sync"
    assert summary.hang.stopped_at is not None and summary.hang.stopped_at.timestamp() == HANG_AT
    assert summary.hang.detail == (
        "rank 2 stopped stepping at 2023-11-14 22:23:20 UTC (in compute) while the others waited in sync"
    )
    # 600 s without a step at the end, over the 300 s threshold for the second half of that.
    assert 240 <= summary.stalled_seconds <= 330
    [finding] = findings
    assert (finding.kind, finding.rank, finding.host, finding.gpu) == ("job_hung", 2, "n2", 0)


def test_a_stepping_job_is_not_hung_and_its_slowest_rank_leads(prometheus: RunningPrometheus) -> None:
    summary, findings = _facts(prometheus, "fine-job")
    assert summary is not None and findings == []
    assert summary.hang is None and summary.stalled_seconds == 0
    slowest = summary.slowest_ranks[0]
    assert (slowest.rank, slowest.host, slowest.gpu) == (3, "n2", 1)
    assert slowest.compute_seconds_mean == pytest.approx(1.5, rel=0.01)
    assert slowest.slowdown == pytest.approx(3.0, rel=0.01)
    assert summary.samples_per_second == pytest.approx(4 * 8, rel=0.05)
    assert summary.step_seconds_mean == pytest.approx(1.0)


def test_a_job_without_training_telemetry_has_no_section(prometheus: RunningPrometheus) -> None:
    assert _facts(prometheus, "no-such-job") == (None, [])


HUNG = Finding(
    time=HANG_AT,
    source="prometheus",
    kind="job_hung",
    rank=2,
    host="n2",
    gpu=0,
    detail="rank 2 stopped stepping at 2023-11-14 22:23:20 UTC (in compute) while the others waited in sync",
    extra={"ranks": "2", "waiting_phase": "sync"},
)


def test_the_diagnosis_names_the_hang_as_the_cause_when_nothing_fatal_came_before() -> None:
    timeout = Finding(
        time=HANG_AT + 600,
        source="log",
        kind="nccl_timeout",
        rank=0,
        host="n1",
        detail="Watchdog caught collective operation timeout",
        extra={"ran_ms": "600000"},
    )
    diagnosis = diagnose([HUNG, timeout], started_at=T0, failed_at=HANG_AT + 620, exit_code=1, world_size=4)
    first = diagnosis.causes[0]
    assert first.kind == "job_hung"
    assert first.title == f"training hung: {HUNG.detail}"
    assert (first.host, first.gpu) == ("n2", 0)
    assert [e.kind for e in first.evidence] == ["job_hung", "nccl_timeout"]


def test_a_fault_before_the_stop_is_the_cause_and_the_hang_its_symptom() -> None:
    xid = Finding(
        time=HANG_AT + 2,
        source="log",
        kind="gpu_xid",
        xid=79,
        host="n2",
        gpu=0,
        detail="NVRM: Xid (PCI:0000:5d:00): 79, GPU has fallen off the bus.",
    )
    diagnosis = diagnose([HUNG, xid], started_at=T0, failed_at=HANG_AT + 620, exit_code=1, world_size=4)
    assert diagnosis.causes[0].kind == "gpu_xid"
    assert all(cause.kind != "job_hung" for cause in diagnosis.causes)
    assert diagnosis.symptoms[0] == f"training stopped: {HUNG.detail} (a symptom of the cause above)"
