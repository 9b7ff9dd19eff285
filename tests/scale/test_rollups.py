"""A long job's summary from the 5-minute rollups (alerts/rules/rollups.yaml, backfilled by the real
``promtool tsdb create-blocks-from rules``) agrees with the summary from raw samples within the
rollups' stated error, and says which it used; without the rollup series it falls back to raw
samples and says so."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.conftest import ADMIN, TEAM_A, auth, base_settings
from tests.scale.cluster import JOB, JOB_GPUS, JOB_HOSTS, Cluster, prometheus_with_query_log
from tests.support import REPO_ROOT, require_binary

ROLLUPS = REPO_ROOT / "alerts" / "rules" / "rollups.yaml"
# Means and totals: the rollups cover the window to within 5 minutes at each end (of 3 hours here).
REL = 0.04


def summary(url: str, workdir: Path, window: tuple[float, float], rollup_after: float) -> dict[str, Any]:
    workdir.mkdir()
    config = base_settings(workdir, url, None, {"query_cache_seconds": 0,
                                                "summary_rollup_after_seconds": rollup_after})
    with TestClient(create_app(config, environ={})) as client:
        body = {"tenant": "team-a", "status": "succeeded", "started_at": window[0], "ended_at": window[1]}
        assert client.put(f"/v1/jobs/{JOB}", json=body, headers=auth(ADMIN)).status_code == 201
        response = client.get(f"/v1/jobs/{JOB}/summary", headers=auth(TEAM_A))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, tuple[float, float]]]:
    end = float(int(time.time()) // 300 * 300 - 3600)
    window = (end - 3 * 3600, end)
    workdir = tmp_path_factory.mktemp("rollups")
    cluster = Cluster(gpus=16, start=window[0] - 900, end=window[1] + 600, step=15.0, wave=True)
    tsdb = cluster.write_tsdb(workdir)
    yield tsdb, window


def test_rollup_summary_matches_raw_and_falls_back_without_rules(
    history: tuple[Path, tuple[float, float]], tmp_path: Path
) -> None:
    tsdb, window = history
    with prometheus_with_query_log(tsdb, tmp_path) as prometheus:
        raw = summary(prometheus.url, tmp_path / "raw", window, rollup_after=0)
        # Rollups asked for, none recorded yet: raw samples, and the answer says so.
        fallback = summary(prometheus.url, tmp_path / "fallback", window, rollup_after=3600)
        backfill = tmp_path / "backfill"
        result = subprocess.run(
            [require_binary("promtool"), "tsdb", "create-blocks-from", "rules",
             f"--start={int(window[0]) - 900}", f"--end={int(window[1]) + 300}", f"--url={prometheus.url}",
             f"--output-dir={backfill}", str(ROLLUPS)],
            capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    assert raw["rollup_step_seconds"] is None and fallback["rollup_step_seconds"] is None
    assert any("rollups.yaml" in w for w in fallback["warnings"])
    assert fallback["gpus"] == raw["gpus"]

    for block in backfill.iterdir():
        if block.is_dir():
            shutil.move(str(block), tsdb / block.name)
    (tmp_path / "after").mkdir()
    with prometheus_with_query_log(tsdb, tmp_path / "after") as prometheus:
        rolled = summary(prometheus.url, tmp_path / "rolled", window, rollup_after=3600)
        asked = prometheus.query_log.read_text()
    assert rolled["rollup_step_seconds"] == 300
    assert "gpu:DCGM_FI_DEV_GPU_UTIL:avg5m" in asked and "DCGM_FI_DEV_GPU_UTIL[" not in asked
    assert not any("rollups.yaml" in w for w in rolled["warnings"])

    fast = {(g["host"], g["gpu"]): g for g in rolled["gpus"]}
    slow = {(g["host"], g["gpu"]): g for g in raw["gpus"]}
    assert sorted(fast) == sorted(slow) == JOB_GPUS
    for key, g in slow.items():
        for field in ("util_mean", "power_mean_watts", "energy_joules"):
            assert fast[key][field] == pytest.approx(g[field], rel=REL), (key, field)
        for field in ("util_max", "power_max_watts", "memory_max_bytes", "idle_fraction"):
            assert fast[key][field] == pytest.approx(g[field], rel=0.01, abs=1e-9), (key, field)
    nodes_fast = {n["host"]: n for n in rolled["nodes"]}
    nodes_slow = {n["host"]: n for n in raw["nodes"]}
    assert sorted(nodes_fast) == JOB_HOSTS
    for host, n in nodes_slow.items():
        assert nodes_fast[host]["rdma_rx_bytes"] == pytest.approx(n["rdma_rx_bytes"], rel=REL)
    assert rolled["overall"]["util_mean"] == pytest.approx(raw["overall"]["util_mean"], rel=REL)
