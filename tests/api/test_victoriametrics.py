"""The API pointed at a real VictoriaMetrics (Debian's 1.79) holding the same series as the test
Prometheus answers metrics, summary and diagnosis of the demo jobs with the same values: every
query the API sends is one MetricsQL accepts and evaluates alike (within one scrape's difference:
VictoriaMetrics' increase() and rate() do not extrapolate to the window's edges)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.catalog import CATALOG
from tests.api.conftest import ADMIN, TEAM_A, TEAM_B, WEBHOOK, auth, register_demo
from tests.api.scenario import DEMO_GPUS, STEP, Scenario, build_series
from tests.scale.vm import RunningVM, run_victoria_metrics
from tests.support import REPO_ROOT, require_binary

ROLLUPS = REPO_ROOT / "alerts" / "rules" / "rollups.yaml"


@contextmanager
def loaded(scenario: Scenario, workdir: Path) -> Iterator[RunningVM]:
    """A VictoriaMetrics holding the API tests' series (the same the test Prometheus serves)."""
    with run_victoria_metrics(workdir) as vm:
        book = build_series(scenario)

        def lines() -> Iterator[str]:
            for name, series in book.samples.items():
                for key, points in series.items():
                    labels = ",".join(f'{k}="{v}"' for k, v in key)
                    for t, v in points:
                        yield f"{name}{{{labels}}} {float(v)!r} {round(t * 1000)}"

        vm.import_text(lines())
        yield vm


@pytest.fixture(scope="module")
def victoria(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningVM]:
    with loaded(scenario, tmp_path_factory.mktemp("vm")) as vm:
        yield vm


def both(make_client: Callable[..., TestClient], vm: RunningVM, scenario: Scenario) -> dict[str, TestClient]:
    clients = {"prometheus": make_client(), "victoria": make_client(settings={"prometheus_url": vm.url})}
    for client in clients.values():
        register_demo(client, scenario)
    return clients


def get(client: TestClient, path: str, token: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, headers=auth(token), params=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def by_labels(metric: dict[str, Any]) -> dict[tuple[tuple[str, str], ...], dict[float, float]]:
    return {tuple(sorted(s["labels"].items())): {t: v for t, v in s["points"]} for s in metric["series"]}


def close(a: float | None, b: float | None, rel: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-9


def test_metrics_are_the_same_on_victoria_metrics(
    make_client: Callable[..., TestClient], victoria: RunningVM, scenario: Scenario
) -> None:
    clients = both(make_client, victoria, scenario)
    names = list(CATALOG)
    answers = {label: get(c, "/v1/jobs/demo-fail/metrics", TEAM_A, name=names, step=60)
               for label, c in clients.items()}
    prom, vm = ({m["name"]: m for m in answers[k]["metrics"]} for k in ("prometheus", "victoria"))
    assert answers["prometheus"]["step_seconds"] == answers["victoria"]["step_seconds"] == 60
    for name in names:
        p_series, v_series = (by_labels(answer[name]) for answer in (prom, vm))
        assert sorted(p_series) == sorted(v_series), name
        assert prom[name]["unavailable"] == vm[name]["unavailable"], name
        for key, points in p_series.items():
            shared = set(points) & set(v_series[key])
            # Where a series ends (the lost GPU), Prometheus repeats its last sample for its 5-minute
            # lookback and VictoriaMetrics stops after a few scrape intervals: up to 5 points at 60 s.
            # The points both answer must agree.
            assert len(shared) >= len(points) - 6, (name, key)
            for t in shared:
                assert close(points[t], v_series[key][t], rel=0.05), (name, key, t)
    assert sorted((s["labels"]["host"], int(s["labels"]["gpu"])) for s in vm["gpu_util"]["series"]) \
        == DEMO_GPUS


def test_summary_and_diagnosis_are_the_same_on_victoria_metrics(
    make_client: Callable[..., TestClient], victoria: RunningVM, scenario: Scenario
) -> None:
    clients = both(make_client, victoria, scenario)
    for job, token in (("demo-fail", TEAM_A), ("ok-job", TEAM_B)):
        prom, vm = (get(c, f"/v1/jobs/{job}/summary", token) for c in clients.values())
        assert [(g["host"], g["gpu"], g["uuid"]) for g in prom["gpus"]] == \
            [(g["host"], g["gpu"], g["uuid"]) for g in vm["gpus"]], job
        for p, v in zip(prom["gpus"], vm["gpus"], strict=True):
            for field in ("util_mean", "util_max", "memory_max_bytes", "power_mean_watts", "power_max_watts",
                          "idle_fraction"):
                assert close(p[field], v[field], rel=0.02), (job, p["host"], p["gpu"], field)
            # Counters: one scrape (15 s) of the window's growth apart at most.
            for field in ("energy_joules", "ecc_dbe_errors"):
                assert close(p[field], v[field], rel=STEP / prom["duration_seconds"] + 0.01), (job, field)
            assert p["lost"] == v["lost"] and p["straggler"] == v["straggler"]
            assert [(x["xid"], round(x["count"])) for x in p["xids"]] == \
                [(x["xid"], round(x["count"])) for x in v["xids"]]
        assert [n["host"] for n in prom["nodes"]] == [n["host"] for n in vm["nodes"]]
        for p, v in zip(prom["nodes"], vm["nodes"], strict=True):
            for field in ("rdma_rx_bytes", "rdma_tx_bytes", "job_cpu_seconds", "job_memory_max_bytes"):
                assert close(p[field], v[field], rel=STEP / prom["duration_seconds"] + 0.01), (job, field)
        assert prom["stragglers"] == vm["stragglers"]
        if prom["diagnosis"] is not None:
            assert [c["title"] for c in prom["diagnosis"]["causes"]] == \
                [c["title"] for c in vm["diagnosis"]["causes"]]
    # The failure is still XID 79 on node2 GPU 3, found in VictoriaMetrics' answers too.
    causes = get(clients["victoria"], "/v1/jobs/demo-fail/summary", TEAM_A)["diagnosis"]["causes"]
    assert causes[0]["title"].startswith("XID 79 on node2 GPU 3")
    assert any(e["source"] == "prometheus" for e in causes[0]["evidence"])



def test_discovery_alert_mapping_and_rollup_queries_are_accepted_by_victoria_metrics(
    make_client: Callable[..., TestClient], victoria: RunningVM, scenario: Scenario
) -> None:
    clients = both(make_client, victoria, scenario)
    # Discovery: jobs the exporters report now, never registered (disc-1 on node4).
    listed = {label: get(c, "/v1/jobs", ADMIN)["discovered"] for label, c in clients.items()}
    found = {label: [j["job_id"] for j in jobs] for label, jobs in listed.items()}
    assert found["victoria"] == found["prometheus"] == ["disc-1"]
    # An alert naming only a host and GPU is mapped to the job holding it at the alert's time.
    alert = {
        "status": "firing", "labels": {"alertname": "GPULost", "Hostname": "node4", "gpu": "0"},
        "annotations": {"summary": "s"}, "startsAt": get_iso(scenario.now - 60), "fingerprint": "fp-vm",
    }
    body = {"version": "4", "groupKey": "{}", "status": "firing", "receiver": "jobsight", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am:9093", "alerts": [alert]}
    mapped = {}
    for label, client in clients.items():
        response = client.post("/v1/alerts/webhook", json=body, headers=auth(WEBHOOK))
        assert response.status_code == 200, response.text
        mapped[label] = response.json()["mapped"]
    assert mapped["victoria"] == mapped["prometheus"] == {"fp-vm": ["disc-1"]}
    # The rollup summary's queries parse in MetricsQL; with no rollup series it falls back to raw.
    rolled = make_client(settings={"prometheus_url": victoria.url, "summary_rollup_after_seconds": 60})
    register_demo(rolled, scenario)
    summary = get(rolled, "/v1/jobs/demo-fail/summary", TEAM_A)
    assert any("rollups.yaml" in w for w in summary["warnings"])
    raw = get(clients["victoria"], "/v1/jobs/demo-fail/summary", TEAM_A)
    assert summary["gpus"] == raw["gpus"]


def get_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def test_rollups_replayed_by_vmalert_give_the_raw_summary(
    make_client: Callable[..., TestClient], scenario: Scenario, tmp_path: Path
) -> None:
    """vmalert evaluates alerts/rules/rollups.yaml over the demo's history (``-replay.*``) and writes
    the rollups back into VictoriaMetrics; the summary read from them matches the raw one."""
    with loaded(scenario, tmp_path / "vm") as victoria:
        replay_and_compare(make_client, victoria, scenario, tmp_path)


def replay_and_compare(
    make_client: Callable[..., TestClient], victoria: RunningVM, scenario: Scenario, tmp_path: Path
) -> None:
    result = subprocess.run(
        [require_binary("vmalert"), f"-rule={ROLLUPS}", f"-datasource.url={victoria.url}",
         f"-remoteWrite.url={victoria.url}", f"-replay.timeFrom={get_iso(scenario.base - 600)}",
         f"-replay.timeTo={get_iso(scenario.ok_end + 600)}", "-replay.rulesDelay=0s",
         "-replay.disableProgressBar", "-loggerLevel=ERROR"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    victoria.flush()
    raw = make_client(settings={"prometheus_url": victoria.url})
    rolled = make_client(settings={"prometheus_url": victoria.url, "summary_rollup_after_seconds": 60})
    for client in (raw, rolled):
        register_demo(client, scenario)
    slow = get(raw, "/v1/jobs/demo-fail/summary", TEAM_A)
    fast = get(rolled, "/v1/jobs/demo-fail/summary", TEAM_A)
    assert slow["rollup_step_seconds"] is None and fast["rollup_step_seconds"] == 300
    assert not any("rollups.yaml" in w for w in fast["warnings"])
    assert [(g["host"], g["gpu"]) for g in fast["gpus"]] == [(g["host"], g["gpu"]) for g in slow["gpus"]]
    for f, s in zip(fast["gpus"], slow["gpus"], strict=True):
        # Constant per GPU in the demo: the 5-minute windows at the edges change nothing.
        for field in ("util_max", "memory_max_bytes", "power_max_watts"):
            assert close(f[field], s[field], rel=1e-6), (f["host"], f["gpu"], field)
        assert close(f["util_mean"], s["util_mean"], rel=0.1), (f["host"], f["gpu"])
        assert f["lost"] == s["lost"]
    assert fast["diagnosis"]["causes"][0]["title"] == slow["diagnosis"]["causes"][0]["title"]
