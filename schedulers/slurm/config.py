"""The hook's configuration: ``/etc/jobsight/slurm.yaml``, or the file ``$JOBSIGHT_SLURM_CONFIG`` names.

Slurm runs a hook by path with no arguments and a scrubbed environment, so the path is fixed and
the file carries everything the hook cannot learn from Slurm's variables: the controller-side
hooks get no ``SLURM_CONF``, so ``slurm_conf`` tells them where scontrol finds the cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobsight.config import load_model
from jobsight.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/jobsight/slurm.yaml")
CONFIG_ENV_VAR = "JOBSIGHT_SLURM_CONFIG"

_TENANT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class SlurmHookConfig(BaseModel):
    """Settings of ``jobsight slurm hook`` and ``jobsight slurm flush``.

    Paths may contain ``%n``, replaced by the node's name (``SLURMD_NODENAME``), the way
    slurm.conf's own per-node paths do; that lets several slurmd on one host keep apart.
    """

    model_config = ConfigDict(extra="forbid")

    api_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s]+$",
        description="the jobsight API; without it the controller hooks only spool",
    )
    token: str | None = Field(default=None, min_length=1, max_length=4096)
    token_file: Path | None = None
    job_map_dir: str = "/run/jobsight/jobs"
    spool_dir: str = "/var/spool/jobsight/slurm"
    tenant: str | None = Field(default=None, pattern=_TENANT,
                               description="fixed tenant; default: the job's Slurm account")
    tenant_map: dict[str, str] = Field(default_factory=dict,
                                       description="Slurm account → jobsight tenant")
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    slurm_conf: Path | None = Field(default=None,
                                    description="slurm.conf for scontrol in the controller hooks")
    gres_conf: Path | None = Field(default=None,
                                   description="default: gres.conf beside $SLURM_CONF")
    scontrol: str = "scontrol"
    nvidia_procfs: str = Field(default="/proc/driver/nvidia/gpus",
                               description="where the driver lists each GPU's minor and UUID")
    hostname: str | None = Field(default=None, max_length=253,
                                 description="the node's host key; default: Slurm's NodeName")

    @model_validator(mode="after")
    def _one_token_source(self) -> SlurmHookConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        for account, tenant in self.tenant_map.items():
            if not _valid_tenant(tenant):
                raise ValueError(f"tenant_map.{account}: {tenant!r} is not a valid tenant name")
        return self

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


def _valid_tenant(value: str) -> bool:
    return re.match(_TENANT, value) is not None


def config_path(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


def load_config(path: Path) -> SlurmHookConfig:
    return load_model(SlurmHookConfig, path)
