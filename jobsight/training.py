"""Training progress from inside the job: the one public Python API of jobsight.

A training script reports its steps; the node's ``jobsight agent`` receives them over OTLP/HTTP
and publishes ``jobsight_train_*`` series, from which the ``JobHung`` and ``JobSlowRank`` rules
and the job's summary work::

    import jobsight.training

    tracker = jobsight.training.start()          # job id and rank from the environment
    for batch in loader:
        with tracker.phase("compute"):           # optional: rank-local work
            loss = model(batch).mean()
        loss.backward()
        optimizer.step()
        tracker.step(samples=len(batch), loss=loss)

The signature of :func:`start`, :meth:`Tracker.step` and :meth:`Tracker.phase` is stable.

Promises to the training script:

- Importing this module costs nothing: it imports only the standard library. OpenTelemetry is
  imported by :func:`start`; where it is missing, :func:`start` returns a tracker that records
  nothing and says so once in the log.
- :meth:`Tracker.step` never blocks and never raises. It updates a few numbers in memory and one
  histogram of the OpenTelemetry metrics SDK, whose aggregation has a fixed size (one bucket array
  per series, not a queue of steps). A background thread of the SDK exports every
  ``export_interval_s``; an export that fails (agent down, slow, answering 5xx) is dropped and
  counted (:attr:`Tracker.failed_exports`, exported as ``jobsight.train.export.failures``): the
  values are cumulative, so the next export that gets through carries everything.
- No torch import: the PyTorch helper (:meth:`Tracker.watch_optimizer`) works on any object
  with torch's ``register_step_post_hook``.

Where the data goes follows OpenTelemetry's variables: ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``
(used as is), else ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL; ``/v1/metrics`` is appended),
else the local agent at ``http://127.0.0.1:4318``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

__all__ = [
    "DEFAULT_ENDPOINT",
    "HookPhase",
    "Identity",
    "Phase",
    "Tracker",
    "identity_from_env",
    "metrics_endpoint",
    "start",
]

log = logging.getLogger(__name__)

# The OTLP/HTTP port OpenTelemetry assigns, where ``jobsight agent`` receives by default.
DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
METRICS_PATH = "/v1/metrics"
DEFAULT_EXPORT_INTERVAL_S = 10.0
# One export's time limit, retries included. It runs on the SDK's thread, never the training
# loop's; a short limit keeps close() at exit short when the agent is away.
DEFAULT_EXPORT_TIMEOUT_S = 2.0

# Resource attributes the agent reads (collectors/otlp). Names under our own namespace, so they
# never clash with OpenTelemetry's semantic conventions.
ATTR_JOB_ID = "jobsight.job_id"
ATTR_RANK = "jobsight.rank"
ATTR_LOCAL_RANK = "jobsight.local_rank"
ATTR_WORLD_SIZE = "jobsight.world_size"
ATTR_GPU = "jobsight.gpu"
ATTR_PHASE = "phase"

# Instrument names; the agent maps each to one jobsight_train_* family.
STEP_DURATION = "jobsight.train.step.duration"
STEPS = "jobsight.train.steps"
SAMPLES = "jobsight.train.samples"
TOKENS = "jobsight.train.tokens"
LAST_STEP = "jobsight.train.last_step.timestamp"
LOSS = "jobsight.train.loss"
PHASE_DURATION = "jobsight.train.phase.duration"
PHASE_ENTERED = "jobsight.train.phase.entered"
EXPORT_FAILURES = "jobsight.train.export.failures"

# Step and phase times from a few ms (small models) to 10 min (a checkpoint, a long step).
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)

# Launchers' variables, most specific first: torchrun, Slurm (srun), Open MPI, MPICH/Intel MPI.
_RANK_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
_WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
# JOBSIGHT_JOB_ID first (on Kubernetes set it in the pod spec to "$(NAMESPACE):<job name>", the id
# the job watcher uses); SLURM_JOB_ID is unique per array task, as the Slurm hooks use it.
_JOB_ID_VARS = ("JOBSIGHT_JOB_ID", "SLURM_JOB_ID")


@dataclass(frozen=True)
class Identity:
    """Who is reporting: the job, this process's rank in it, and the GPU it drives if known."""

    job_id: str | None
    rank: int = 0
    local_rank: int | None = None
    world_size: int | None = None
    gpu: str | None = None


def _first_int(env: Mapping[str, str], names: Iterable[str]) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _gpu_of(env: Mapping[str, str], local_rank: int | None) -> str | None:
    """The GPU index this rank drives, as the GPU exporter's ``gpu`` label names it: the
    ``local_rank``-th entry of CUDA_VISIBLE_DEVICES (or its only entry) when that is an index,
    else ``local_rank`` itself when nothing hides devices. None when unknown (UUIDs, MIG)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None if local_rank is None else str(local_rank)
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    index = local_rank or 0
    if len(entries) == 1:
        index = 0
    if index < len(entries) and entries[index].isdigit():
        return entries[index]
    return None


def identity_from_env(environ: Mapping[str, str] | None = None) -> Identity:
    """Read the job id, rank, local rank, world size and GPU from the launcher's variables."""
    env = os.environ if environ is None else environ
    job_id = next((env[name].strip() for name in _JOB_ID_VARS if env.get(name, "").strip()), None)
    local_rank = _first_int(env, _LOCAL_RANK_VARS)
    return Identity(
        job_id=job_id,
        rank=_first_int(env, _RANK_VARS) or 0,
        local_rank=local_rank,
        world_size=_first_int(env, _WORLD_SIZE_VARS),
        gpu=_gpu_of(env, local_rank),
    )


def metrics_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The OTLP/HTTP metrics URL, as OpenTelemetry's exporters derive it from the environment."""
    env = os.environ if environ is None else environ
    specific = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_ENDPOINT
    return base.rstrip("/") + METRICS_PATH


class _OptimizerLike(Protocol):
    def register_step_post_hook(self, hook: Callable[..., None]) -> Any: ...


class Phase:
    """``with tracker.phase("data"):`` times one phase of a step. A class, not a generator-based
    context manager: entering and leaving cost two clock reads and no frame object."""

    __slots__ = ("_name", "_started", "_tracker", "_wall")

    def __init__(self, tracker: Tracker, name: str) -> None:
        self._tracker = tracker
        self._name = name
        self._started = 0.0
        self._wall = 0.0

    def __enter__(self) -> Phase:
        self._started = time.perf_counter()
        self._wall = time.time()
        self._tracker._enter_phase(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._tracker._leave_phase(self, time.perf_counter() - self._started)


class HookPhase:
    """A phase opened in one framework hook and closed in another (Lightning, Hugging Face call
    hooks, not ``with`` blocks): :meth:`open` closes the one still open first. Never raises."""

    __slots__ = ("_phase",)

    def __init__(self) -> None:
        self._phase: Phase | None = None

    def open(self, tracker: Tracker | None, name: str) -> None:
        self.close()
        if tracker is not None:
            try:
                self._phase = tracker.phase(name).__enter__()
            except Exception:  # noqa: BLE001 - telemetry must never stop training
                self._phase = None

    def close(self) -> None:
        phase, self._phase = self._phase, None
        if phase is not None:
            try:
                phase.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - telemetry must never stop training
                return


class Tracker:
    """Step telemetry of one rank. Build it with :func:`start`; one per process.

    ``record_step_duration`` and ``record_phase`` are the SDK histograms' ``record`` (or None when
    disabled); the counters and gauges are read by the SDK's callbacks at export time from the
    plain attributes :meth:`step` updates, which keeps a step to a few attribute writes.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        record_step_duration: Callable[[float], None] | None = None,
        record_phase: Callable[[float, Mapping[str, str]], None] | None = None,
        shutdown: Callable[[float], None] | None = None,
        flush: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.enabled = record_step_duration is not None
        self._record_step = record_step_duration
        self._record_phase = record_phase
        self._shutdown = shutdown
        self._flush = flush
        self._clock = clock
        self._wall_clock = wall_clock
        self.steps = 0
        self.samples = 0
        self.tokens = 0
        self.samples_seen = False
        self.tokens_seen = False
        self.last_step_time: float | None = None  # wall clock, seconds since the epoch
        self.loss: object = None  # a float or a tensor; read with float() at export time only
        self.failed_exports = 0
        self.errors = 0  # exceptions step()/phase() swallowed rather than raise into training
        self._previous: float | None = None
        self._phases: list[Phase] = []
        self._phase_attrs: dict[str, dict[str, str]] = {}
        self._closed = False
        self._lock = threading.Lock()  # close() only; step() takes no lock

    def step(
        self,
        samples: int | None = None,
        tokens: int | None = None,
        loss: object = None,
    ) -> None:
        """Mark the end of one training step. ``samples``/``tokens``: how many this rank processed
        in the step; ``loss``: a float or a tensor (converted on the export thread, so a CUDA
        tensor costs the training loop no synchronisation). Never raises."""
        try:
            now = self._clock()
            self.steps += 1
            self.last_step_time = self._wall_clock()
            if samples is not None:
                self.samples += samples
                self.samples_seen = True
            if tokens is not None:
                self.tokens += tokens
                self.tokens_seen = True
            if loss is not None:
                self.loss = loss
            previous, self._previous = self._previous, now
            if previous is not None and self._record_step is not None:
                self._record_step(now - previous)
        except Exception:  # noqa: BLE001 - telemetry must never stop training
            self.errors += 1

    def phase(self, name: str) -> Phase:
        """A context manager timing one phase of the step (``data``, ``compute``, ``optimizer``,
        ``checkpoint``, ...). ``compute`` is the rank-local work before the rank waits for its
        peers: JobSlowRank compares it across ranks. Phases may nest; the innermost is the rank's
        current phase while it runs, which JobHung's description shows."""
        return Phase(self, name)

    def _enter_phase(self, phase: Phase) -> None:
        self._phases.append(phase)

    def _leave_phase(self, phase: Phase, seconds: float) -> None:
        try:
            if self._phases and self._phases[-1] is phase:
                self._phases.pop()
            elif phase in self._phases:
                self._phases.remove(phase)
            if self._record_phase is not None:
                attrs = self._phase_attrs.get(phase._name)
                if attrs is None:
                    attrs = self._phase_attrs.setdefault(phase._name, {ATTR_PHASE: phase._name})
                self._record_phase(seconds, attrs)
        except Exception:  # noqa: BLE001 - telemetry must never stop training
            self.errors += 1

    def current_phase(self) -> tuple[str, float] | None:
        """(name, wall-clock entry time) of the innermost open phase, or None."""
        phases = list(self._phases)  # a copy: the export thread reads while training appends
        if not phases:
            return None
        return phases[-1]._name, phases[-1]._wall

    def loss_value(self) -> float | None:
        loss = self.loss
        if loss is None:
            return None
        try:
            return float(loss)  # type: ignore[arg-type]
        except (TypeError, ValueError, RuntimeError):
            return None

    def watch_optimizer(
        self,
        optimizer: _OptimizerLike,
        samples_per_step: int | None = None,
        tokens_per_step: int | None = None,
    ) -> Any:
        """Call :meth:`step` after every ``optimizer.step()`` (PyTorch's
        ``Optimizer.register_step_post_hook``): a plain loop needs no other change. Returns the
        hook's handle (``handle.remove()`` stops it)."""

        def hook(*_args: Any, **_kwargs: Any) -> None:
            self.step(samples=samples_per_step, tokens=tokens_per_step)

        return optimizer.register_step_post_hook(hook)

    def flush(self, timeout_s: float = DEFAULT_EXPORT_TIMEOUT_S) -> bool:
        """Export now, waiting up to ``timeout_s`` (e.g. before a checkpoint or at the end of an
        epoch); True if the export got through. Never raises."""
        if self._flush is None or self._closed:
            return False
        failures = self.failed_exports
        try:
            return self._flush(timeout_s) and self.failed_exports == failures
        except Exception:  # noqa: BLE001 - telemetry must never stop training
            return False

    def close(self, timeout_s: float = DEFAULT_EXPORT_TIMEOUT_S) -> None:
        """Export what is left (within ``timeout_s``) and stop the export thread. Idempotent;
        also runs at interpreter exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._shutdown is not None:
            try:
                self._shutdown(timeout_s)
            except Exception:
                log.debug("jobsight.training: shutdown failed", exc_info=True)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def start(
    *,
    job_id: str | None = None,
    rank: int | None = None,
    endpoint: str | None = None,
    export_interval_s: float = DEFAULT_EXPORT_INTERVAL_S,
    export_timeout_s: float = DEFAULT_EXPORT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> Tracker:
    """Start reporting this process's training steps; returns the :class:`Tracker`.

    ``job_id`` and ``rank`` override what the environment says (:func:`identity_from_env`);
    ``endpoint`` overrides the OTLP metrics URL (:func:`metrics_endpoint`). Without a job id, or
    without OpenTelemetry installed, the tracker records nothing and the log says why, once.
    Never raises for a bad environment: training goes on without telemetry.
    """
    found = identity_from_env(environ)
    identity = Identity(
        job_id=job_id if job_id is not None else found.job_id,
        rank=rank if rank is not None else found.rank,
        local_rank=found.local_rank,
        world_size=found.world_size,
        gpu=found.gpu,
    )
    if not identity.job_id:
        log.warning("jobsight.training: no job id (JOBSIGHT_JOB_ID or SLURM_JOB_ID); steps are not reported")
        return Tracker(identity)
    url = endpoint or metrics_endpoint(environ)
    try:
        return _start_otel(identity, url, export_interval_s, export_timeout_s)
    except ImportError as exc:
        log.warning("jobsight.training: OpenTelemetry is not installed (%s); steps are not reported", exc)
    except Exception:
        log.warning("jobsight.training: could not start the exporter; steps are not reported", exc_info=True)
    return Tracker(identity)


def _start_otel(identity: Identity, url: str, interval_s: float, timeout_s: float) -> Tracker:
    # Imported here, not at module level: a script importing jobsight.training pays for
    # OpenTelemetry only when it starts a tracker.
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    resource_attrs: dict[str, str | int] = {
        "service.name": "jobsight-training",
        "host.name": socket.gethostname(),
        ATTR_JOB_ID: str(identity.job_id),
        ATTR_RANK: identity.rank,
    }
    if identity.local_rank is not None:
        resource_attrs[ATTR_LOCAL_RANK] = identity.local_rank
    if identity.world_size is not None:
        resource_attrs[ATTR_WORLD_SIZE] = identity.world_size
    if identity.gpu is not None:
        resource_attrs[ATTR_GPU] = identity.gpu

    holder: list[Tracker] = []

    class CountingExporter(MetricExporter):
        """Counts failed exports for the tracker and logs only the first of a run of failures,
        so an agent that is away does not fill the training log."""

        def __init__(self, inner: MetricExporter) -> None:
            super().__init__()
            self._inner = inner
            self._failing = False

        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            try:
                result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            except Exception:  # noqa: BLE001 - the SDK's thread must keep running
                result = MetricExportResult.FAILURE
            if result is MetricExportResult.SUCCESS:
                if self._failing:
                    log.info("jobsight.training: exporting to %s works again", url)
                self._failing = False
            else:
                if holder:
                    holder[0].failed_exports += 1
                if not self._failing:
                    log.warning(
                        "jobsight.training: exporting to %s failed (agent away?); counting failures quietly",
                        url,
                    )
                self._failing = True
            return result

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return self._inner.force_flush(timeout_millis=timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    otlp = OTLPMetricExporter(endpoint=url, timeout=timeout_s)
    # The exporter logs every failed attempt at WARNING/ERROR; CountingExporter says it once.
    logging.getLogger("opentelemetry.exporter.otlp.proto.http.metric_exporter").setLevel(logging.CRITICAL)
    reader = PeriodicExportingMetricReader(
        CountingExporter(otlp),
        export_interval_millis=interval_s * 1000,
        export_timeout_millis=timeout_s * 1000,
    )
    # Our own atexit hook (below) instead of the SDK's, so an explicit close() and the one at exit
    # do not shut the provider down twice.
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create(resource_attrs), shutdown_on_exit=False
    )
    meter = provider.get_meter("jobsight.training")
    step_hist = meter.create_histogram(
        STEP_DURATION,
        unit="s",
        description="Time between consecutive steps of this rank.",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
    )
    phase_hist = meter.create_histogram(
        PHASE_DURATION,
        unit="s",
        description="Time spent in each phase of a step.",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
    )

    def shutdown(timeout: float) -> None:
        provider.shutdown(timeout_millis=timeout * 1000)

    def flush(timeout: float) -> bool:
        return bool(provider.force_flush(timeout_millis=timeout * 1000))

    tracker = Tracker(
        identity,
        record_step_duration=step_hist.record,
        record_phase=phase_hist.record,
        shutdown=shutdown,
        flush=flush,
    )
    holder.append(tracker)
    atexit.register(tracker.close)

    def steps(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(tracker.steps)]

    def samples(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(tracker.samples)] if tracker.samples_seen else []

    def tokens(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(tracker.tokens)] if tracker.tokens_seen else []

    def last_step(_options: CallbackOptions) -> Iterable[Observation]:
        when = tracker.last_step_time
        return [] if when is None else [Observation(when)]

    def loss(_options: CallbackOptions) -> Iterable[Observation]:
        value = tracker.loss_value()
        # A diverged loss (NaN, inf) is news, but Prometheus alerting on it is clearer with the
        # series absent than with NaN; it is left out.
        return [] if value is None or not math.isfinite(value) else [Observation(value)]

    def phase_entered(_options: CallbackOptions) -> Iterable[Observation]:
        current = tracker.current_phase()
        return [] if current is None else [Observation(current[1], {ATTR_PHASE: current[0]})]

    def failures(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(tracker.failed_exports)]

    meter.create_observable_counter(STEPS, [steps], unit="1", description="Steps this rank finished.")
    meter.create_observable_counter(SAMPLES, [samples], unit="1", description="Samples this rank processed.")
    meter.create_observable_counter(TOKENS, [tokens], unit="1", description="Tokens this rank processed.")
    meter.create_observable_gauge(LAST_STEP, [last_step], unit="s", description="When the last step ended.")
    meter.create_observable_gauge(LOSS, [loss], unit="1", description="Loss reported with the last step.")
    meter.create_observable_gauge(
        PHASE_ENTERED, [phase_entered], unit="s", description="When the rank entered its current phase."
    )
    meter.create_observable_counter(
        EXPORT_FAILURES, [failures], unit="1", description="Exports of this tracker that failed."
    )
    return tracker
