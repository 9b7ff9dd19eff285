"""``jobsight api`` as a real process on 127.0.0.1, for tests that attack it over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.api.conftest import ADMIN, METRICS, SCHEDULER, TEAM_A, TEAM_B, WEBHOOK
from tests.support import Proc, free_port, jobsight_command, wait_for_http


@dataclass(frozen=True)
class LiveApi:
    url: str
    proc: Proc
    config: Path


def live_settings(tmp_path: Path, prometheus_url: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The suite's tokens (admin, two tenants, a scheduler, metrics, webhook), a SQLite registry
    in ``tmp_path``, ``prometheus_url``; ``extra`` laid over the top."""
    return {
        "store_url": f"sqlite:///{tmp_path / 'api.db'}",
        "prometheus_url": prometheus_url,
        "tokens": [
            {"token": ADMIN, "tenant": "ops", "role": "admin"},
            {"token": TEAM_A, "tenant": "team-a", "role": "tenant"},
            {"token": TEAM_B, "tenant": "team-b", "role": "tenant"},
            {"token": SCHEDULER, "tenant": "slurm", "role": "scheduler"},
        ],
        "webhook_token": WEBHOOK,
        "metrics_token": METRICS,
        "dependency_timeout_seconds": 2.0,
        **(extra or {}),
    }


def start_api(
    spawn: Callable[..., Proc],
    tmp_path: Path,
    settings: dict[str, Any],
    wrapper: Sequence[str] = (),
    name: str = "api",
) -> LiveApi:
    """Start ``jobsight api`` with ``settings`` (``wrapper``: an argv prefix such as
    ``prlimit --nofile=256:256 --``) and wait until ``/healthz`` answers."""
    port = free_port()
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    config.chmod(0o600)
    proc = spawn(
        [*wrapper, *jobsight_command("api", "--config", str(config), "--listen", f"127.0.0.1:{port}")],
        name=name,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/healthz", timeout=60, proc=proc)
    return LiveApi(url, proc, config)
