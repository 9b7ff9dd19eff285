"""The hook's configuration: ``/etc/jobsight/slurm.yaml``, or the file ``$JOBSIGHT_SLURM_CONFIG`` names.

Slurm runs a hook by path with no arguments and a scrubbed environment, so the path is fixed and
the file carries everything the hook cannot learn from Slurm's variables: the controller-side
hooks get no ``SLURM_CONF``, so ``slurm_conf`` tells scontrol where the cluster is.

Validated by hand rather than with a pydantic model, unlike the other components' configs: a
Prolog runs on every job's start and importing pydantic alone costs more than the whole hook may
(benchmarks/slurm_hooks.py). Errors still name the file, the field and the problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from jobsight.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/jobsight/slurm.yaml")
CONFIG_ENV_VAR = "JOBSIGHT_SLURM_CONFIG"

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_URL = re.compile(r"^https?://[^\s/]+(/[^\s]*)?$")
_MAX_JSON_BYTES = 1024 * 1024  # a hook's settings are a few hundred bytes
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class SlurmHookConfig(NamedTuple):
    """Settings of ``jobsight slurm hook`` and ``jobsight slurm flush`` (docs/slurm.md).

    Paths may contain ``%n``, replaced by the node's name (``SLURMD_NODENAME``; ``slurmctld`` for
    the controller's spool), the way slurm.conf's own per-node paths do. A NamedTuple, not a
    dataclass: importing dataclasses (and the inspect module it loads) costs each hook run ~5 ms.
    """

    api_url: str | None = None
    token: str | None = None
    token_file: Path | None = None
    job_map_dir: str = "/run/jobsight/jobs"
    alias_dir: str | None = None  # default: <job_map_dir>/aliases
    spool_dir: str = "/var/spool/jobsight/slurm"
    tenant: str | None = None
    tenant_map: Mapping[str, str] = MappingProxyType({})
    timeout_seconds: float = 5.0
    slurm_conf: Path | None = None
    gres_conf: Path | None = None
    scontrol: str = "scontrol"
    nvidia_procfs: str = "/proc/driver/nvidia/gpus"
    hostname: str | None = None

    def node_path(self, template: str, node: str) -> Path:
        return Path(template.replace("%n", node))

    def read_token(self) -> str | None:
        if self.token_file is None:
            return self.token
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"token_file {self.token_file}: {exc.strerror or exc}") from exc
        if not text:
            raise ConfigError(f"token_file {self.token_file} is empty")
        return text


def _str(data: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None = None,
         what: str = "") -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: must be a non-empty string")
    if pattern is not None and not pattern.match(value):
        raise ValueError(f"{key}: {value!r} is not {what}")
    return value


def _parse(data: Mapping[str, Any]) -> SlurmHookConfig:
    known = set(SlurmHookConfig._fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    if data.get("token") is not None and data.get("token_file") is not None:
        raise ValueError("token, token_file: give one, not both")
    tenant_map = data.get("tenant_map") or {}
    if not isinstance(tenant_map, dict):
        raise ValueError("tenant_map: must be a mapping of Slurm account to tenant")
    for account, tenant in tenant_map.items():
        if not isinstance(tenant, str) or not _TENANT.match(tenant):
            raise ValueError(f"tenant_map.{account}: {tenant!r} is not a valid tenant name")
    timeout = data.get("timeout_seconds", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise ValueError(f"timeout_seconds: {timeout!r} is not a number of seconds in (0, 60]")
    defaults = SlurmHookConfig()
    token_file = _str(data, "token_file")
    slurm_conf = _str(data, "slurm_conf")
    gres_conf = _str(data, "gres_conf")
    return SlurmHookConfig(
        api_url=_str(data, "api_url", _URL, "an http(s) URL"),
        token=_str(data, "token"),
        token_file=Path(token_file) if token_file else None,
        job_map_dir=_str(data, "job_map_dir") or defaults.job_map_dir,
        alias_dir=_str(data, "alias_dir"),
        spool_dir=_str(data, "spool_dir") or defaults.spool_dir,
        tenant=_str(data, "tenant", _TENANT, "a tenant name (letters, digits, ._-)"),
        tenant_map={str(k): str(v) for k, v in tenant_map.items()},
        timeout_seconds=float(timeout),
        slurm_conf=Path(slurm_conf) if slurm_conf else None,
        gres_conf=Path(gres_conf) if gres_conf else None,
        scontrol=_str(data, "scontrol") or defaults.scontrol,
        nvidia_procfs=_str(data, "nvidia_procfs") or defaults.nvidia_procfs,
        hostname=_str(data, "hostname", _HOST, "a host name"),
    )


def config_path(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> SlurmHookConfig:
    try:
        return _parse(_read_settings(path))
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _read_settings(path: Path) -> Mapping[str, Any]:
    """The file's mapping. A file written as JSON (which is YAML too) is read with the standard
    library's parser: importing PyYAML costs each hook run about 8 ms, a sixth of it. Anything
    else, JSON that does not parse, and a file that cannot be read go to the YAML loader the other
    components use (and its errors)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_JSON_BYTES + 1)
    except OSError:
        raw = b""
    if raw.lstrip().startswith(b"{") and len(raw) <= _MAX_JSON_BYTES:
        import json

        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
    from jobsight.config import load_yaml_file

    return load_yaml_file(path)
