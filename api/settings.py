"""Typed settings of the job API, read once at start-up from a YAML file and/or the environment.

Environment variables use the prefix ``JOBSIGHT_API_`` (nested values with ``__``, e.g.
``JOBSIGHT_API_TENSORBOARD__MAX_INSTANCES=4``; lists and mappings as JSON). A value in the
environment overrides the same key in the YAML file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobsight.config import format_validation_error, load_yaml_file
from jobsight.errors import ConfigError

Role = Literal["tenant", "scheduler", "admin"]


class TokenConfig(BaseModel):
    """One API bearer token and its role (see docs/security.md):

    - ``tenant``: reads and annotates its own tenant's jobs;
    - ``scheduler``: registers and finishes jobs for any tenant (Slurm hooks, the Kubernetes
      watcher), lists them, and reads nothing else (no logs, metrics or summaries);
    - ``admin``: everything, including discovered jobs and admin routes.

    The older form ``admin: true`` / ``admin: false`` is still read as ``role: admin`` / ``tenant``.
    """

    model_config = {"extra": "forbid"}

    token: str = Field(min_length=16, description="the secret; at least 16 characters")
    tenant: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    role: Role = "tenant"

    @model_validator(mode="before")
    @classmethod
    def _legacy_admin(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "admin" not in data:
            return data
        data = dict(data)
        admin = data.pop("admin")
        if not isinstance(admin, bool):
            raise ValueError("admin must be true or false (better: role: tenant|scheduler|admin)")
        legacy = "admin" if admin else "tenant"
        if data.setdefault("role", legacy) != legacy:
            raise ValueError(f"admin: {str(admin).lower()} contradicts role: {data['role']}")
        return data


class TensorBoardConfig(BaseModel):
    model_config = {"extra": "forbid"}

    command: list[str] = Field(
        # The TensorBoard installed next to the API, without relying on PATH.
        default_factory=lambda: [sys.executable, "-m", "tensorboard.main"],
        description="argv prefix that runs TensorBoard; --flagfile/--logdir/--port/--host are appended",
    )
    host: str = Field(default="127.0.0.1", description="loopback address TensorBoards listen on")
    public_host: str | None = Field(
        default=None, description="ignored: TensorBoard is reached through the API's proxy")
    max_instances: int = Field(default=4, ge=1, le=64)
    user: str | int | None = Field(
        default=None,
        description="run TensorBoards as this user (name or uid), which must be able to read the allowed "
                    "roots; for an API that runs as root: TensorBoard parses files users wrote (default: "
                    "the API's own user)")
    idle_seconds: float = Field(default=1800.0, gt=0)
    start_timeout_seconds: float = Field(default=60.0, gt=0)
    allowed_roots: dict[str, list[Path]] = Field(
        default_factory=dict,
        description="per tenant, the directories a job's tensorboard_logdir must lie under; the key '*' "
                    "applies to every tenant and '{tenant}' in a path is replaced by the tenant's name. "
                    "A tenant with no roots gets no TensorBoard. A plain list is read as {'*': list}",
    )
    max_event_files: int = Field(default=1000, ge=1, description="event files one /scalars call reads")
    max_event_bytes: int = Field(default=512 * 1024 * 1024, ge=1024,
                                 description="bytes one /scalars call reads")
    max_walk_seconds: float = Field(default=20.0, gt=0, le=600, description="time one /scalars call may take")
    proxy_timeout_seconds: float = Field(default=60.0, gt=0, le=600,
                                         description="one proxied request to a TensorBoard")

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _list_means_every_tenant(cls, value: Any) -> Any:
        return {"*": value} if isinstance(value, list) else value

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        # Anyone who can reach a TensorBoard reads the logdir it serves: only the API may.
        if value not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("must be a loopback address (127.0.0.1, ::1 or localhost): TensorBoard is "
                             "reached through the API")
        return value


class ServerConfig(BaseModel):
    """Limits of the HTTP server against slow or too many clients (see api/server.py). Behind a
    reverse proxy (recommended, docs/security.md) the proxy enforces its own; these still hold."""

    model_config = {"extra": "forbid"}

    limit_concurrency: int = Field(
        default=1000, ge=2, le=100_000,
        description="open connections at most (lowered to fit the file-descriptor limit); a new one "
                    "drops the connection waiting longest without a complete request; 503 when all busy")
    request_read_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="a request's head and body must arrive within this")
    keep_alive_seconds: float = Field(default=5.0, ge=1, le=600, description="idle keep-alive connections")
    max_header_bytes: int = Field(default=16 * 1024, ge=4096, le=1024 * 1024,
                                  description="request line and headers at most (h11 incomplete event size)")
    backlog: int = Field(default=2048, ge=16, le=65535)


class PagesConfig(BaseModel):
    """The job pages (``/``, ``/jobs``, ``/jobs/{id}``): see docs/api.md, "Pages"."""

    model_config = {"extra": "forbid"}

    signing_key: str | None = Field(
        default=None, min_length=32,
        description="HMAC key of signed job links and page sessions (at least 32 characters); without "
                    "it a random key is used, and links and sessions end when the API restarts")
    link_expiry_seconds: float = Field(
        default=7 * 24 * 3600.0, gt=0, le=400 * 24 * 3600.0,
        description="how long a signed read-only job link (the one in notifications) opens the page")
    session_seconds: float = Field(default=12 * 3600.0, gt=0, le=30 * 24 * 3600.0,
                                   description="how long a page login lasts")


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JOBSIGHT_API_", env_nested_delimiter="__", extra="forbid"
    )

    listen: str = "127.0.0.1:8000"
    store_url: str = "sqlite:///jobsight-api.db"
    prometheus_url: str = "http://127.0.0.1:9090"
    alertmanager_url: str | None = None
    log_store: str | None = Field(
        None, description="directory of the embedded SQLite log store, or an http(s) Elasticsearch URL"
    )
    log_index: str = "logs-jobsight-*"
    grafana_url: str | None = None
    grafana_token: str | None = Field(
        default=None, min_length=1,
        description="service-account token: with grafana_url, job start and failure annotations are written",
    )
    public_url: str | None = Field(default=None, description="this API's own external URL, used in links")
    tensorboard: TensorBoardConfig = Field(default_factory=lambda: TensorBoardConfig())
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    pages: PagesConfig = Field(default_factory=lambda: PagesConfig())
    tokens: list[TokenConfig] = Field(default_factory=list)
    tenants_may_register_jobs: bool = Field(
        default=False,
        description="let tenant tokens create and update their own jobs (clusters without a scheduler "
                    "integration); off by default, since then the first tenant to register an id owns it",
    )
    webhook_token: str | None = Field(default=None, min_length=16)
    metrics_token: str | None = Field(
        default=None, min_length=16,
        description="bearer token that Prometheus presents to read the per-job series of /metrics "
                    "(jobsight_job_status); without it /metrics shows only request metrics",
    )
    notify: dict[str, list[str]] = Field(default_factory=dict)
    notify_max_attempts: int = Field(default=5, ge=1, le=100)
    notify_retry_seconds: float = Field(default=10.0, gt=0)
    notify_delay_seconds: float = Field(default=0.0, ge=0, description="wait before a first delivery")
    query_cache_seconds: float = Field(
        default=300.0, ge=0, description="how long answers about settled windows are reused; 0 disables")
    query_cache_entries: int = Field(default=256, ge=0)
    query_settle_seconds: float = Field(
        default=300.0, ge=0, description="a window that ended at least this long ago is settled")
    query_workers: int = Field(default=32, ge=1, le=256, description="parallel Prometheus queries")
    max_points_per_answer: int = Field(
        default=500_000, ge=1000,
        description="series x points one /metrics answer may hold; the default resolution coarsens to "
                    "fit, an explicit step that would exceed it is a 422 (docs/scale.md)")
    summary_rollup_after_seconds: float = Field(
        default=2 * 86400.0, ge=0,
        description="a summary over a longer window reads the 5-minute rollups of "
                    "alerts/rules/rollups.yaml instead of raw samples; 0 always uses raw samples")
    dependency_timeout_seconds: float = Field(
        default=5.0, gt=0, le=120, description="total time one call to Prometheus may take")
    prometheus_max_response_bytes: int = Field(
        default=32 * 1024 * 1024, ge=64 * 1024, description="a larger Prometheus answer is a 503")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @field_validator("store_url")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:///, postgresql:// or postgres://")
        return value

    @model_validator(mode="after")
    def _unique_tokens(self) -> ApiSettings:
        seen: set[str] = set()
        for entry in self.tokens:
            if entry.token in seen:
                raise ValueError("tokens: the same token is listed twice")
            seen.add(entry.token)
        if self.webhook_token is not None and self.webhook_token in seen:
            raise ValueError("webhook_token must differ from every API token")
        if self.metrics_token is not None and self.metrics_token in seen | {self.webhook_token}:
            raise ValueError("metrics_token must differ from every API token and the webhook_token")
        return self


def _explicit(model: BaseModel) -> dict[str, Any]:
    """Only the fields that were given (recursively), not the defaults."""
    out: dict[str, Any] = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        out[name] = _explicit(value) if isinstance(value, BaseModel) else value
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> ApiSettings:
    """YAML file values, overridden by the environment, then by ``overrides`` (flags)."""
    data: dict[str, Any] = load_yaml_file(config_file) if config_file is not None else {}
    source = str(config_file) if config_file is not None else "settings"
    try:
        from_env = ApiSettings()  # type: ignore[call-arg]  # pydantic-settings fills fields from env
    except ValidationError as exc:
        raise ConfigError(f"environment: {format_validation_error(exc)}") from exc
    # pydantic-settings ranks init values above the environment; we want the environment to win
    # over the file, so the fields the environment set are laid over the file's values here.
    merged = _deep_merge(data, _explicit(from_env))
    merged.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return ApiSettings.model_validate(merged)
    except ValidationError as exc:
        problems = format_validation_error(exc).replace("\n", f"\n{source}: ")
        raise ConfigError(f"{source}: {problems}") from exc
