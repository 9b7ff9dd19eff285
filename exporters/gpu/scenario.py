"""Scenario files for the simulated GPU backend: which GPUs, which jobs hold them, how busy they
are, and which faults happen when. YAML on disk, validated by pydantic, with errors that name the
file and the field; also a Python API (:class:`Scenario`, :func:`write_scenario`) so a demo or a
test can build and rewrite one.

Times (``at``, ``from``, ``until``) are seconds after the exporter started (``90``, ``"90s"``,
``"5m"``, ``"1h"``) or absolute ISO-8601 date-times (``2026-11-29T06:00:00Z``). A fault without
``at`` happens as soon as the exporter reads it, which is how a running demo injects one: rewrite
the file, and :class:`ScenarioFile` picks the change up on its next read.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, field_validator, model_validator
from pydantic.functional_validators import BeforeValidator

from exporters.gpu.fields import CLOCK_EVENT_BITS, FIELDS_BY_NAME
from jobsight.config import load_yaml_file, parse_model
from jobsight.errors import ConfigError
from jobsight.jobid import is_valid_job_id

log = logging.getLogger(__name__)

DEFAULT_MODEL = "NVIDIA H100 80GB HBM3"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_PCI_BUS_ID = r"^[0-9a-fA-F]{8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$"
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class TimePoint:
    """Either ``offset_s`` seconds after the exporter started, or an absolute ``epoch_s``."""

    offset_s: float | None = None
    epoch_s: float | None = None

    def resolve(self, start_epoch: float) -> float:
        """The wall-clock time (epoch seconds) this point stands for."""
        if self.epoch_s is not None:
            return self.epoch_s
        return start_epoch + (self.offset_s or 0.0)


def _parse_time(value: Any) -> TimePoint:
    if isinstance(value, TimePoint):
        return value
    if isinstance(value, bool):
        raise ValueError("a time is a number of seconds, a duration like '90s' or an ISO date-time")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a relative time must not be negative")
        return TimePoint(offset_s=float(value))
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return TimePoint(epoch_s=moment.timestamp())
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return TimePoint(offset_s=float(match.group(1)) * _UNIT_S[match.group(2)])
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{value!r} is neither a duration (90, '90s', '5m', '1h') nor an ISO date-time"
            ) from None
        return _parse_time(moment)
    raise ValueError("a time is a number of seconds, a duration like '90s' or an ISO date-time")


def _dump_time(point: TimePoint) -> float | str:
    if point.epoch_s is not None:
        return datetime.fromtimestamp(point.epoch_s, UTC).isoformat().replace("+00:00", "Z")
    return float(point.offset_s or 0.0)


Time = Annotated[TimePoint, BeforeValidator(_parse_time), PlainSerializer(_dump_time)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class GpuSpec(_Model):
    """One simulated GPU. ``uuid`` and ``pci_bus_id`` default to stable made-up values."""

    model: str = DEFAULT_MODEL
    memory_gib: float = Field(default=80.0, gt=0, le=4096)
    power_limit_w: float = Field(default=700.0, gt=0, le=5000)
    uuid: str | None = Field(default=None, pattern=r"^GPU-[0-9a-fA-F-]{8,64}$")
    pci_bus_id: str | None = Field(default=None, pattern=_PCI_BUS_ID)


class GpuSet(_Model):
    """``count`` identical GPUs."""

    count: int = Field(ge=1, le=64)
    model: str = DEFAULT_MODEL
    memory_gib: float = Field(default=80.0, gt=0, le=4096)
    power_limit_w: float = Field(default=700.0, gt=0, le=5000)


GpuIndexes = list[Annotated[int, Field(ge=0)]] | Literal["all"]


class JobAssignment(_Model):
    """Job ``job_id`` holds ``gpus`` from ``from`` until ``until`` (both optional), using
    ``memory_gib`` of each GPU's memory."""

    job_id: str
    gpus: GpuIndexes
    start: Time | None = Field(default=None, alias="from")
    until: Time | None = None
    memory_gib: float | None = Field(default=None, ge=0)

    @field_validator("job_id")
    @classmethod
    def _valid_job_id(cls, value: str) -> str:
        if not is_valid_job_id(value):
            raise ValueError("use 1-128 letters, digits or ._:@- starting with a letter or digit")
        return value


class Utilization(_Model):
    """How busy ``gpus`` are, in percent: ``constant`` (``value``), ``sine`` or ``square``
    (between ``min`` and ``max`` over ``period`` seconds)."""

    gpus: GpuIndexes = "all"
    pattern: Literal["constant", "sine", "square"]
    value: float | None = Field(default=None, ge=0, le=100)
    min: float = Field(default=0.0, ge=0, le=100)
    max: float = Field(default=100.0, ge=0, le=100)
    period: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Utilization:
        if self.pattern == "constant" and self.value is None:
            raise ValueError("pattern 'constant' needs 'value'")
        if self.min > self.max:
            raise ValueError("'min' must not be above 'max'")
        return self


class _Fault(_Model):
    gpu: int = Field(ge=0)
    at: Time | None = None
    id: str | None = None  # lets a demo repeat an otherwise identical fault


class XidFault(_Fault):
    """``count`` critical XID events with code ``xid`` on ``gpu`` at ``at``."""

    kind: Literal["xid"] = "xid"
    xid: int = Field(ge=1, le=999)
    count: int = Field(default=1, ge=1, le=1000)


class GpuLostFault(_Fault):
    """``gpu`` stops answering at ``at`` and is back at ``until`` (never, if not given)."""

    kind: Literal["gpu_lost"] = "gpu_lost"
    until: Time | None = None


class FieldUnsupportedFault(_Fault):
    """``field`` (a metric name) is not supported on ``gpu`` from ``at`` until ``until``."""

    kind: Literal["field_unsupported"] = "field_unsupported"
    field: str
    until: Time | None = None

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        if value not in FIELDS_BY_NAME:
            raise ValueError(f"unknown field {value!r}; use a metric name from docs/metrics/gpu.md")
        return value


class EccFault(_Fault):
    """``sbe`` single-bit and ``dbe`` double-bit ECC errors on ``gpu`` at ``at`` (added to the
    volatile and aggregate totals; each double-bit error also remaps a row)."""

    kind: Literal["ecc"] = "ecc"
    sbe: int = Field(default=0, ge=0)
    dbe: int = Field(default=0, ge=0)


class ThrottleFault(_Fault):
    """Clock-event ``reasons`` active on ``gpu`` from ``at`` until ``until``."""

    kind: Literal["throttle"] = "throttle"
    reasons: list[str] = Field(min_length=1)
    until: Time | None = None

    @field_validator("reasons")
    @classmethod
    def _known_reasons(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in CLOCK_EVENT_BITS]
        if unknown:
            raise ValueError(f"unknown reasons {unknown}; use {sorted(CLOCK_EVENT_BITS)}")
        return value


AnyFault = XidFault | GpuLostFault | FieldUnsupportedFault | EccFault | ThrottleFault
Fault = Annotated[AnyFault, Field(discriminator="kind")]


class Scenario(_Model):
    """A simulated node. ``gpus`` is a count, a :class:`GpuSet` or a list of :class:`GpuSpec`."""

    hostname: str | None = Field(default=None, min_length=1, max_length=253)
    seed: int = 0
    driver_version: str = "550.90.07"
    cuda_version: str = "12.4"
    gpus: Annotated[int, Field(ge=1, le=64)] | GpuSet | list[GpuSpec]
    jobs: list[JobAssignment] = []
    utilization: list[Utilization] = []
    faults: list[Fault] = []

    @model_validator(mode="after")
    def _gpu_indexes_exist(self) -> Scenario:
        count = self.gpu_count
        if isinstance(self.gpus, list) and not self.gpus:
            raise ValueError("gpus: give at least one GPU")
        refs: list[tuple[str, int]] = []
        for i, job in enumerate(self.jobs):
            if job.gpus != "all":
                refs += [(f"jobs.{i}.gpus", g) for g in job.gpus]
        for i, util in enumerate(self.utilization):
            if util.gpus != "all":
                refs += [(f"utilization.{i}.gpus", g) for g in util.gpus]
        refs += [(f"faults.{i}.gpu", fault.gpu) for i, fault in enumerate(self.faults)]
        for where, index in refs:
            if index >= count:
                raise ValueError(
                    f"{where}: GPU {index} does not exist (the scenario has {count} GPUs, 0-{count - 1})"
                )
        return self

    @property
    def gpu_count(self) -> int:
        if isinstance(self.gpus, int):
            return self.gpus
        if isinstance(self.gpus, GpuSet):
            return self.gpus.count
        return len(self.gpus)

    def gpu_specs(self) -> list[GpuSpec]:
        if isinstance(self.gpus, list):
            return list(self.gpus)
        if isinstance(self.gpus, GpuSet):
            base = GpuSpec(model=self.gpus.model, memory_gib=self.gpus.memory_gib,
                           power_limit_w=self.gpus.power_limit_w)
            return [base] * self.gpus.count
        return [GpuSpec()] * self.gpus

    def with_faults(self, *faults: AnyFault) -> Scenario:
        """A copy with ``faults`` appended (the scenario itself is immutable), validated like a
        file: a fault on a GPU that does not exist is a ConfigError here, not at the next reload."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        data["faults"] = [*data["faults"], *(f.model_dump(by_alias=True, exclude_none=True) for f in faults)]
        return parse_model(Scenario, data, "scenario")

    def to_yaml(self) -> str:
        # Defaults are kept: a fault's ``kind`` is one, and without it the file would not parse.
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)


def default_scenario(count: int, hostname: str | None = None, seed: int = 0) -> Scenario:
    """What ``--simulate N`` runs: ``count`` H100-class GPUs, every block of four held by one
    job (``sim-1000``, ``sim-1001``, ...), busy with a slow sine between 60 and 98 %."""
    if not 1 <= count <= 64:
        raise ConfigError(f"--simulate: give 1-64 GPUs, not {count}")
    jobs = [
        JobAssignment(job_id=f"sim-{1000 + block}", gpus=list(range(block * 4, min(count, block * 4 + 4))))
        for block in range((count + 3) // 4)
    ]
    return Scenario(hostname=hostname, seed=seed, gpus=count, jobs=jobs,
                    utilization=[Utilization(pattern="sine", min=60, max=98, period=120)])


def parse_scenario(data: Any, source: str) -> Scenario:
    return parse_model(Scenario, data, source)


def load_scenario(path: Path | str) -> Scenario:
    return parse_scenario(load_yaml_file(path), str(path))


def write_scenario(path: Path | str, scenario: Scenario) -> None:
    """Write ``scenario`` atomically (temp file + rename), so a running exporter never reads a
    half-written file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(scenario.to_yaml())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ScenarioSource:
    """Something that hands out the current scenario."""

    def current(self) -> Scenario:
        raise NotImplementedError


class FixedScenario(ScenarioSource):
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario

    def current(self) -> Scenario:
        return self.scenario


class ScenarioFile(ScenarioSource):
    """A scenario file re-read when it changes (size, mtime or inode). A bad edit is logged and
    counted, and the last good scenario stays in force; so does a change of the GPU count, which
    needs a restart because the set of GPUs is fixed when the exporter starts."""

    def __init__(self, path: Path | str, stat: Callable[[Path], os.stat_result] = os.stat) -> None:
        self.path = Path(path)
        self._stat = stat
        self._lock = threading.Lock()
        self._signature = self._sig()
        self._scenario = load_scenario(self.path)  # a bad file at start is a ConfigError: exit 2
        self.reloads = 0
        self.reload_errors = 0
        self.last_error: str | None = None

    def _sig(self) -> tuple[int, int, int] | None:
        try:
            st = self._stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Scenario:
        with self._lock:
            sig = self._sig()
            if sig is not None and sig != self._signature:
                self._signature = sig
                self._reload()
            return self._scenario

    def _reload(self) -> None:
        try:
            scenario = load_scenario(self.path)
            if scenario.gpu_count != self._scenario.gpu_count:
                raise ConfigError(
                    f"{self.path}: the GPU count changed from {self._scenario.gpu_count} to "
                    f"{scenario.gpu_count}; that needs a restart"
                )
        except ConfigError as exc:
            self.reload_errors += 1
            self.last_error = str(exc)
            log.error("scenario not reloaded, keeping the last good one: %s", exc)
            return
        self._scenario = scenario
        self.reloads += 1
        self.last_error = None
        log.info("scenario %s reloaded", self.path)
