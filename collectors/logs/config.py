"""The collector's configuration file (YAML), validated by pydantic; every problem is reported as a
:class:`~jobsight.errors.ConfigError` naming the field. See docs/logs-collector.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collectors.logs.parsing import DEFAULT_RANK_PREFIX
from jobsight.config import load_model
from jobsight.errors import InvalidInput
from jobsight.identity import DEFAULT_LOG_PATH_PATTERNS, compile_path_pattern
from jobsight.jobid import is_valid_job_id

DEFAULT_LISTEN = "127.0.0.1:9404"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MultilineConfig(_Strict):
    enabled: bool = True
    max_lines: int = Field(default=500, ge=1, le=100_000)
    max_bytes: int = Field(default=1024 * 1024, ge=1024)
    flush_timeout: float = Field(default=2.0, gt=0, le=600)
    continuation_patterns: list[str] = Field(default_factory=list)

    @field_validator("continuation_patterns")
    @classmethod
    def _regexes(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return values


class _SourceBase(_Strict):
    name: str | None = None
    # The host stamped on this source's records, when it is not the collector's own: a collector
    # reading another node's logs (a shared filesystem, or the simulated cluster of `jobsight up`).
    host: str | None = Field(default=None, min_length=1, max_length=253)
    job_id: str | None = None  # every record of this source belongs to this job
    job_id_pattern: str | None = None
    job_id_patterns: list[str] | None = None
    job_map_dir: str | None = None  # a node whose GPUs all hold one job: records get that job
    # Slurm array/het aliases (`<array job>_<task>` → job id) the prolog writes, for patterns with
    # array_job_id/array_task_id groups (`slurm-%A_%a.out`): docs/slurm.md.
    job_alias_dir: str | None = None
    multiline: MultilineConfig = MultilineConfig()
    rank_prefix: str | None = DEFAULT_RANK_PREFIX
    max_line_bytes: int = Field(default=1024 * 1024, ge=256, le=64 * 1024 * 1024)

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_job_id(value):
            raise ValueError("not a valid job id (1-128 letters, digits or ._:@- starting with a letter "
                             "or digit)")
        return value

    @field_validator("job_id_pattern", "job_id_patterns")
    @classmethod
    def _path_patterns(cls, value: str | list[str] | None) -> str | list[str] | None:
        # Matched against the whole path, from the root: see jobsight.identity.compile_path_pattern.
        for pattern in [value] if isinstance(value, str) else value or []:
            try:
                compile_path_pattern(pattern)
            except InvalidInput as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("rank_prefix")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return value

    @field_validator("rank_prefix")
    @classmethod
    def _rank_group(cls, value: str | None) -> str | None:
        if value and "rank" not in re.compile(value).groupindex:
            raise ValueError("rank_prefix needs a named group (?P<rank>...)")
        return value

    def path_patterns(self) -> list[str]:
        patterns: list[str] = []
        if self.job_id_pattern:
            patterns.append(self.job_id_pattern)
        if self.job_id_patterns:
            patterns.extend(self.job_id_patterns)
        return patterns or list(DEFAULT_LOG_PATH_PATTERNS)


class _FileLike(_SourceBase):
    paths: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=lambda: ["*.gz", "*.bz2", "*.xz", "*.zst", "*.tmp"])
    rotate_wait: float = Field(default=5.0, ge=0, le=3600)
    skip_binary: bool = True
    # Symbolic links are not followed, anywhere below the fixed part of a glob (Filebeat's default):
    # a user's `ln -s /etc/shadow job/x.log` is never opened. Turn on only where every link in the
    # globbed directories is made by root (e.g. /var/log/containers/*.log).
    follow_symlinks: bool = False
    # Read a file only when its owner is the owner of the directory it is in (the job directory):
    # another user's file moved or written into a job's directory is not that job's log.
    check_owner: bool = False

    @field_validator("paths")
    @classmethod
    def _absolute(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.startswith("/"):
                raise ValueError(f"path {value!r} must be absolute")
        return values


class FileSource(_FileLike):
    type: Literal["file"]
    format: Literal["auto", "plain", "json"] = "auto"


class CriSource(_FileLike):
    type: Literal["cri"]
    # The kubelet renames 0.log to 0.log.<YYYYMMDD-HHMMSS> and gzips it at the next rotation: glob
    # the uncompressed rotated name too, so a rotation while the collector is down loses nothing.
    paths: list[str] = Field(
        default_factory=lambda: ["/var/log/pods/*/*/*.log", "/var/log/pods/*/*/*.log.2*"], min_length=1)


class DockerSource(_FileLike):
    type: Literal["docker"]
    paths: list[str] = Field(default_factory=lambda: ["/var/lib/docker/containers/*/*-json.log"],
                             min_length=1)


class KmsgSource(_SourceBase):
    type: Literal["kmsg"]
    path: str = "/dev/kmsg"
    boot_id_path: str = "/proc/sys/kernel/random/boot_id"
    rank_prefix: str | None = None


Source = Annotated[FileSource | CriSource | DockerSource | KmsgSource, Field(discriminator="type")]


class StoreConfig(_Strict):
    path: Path
    retention_days: float | None = Field(default=30.0, gt=0)
    max_bytes: int | None = Field(default=None, ge=1024 * 1024)
    keep_records: bool = True  # false: with elasticsearch, keep only the checkpoints here
    synchronous: Literal["normal", "full"] = "normal"


class ElasticsearchConfig(_Strict):
    hosts: list[str] = Field(min_length=1)
    namespace: str = "default"
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout: float = Field(default=30.0, gt=0)
    ilm_policy: str = "jobsight-logs"
    rollover_max_age: str = "1d"
    rollover_max_primary_shard_size: str = "50gb"
    delete_after: str = "30d"
    install_templates: bool = True
    dead_letter_path: Path | None = None
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        # Data stream naming rules (ECS data_stream.namespace): lowercase, no '-', at most 100.
        if not re.fullmatch(r"[a-z0-9_]{1,100}", value):
            raise ValueError("namespace must be 1-100 of a-z, 0-9 and _ (no '-': it separates data "
                             "stream parts)")
        return value

    @model_validator(mode="after")
    def _auth(self) -> ElasticsearchConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class RulesConfig(_Strict):
    files: list[Path] = Field(default_factory=list)
    defaults: bool = True
    disable: list[str] = Field(default_factory=list)


class BatchConfig(_Strict):
    max_records: int = Field(default=2000, ge=1, le=100_000)
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_wait: float = Field(default=0.5, gt=0, le=60)


class CollectorConfig(_Strict):
    sources: list[Source] = Field(min_length=1)
    store: StoreConfig
    elasticsearch: ElasticsearchConfig | None = None
    rules: RulesConfig = RulesConfig()
    batch: BatchConfig = BatchConfig()
    host: str | None = None
    listen: str = DEFAULT_LISTEN
    poll_interval: float = Field(default=0.25, gt=0, le=60)
    glob_interval: float = Field(default=2.0, gt=0, le=3600)
    retention_interval: float = Field(default=300.0, gt=0)
    retry_initial: float = Field(default=0.5, gt=0)
    retry_max: float = Field(default=30.0, gt=0)
    # /healthz answers 503 (and jobsight_log_stalled is 1) when the read loop has not completed a
    # round for this long: an input that blocks the loop stops every job's logs on the node.
    stall_after: float = Field(default=120.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _stall_bound(self) -> CollectorConfig:
        if self.stall_after <= self.poll_interval:
            raise ValueError("stall_after must be longer than poll_interval (an idle loop sleeps that long)")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> CollectorConfig:
        names = [source_name(s, i) for i, s in enumerate(self.sources)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: names must be unique, repeated: {dupes} (set `name:`)")
        return self


def source_name(source: FileSource | CriSource | DockerSource | KmsgSource, index: int) -> str:
    return source.name or (source.type if index == 0 else f"{source.type}{index}")


def load_config(path: Path | str) -> CollectorConfig:
    return load_model(CollectorConfig, path)
