"""Finding 9: the API's own ``/metrics`` listed every job id, tenant and status to anyone. Without
a token it now shows only request metrics (routes as templates); the per-job series are for the
metrics token (Prometheus) and admins. Against the real API process over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import ADMIN, METRICS, SCHEDULER, TEAM_A, auth
from tests.api.live import live_settings, start_api
from tests.support import Proc, free_port, promtool_check_metrics

pytestmark = pytest.mark.security


def test_metrics_do_not_leak_job_ids_without_a_token(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    api = start_api(spawn, tmp_path, live_settings(tmp_path, f"http://127.0.0.1:{free_port()}"))
    body = {"tenant": "team-secret", "status": "failed", "nodes": ["node1"]}
    assert httpx.put(f"{api.url}/v1/jobs/secret-4711", json=body, headers=auth(SCHEDULER)).status_code == 201
    httpx.get(f"{api.url}/v1/jobs/secret-4711", headers=auth(TEAM_A))

    public = httpx.get(f"{api.url}/metrics").text
    assert "secret-4711" not in public and "team-secret" not in public and "jobsight_job_status" not in public
    assert 'route="/v1/jobs/{job_id}"' in public  # request metrics stay, by route template
    promtool_check_metrics(public)
    # A tenant's token does not unlock them either; a token nobody holds is a 401.
    assert httpx.get(f"{api.url}/metrics", headers=auth(TEAM_A)).status_code == 403
    assert httpx.get(f"{api.url}/metrics", headers=auth(SCHEDULER)).status_code == 403
    assert httpx.get(f"{api.url}/metrics", headers=auth("x" * 24)).status_code == 401

    # Prometheus, with the metrics token, still gets what the JobFailed rule needs.
    for token in (METRICS, ADMIN):
        full = httpx.get(f"{api.url}/metrics", headers=auth(token)).text
        assert 'jobsight_job_status{job_id="secret-4711",status="failed",tenant="team-secret"} 1.0' in full
        promtool_check_metrics(full)
