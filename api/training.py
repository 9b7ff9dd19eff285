"""The ``training`` section of a job's summary, from the steps the job reports itself
(``jobsight.training`` → the agent's OTLP receiver → ``jobsight_train_*``), and the hang finding
the diagnosis uses.

Thresholds as in ``alerts/rules/training.yaml``: a job is hung when no rank has stepped for
``max(10 x its step time, 5 min)`` (here the mean step over the window; the rule takes the median
of the ranks' means over the last hour); the ranks that stopped first are those not
in the phase most ranks wait in (when the job reports phases), else those whose last step is
oldest. Every query selects the job's own series by ``job_id`` (escaped by :func:`matcher`) and
reads the job's window only.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import Executor
from datetime import UTC, datetime

from api.diagnosis import Finding
from api.models import TrainingHang, TrainingRank, TrainingSummary
from api.prometheus import PrometheusClient, Sample, duration, matcher

HANG_STEPS = 10.0
HANG_FLOOR_SECONDS = 300.0
# The receiver drops a rank's series a minute after its last export; a rank seen this recently
# at the end of the window was still running then.
LIVE_LOOKBACK = "2m"
SLOWEST = 3
LAST_STEP = "jobsight_train_last_step_timestamp_seconds"
# A hang names at most this many ranks; the rest are counted.
MAX_NAMED_RANKS = 16


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=UTC) if ts is not None else None


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _rank_key(sample: Sample) -> tuple[int, str] | None:
    rank = sample.labels.get("rank", "")
    return (int(rank), sample.labels.get("Hostname", "")) if rank.isdigit() else None


def _ranks_text(ranks: list[int]) -> str:
    shown = ", ".join(str(r) for r in ranks[:MAX_NAMED_RANKS])
    more = f" and {len(ranks) - MAX_NAMED_RANKS} more" if len(ranks) > MAX_NAMED_RANKS else ""
    return f"rank{'s' if len(ranks) > 1 else ''} {shown}{more}"


def hang_threshold(step_seconds: float | None) -> float:
    if step_seconds is None:
        return HANG_FLOOR_SECONDS
    return max(HANG_STEPS * step_seconds, HANG_FLOOR_SECONDS)


def training_facts(
    prometheus: PrometheusClient,
    executor: Executor,
    job_id: str,
    start: float,
    end: float,
) -> tuple[TrainingSummary | None, list[Finding]]:
    """The job's training summary over ``[start, end]`` and, when it is hung at ``end``, a
    ``job_hung`` finding. (None, []) for a job that reports no steps. Fourteen instant queries and
    one range query, in parallel on ``executor``."""
    span = max(end - start, 60.0)
    window = duration(span)
    job = matcher("job_id", job_id)

    def per_rank(expr: str) -> str:
        return f"max by (rank, Hostname) ({expr})"

    def mean(family: str, extra: str = "") -> str:
        selector = f"{{{job}{extra}}}"
        return per_rank(f"rate({family}_sum{selector}[{window}]) / rate({family}_count{selector}[{window}])")

    def quantile(q: float) -> str:
        return (
            f"histogram_quantile({q}, sum by (le) "
            f"(increase(jobsight_train_step_seconds_bucket{{{job}}}[{window}])))"
        )

    queries = {
        "steps": per_rank(f"max_over_time(jobsight_train_steps_total{{{job}}}[{window}])"),
        "samples": f"sum(max by (rank) (max_over_time(jobsight_train_samples_total{{{job}}}[{window}])))",
        "tokens": f"sum(max by (rank) (max_over_time(jobsight_train_tokens_total{{{job}}}[{window}])))",
        "samples_rate": f"sum(rate(jobsight_train_samples_total{{{job}}}[{window}]))",
        "tokens_rate": f"sum(rate(jobsight_train_tokens_total{{{job}}}[{window}]))",
        "step_mean_job": f"sum(rate(jobsight_train_step_seconds_sum{{{job}}}[{window}])) "
        f"/ sum(rate(jobsight_train_step_seconds_count{{{job}}}[{window}]))",
        "p50": quantile(0.5),
        "p95": quantile(0.95),
        "step_mean": mean("jobsight_train_step_seconds"),
        "compute_mean": mean("jobsight_train_phase_seconds", ', phase="compute"'),
        "last_step": per_rank(f"max_over_time({LAST_STEP}{{{job}}}[{window}])"),
        "live": per_rank(f"last_over_time({LAST_STEP}{{{job}}}[{LIVE_LOOKBACK}])"),
        "phase": f"max by (rank, Hostname, phase) "
        f"(last_over_time(jobsight_train_phase_entered_timestamp_seconds{{{job}}}[{LIVE_LOOKBACK}]))",
        "info": f"max by (rank, Hostname, gpu) (last_over_time(jobsight_train_rank_info{{{job}}}[{window}]))",
    }
    futures = {name: executor.submit(prometheus.query, expr, end) for name, expr in queries.items()}
    r = {name: future.result() for name, future in futures.items()}
    if not r["steps"]:
        return None, []

    def scalar(name: str) -> float | None:
        values = [s.value for s in r[name] if s.value == s.value]  # NaN: no data in the window
        return values[0] if values else None

    ranks: dict[tuple[int, str], TrainingRank] = {}
    for s in r["steps"]:
        key = _rank_key(s)
        if key is not None:
            ranks[key] = TrainingRank(rank=key[0], host=key[1], steps=s.value)
    for name, attr in (("step_mean", "step_seconds_mean"), ("compute_mean", "compute_seconds_mean")):
        for s in r[name]:
            key = _rank_key(s)
            if key in ranks and s.value == s.value:
                setattr(ranks[key], attr, s.value)
    for s in r["last_step"]:
        key = _rank_key(s)
        if key in ranks:
            ranks[key].last_step = _dt(s.value)
    for s in r["info"]:
        key = _rank_key(s)
        gpu = s.labels.get("gpu", "")
        if key in ranks and gpu.isdigit():
            ranks[key].gpu = int(gpu)
    latest_phase: dict[tuple[int, str], tuple[float, str]] = {}
    for s in r["phase"]:
        key = _rank_key(s)
        if key in ranks and (key not in latest_phase or s.value > latest_phase[key][0]):
            latest_phase[key] = (s.value, s.labels.get("phase", ""))
    for key, (_, phase) in latest_phase.items():
        ranks[key].phase = phase

    # Slowest ranks: by the rank-local compute phase where reported, else by step time.
    use_compute = any(rank.compute_seconds_mean is not None for rank in ranks.values())
    timed = {
        key: value
        for key, rank in ranks.items()
        if (value := rank.compute_seconds_mean if use_compute else rank.step_seconds_mean) is not None
    }
    if timed:
        ordered = sorted(timed.values())
        middle = len(ordered) // 2
        median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        if median > 0:
            for key, value in timed.items():
                ranks[key].slowdown = round(value / median, 3)
    slowest = sorted(
        (rank for rank in ranks.values() if rank.slowdown is not None),
        key=lambda rank: (-(rank.slowdown or 0.0), rank.rank),
    )[:SLOWEST]

    p50 = scalar("p50")
    step_mean = scalar("step_mean_job")
    threshold = hang_threshold(step_mean)
    stalled = _stalled_seconds(prometheus, job, start, end, threshold)
    hang, findings = _hang(r["live"], ranks, latest_phase, end, threshold)
    summary = TrainingSummary(
        ranks=len(ranks),
        steps=max((rank.steps or 0.0) for rank in ranks.values()),
        samples=scalar("samples"),
        tokens=scalar("tokens"),
        samples_per_second=scalar("samples_rate"),
        tokens_per_second=scalar("tokens_rate"),
        step_seconds_mean=step_mean,
        step_seconds_p50=p50,
        step_seconds_p95=scalar("p95"),
        slowest_ranks=slowest,
        stalled_seconds=stalled,
        hang=hang,
    )
    return summary, findings


def _stalled_seconds(
    prometheus: PrometheusClient, job: str, start: float, end: float, threshold: float
) -> float:
    """Time in the window during which no rank had stepped for ``threshold`` seconds."""
    step = max(15.0, (end - start) / 720)
    series = prometheus.query_range(f"time() - max({LAST_STEP}{{{job}}})", start, end, step)
    return sum(step for s in series for _, value in s.points if value > threshold)


def _hang(
    live: list[Sample],
    ranks: dict[tuple[int, str], TrainingRank],
    phases: dict[tuple[int, str], tuple[float, str]],
    end: float,
    threshold: float,
) -> tuple[TrainingHang | None, list[Finding]]:
    last = {key: s.value for s in live if (key := _rank_key(s)) is not None}
    if not last:
        return None, []
    stopped_at = max(last.values())
    if end - stopped_at <= threshold:
        return None, []
    current = {key: phases[key][1] for key in last if key in phases}
    waiting: str | None = None
    if len(set(current.values())) > 1:
        waiting = Counter(current.values()).most_common(1)[0][0]
        culprits = sorted(key for key, phase in current.items() if phase != waiting)
    else:
        oldest = min(last.values())
        culprits = sorted(key for key, t in last.items() if t <= oldest + 1.0)
        if len(culprits) == len(last):
            culprits = []
    numbers = [key[0] for key in culprits]
    if numbers and waiting is not None:
        phase_of = {current[key] for key in culprits}
        detail = (
            f"{_ranks_text(numbers)} stopped stepping at {_stamp(stopped_at)} (in "
            f"{', '.join(sorted(phase_of))}) while the others waited in {waiting}"
        )
    elif numbers:
        detail = f"{_ranks_text(numbers)} stopped stepping first, at {_stamp(min(last.values()))}"
    else:
        detail = f"all {len(last)} ranks stopped stepping at {_stamp(stopped_at)}"
    hang = TrainingHang(
        stopped_at=_dt(stopped_at),
        stalled_seconds=end - stopped_at,
        ranks=numbers,
        waiting_phase=waiting,
        detail=detail,
    )
    lead = ranks.get(culprits[0]) if culprits else None
    finding = Finding(
        time=stopped_at,
        source="prometheus",
        kind="job_hung",
        detail=detail,
        host=lead.host if lead else None,
        gpu=lead.gpu if lead else None,
        rank=lead.rank if lead else None,
        extra={"ranks": ",".join(map(str, numbers)), "waiting_phase": waiting or ""},
    )
    return hang, [finding]
