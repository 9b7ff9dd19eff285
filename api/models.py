"""Request and response schemas of the job API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from jobsight.jobid import JOB_ID_PATTERN

JobStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = ("pending", "running", "succeeded", "failed", "cancelled")

# Host names and label values end up in PromQL matchers (escaped) and in URLs; a conservative
# character set keeps them readable in both.
HOST_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$"
LABEL_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; everything is returned in UTC, within 1970-2200 (times
    outside cannot be real job times, and Prometheus refuses many of them)."""
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not EARLIEST <= moment < LATEST:
        raise ValueError("must be between 1970-01-01 and 2200-01-01")
    return moment


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
JobId = Annotated[str, Field(pattern=f"^{JOB_ID_PATTERN}$", max_length=128)]


class Problem(BaseModel):
    """Error body: ``detail`` says what was wrong; ``dependency`` names a service that is down."""

    detail: Any
    dependency: str | None = None


class GpuRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(pattern=HOST_PATTERN)
    gpu: int = Field(ge=0, le=4095)
    uuid: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{1,96}$")


class JobIn(BaseModel):
    """Body of ``PUT /v1/jobs/{id}``: the whole job record (idempotent upsert)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=512)
    user: str | None = Field(default=None, max_length=128)
    tenant: str | None = Field(
        None, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="defaults to the caller's tenant; only scheduler and admin tokens may name another",
    )
    scheduler: str | None = Field(default=None, max_length=64)
    nodes: list[Annotated[str, Field(pattern=HOST_PATTERN)]] = Field(default_factory=list, max_length=4096)
    gpus: list[GpuRef] = Field(default_factory=list, max_length=65536)
    started_at: UtcDatetime | None = None
    ended_at: UtcDatetime | None = None
    status: JobStatus = "running"
    exit_code: int | None = Field(default=None, ge=-255, le=65535)
    reason: str | None = Field(default=None, max_length=4096)
    tensorboard_logdir: str | None = Field(default=None, max_length=4096)
    labels: dict[Annotated[str, Field(pattern=LABEL_KEY_PATTERN)], Annotated[str, Field(max_length=1024)]] = (
        Field(default_factory=dict, max_length=64)
    )

    @field_validator("ended_at")
    @classmethod
    def _not_before_start(cls, value: datetime | None, info: Any) -> datetime | None:
        started = info.data.get("started_at")
        if value is not None and started is not None and value < started:
            raise ValueError("ended_at is before started_at")
        return value


Labels = dict[Annotated[str, Field(pattern=LABEL_KEY_PATTERN)], Annotated[str, Field(max_length=1024)]]


class JobAnnotationsIn(BaseModel):
    """Body of ``PATCH /v1/jobs/{id}``: what a job's tenant may change about it. Fields left out
    keep their value; ``labels`` replaces the whole set."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=512)
    tensorboard_logdir: str | None = Field(default=None, max_length=4096)
    labels: Labels | None = Field(default=None, max_length=64)


class JobOut(BaseModel):
    job_id: str
    source: Literal["registered", "discovered"]
    tenant: str | None
    name: str | None
    user: str | None
    scheduler: str | None
    nodes: list[str]
    gpus: list[GpuRef]
    started_at: datetime | None
    ended_at: datetime | None
    status: JobStatus
    exit_code: int | None
    reason: str | None
    tensorboard_logdir: str | None
    labels: dict[str, str]
    created_at: datetime | None
    updated_at: datetime | None


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None
    discovered: list[JobOut] = Field(
        default_factory=list,
        description="admins only, first page only: jobs seen in jobsight_gpu_job_info but never registered",
    )
    warnings: list[str] = Field(default_factory=list)


class Series(BaseModel):
    labels: dict[str, str]
    points: list[tuple[float, float]] = Field(description="[unix seconds, value] pairs, oldest first")


class Unavailable(BaseModel):
    """A GPU the job held in the window that returned no series for a metric, and why."""

    host: str
    gpu: int
    reason: str


class MetricSeries(BaseModel):
    name: str
    unit: str
    scope: Literal["gpu", "node", "rank"]
    description: str
    series: list[Series]
    unavailable: list[Unavailable] = Field(
        default_factory=list,
        description="GPU entries: the job's GPUs (jobsight_gpu_job_info and the registry) that have no "
                    "series in the window, with the reason (e.g. no tensor-pipe counters before Hopper)")


class MetricsResponse(BaseModel):
    job_id: str
    start: datetime
    end: datetime
    step_seconds: float
    metrics: list[MetricSeries]


class CatalogEntry(BaseModel):
    name: str
    unit: str
    scope: Literal["gpu", "node", "rank"]
    description: str


class LogRecordOut(BaseModel):
    timestamp: datetime
    host: str
    job_id: str | None
    path: str
    offset: int
    message: str
    stream: str | None = None
    rank: int | None = None
    level: str | None = None
    source: str = "file"
    event_kind: str | None = None
    event_severity: str | None = None
    event_fields: dict[str, str] = Field(default_factory=dict)
    record_id: str = ""


class LogPageOut(BaseModel):
    records: list[LogRecordOut]
    next_cursor: str | None


class Evidence(BaseModel):
    time: datetime | None
    source: Literal["alert", "log", "prometheus", "job"]
    kind: str
    host: str | None = None
    gpu: int | None = None
    rank: int | None = None
    detail: str


class Cause(BaseModel):
    rank: int
    kind: str
    title: str
    time: datetime | None
    host: str | None = None
    gpu: int | None = None
    explanation: str
    evidence: list[Evidence]


class Diagnosis(BaseModel):
    failed_at: datetime | None
    causes: list[Cause]
    symptoms: list[str] = Field(default_factory=list)
    missing_sources: list[str] = Field(
        default_factory=list, description="dependencies that could not be read; the diagnosis may be partial"
    )


class GpuSummary(BaseModel):
    host: str
    gpu: int
    uuid: str | None = None
    util_mean: float | None = None
    util_max: float | None = None
    memory_max_bytes: float | None = None
    energy_joules: float | None = None
    power_mean_watts: float | None = None
    power_max_watts: float | None = None
    throttled_seconds: float | None = None
    idle_fraction: float | None = None
    ecc_dbe_errors: float | None = None
    xids: list[XidEvent] = Field(default_factory=list)
    lost: bool = False
    straggler: bool = False


class XidEvent(BaseModel):
    xid: int
    count: float
    first_seen: datetime | None


class NodeSummary(BaseModel):
    host: str
    rdma_rx_bytes: float | None = None
    rdma_tx_bytes: float | None = None
    rdma_link_downed: float | None = None
    rdma_symbol_errors: float | None = None
    job_cpu_seconds: float | None = None
    job_memory_max_bytes: float | None = None


class OverallSummary(BaseModel):
    gpus: int
    util_mean: float | None = None
    util_max: float | None = None
    util_median: float | None = None
    memory_max_bytes: float | None = None
    energy_joules: float | None = None
    power_mean_watts: float | None = None
    power_max_watts: float | None = None
    throttled_seconds: float | None = None
    idle_fraction: float | None = None
    xid_count: float = 0
    ecc_dbe_errors: float = 0


class TrainingRank(BaseModel):
    """One rank as its own step telemetry (jobsight.training) shows it."""

    rank: int
    host: str
    gpu: int | None = None
    steps: float | None = None
    last_step: datetime | None = None
    step_seconds_mean: float | None = None
    compute_seconds_mean: float | None = Field(
        default=None, description="mean of the rank-local 'compute' phase, where the job reports phases")
    phase: str | None = Field(default=None, description="the phase the rank is in at the end of the window")
    slowdown: float | None = Field(
        default=None, description="compute (else step) time over the median of the job's ranks")


class TrainingHang(BaseModel):
    """No rank stepped for max(10 x the mean step time, 5 min) at the end of the window."""

    stopped_at: datetime | None
    stalled_seconds: float
    ranks: list[int] = Field(description="the ranks that stopped first: not in the phase the others wait in, "
                                         "else the ranks whose last step is oldest")
    waiting_phase: str | None = Field(default=None, description="where the other ranks wait")
    detail: str


class TrainingSummary(BaseModel):
    """What the job reported about its own progress (docs/training.md); absent for jobs that do not
    use jobsight.training."""

    ranks: int
    steps: float | None = Field(default=None, description="steps of the furthest rank")
    samples: float | None = None
    tokens: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    step_seconds_mean: float | None = Field(
        default=None, description="exact: the ranks' step time sum / count")
    step_seconds_p50: float | None = Field(
        default=None, description="estimated from the step histogram's buckets (1-2.5-5 per decade, "
                                  "interpolated within a bucket): use the mean for a precise figure")
    step_seconds_p95: float | None = None
    slowest_ranks: list[TrainingRank] = Field(default_factory=list)
    stalled_seconds: float = Field(
        default=0.0, description="time in the window with no step for max(10 x the mean step, 5 min)")
    hang: TrainingHang | None = None


class SummaryResponse(BaseModel):
    job: JobOut
    start: datetime
    end: datetime
    duration_seconds: float
    overall: OverallSummary
    gpus: list[GpuSummary]
    nodes: list[NodeSummary]
    stragglers: list[GpuRef]
    events: list[LogRecordOut]
    alerts: list[AlertOut]
    diagnosis: Diagnosis | None
    training: TrainingSummary | None = Field(
        default=None, description="the job's own step telemetry (jobsight.training), when it reports any")
    warnings: list[str] = Field(default_factory=list)
    rollup_step_seconds: float | None = Field(
        default=None,
        description="set when the GPU and node figures come from the recording-rule rollups "
                    "(alerts/rules/rollups.yaml) at this step instead of raw samples; see docs/scale.md "
                    "for their accuracy")


class Links(BaseModel):
    job_dashboard: str | None
    node_dashboards: dict[str, str]
    gpu_dashboards: list[dict[str, str]]
    tensorboard: str | None
    logs: str
    events: str
    alertmanager: str | None
    page: str | None = Field(default=None,
                             description="the job's page: a signed read-only link, no token needed")


class TensorBoardOut(BaseModel):
    url: str
    state: Literal["starting", "running"]
    logdir: str


class ScalarPoint(BaseModel):
    step: int
    wall_time: float
    value: float


class ScalarSeries(BaseModel):
    run: str
    tag: str
    points: list[ScalarPoint]


class ScalarsResponse(BaseModel):
    logdir: str
    tags: list[str]
    series: list[ScalarSeries]


class WebhookAlert(BaseModel):
    """One alert of Alertmanager's webhook payload; unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(max_length=256)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=256)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str | None = None
    fingerprint: str | None = Field(default=None, max_length=128)


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: Literal["4"]
    groupKey: str | None = None
    status: Literal["firing", "resolved"]
    receiver: str | None = None
    alerts: list[WebhookAlert] = Field(max_length=10000)


class WebhookResult(BaseModel):
    stored: int
    mapped: dict[str, list[str]] = Field(description="alert fingerprint → job ids it was mapped to")
    warnings: list[str] = Field(default_factory=list)


class AlertOut(BaseModel):
    id: int
    fingerprint: str
    alertname: str | None
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    received_at: datetime
    job_ids: list[str]


class AlertList(BaseModel):
    alerts: list[AlertOut]
    next_cursor: str | None


class NotificationOut(BaseModel):
    id: int
    job_id: str
    failure_seq: int
    status: Literal["pending", "sending", "sent", "failed", "skipped"]
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_error: str | None
    targets: int
    body: str | None


class NotificationList(BaseModel):
    notifications: list[NotificationOut]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


GpuSummary.model_rebuild()
SummaryResponse.model_rebuild()
