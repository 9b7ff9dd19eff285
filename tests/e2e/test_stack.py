"""`jobsight up` end to end: the demo's XID 79 flows through metrics, logs, rules, Alertmanager and
the API to exactly one notification, the summary names it as the first cause, every dashboard
query returns data, Ctrl-C stops everything, and a second start is clean."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboards.queries import iter_queries, resolve_variables
from dashboards.render import load_committed
from tests.support import Proc, jobsight_command, wait_until

pytestmark = pytest.mark.e2e

# Short intervals keep the test quick; the defaults are measured by benchmarks/fault_to_notification.py.
UP_FLAGS = ["--free-ports", "--fault-after", "8", "--scrape-interval", "2"]
VARIABLES = {"Hostname": ["node1", "node2"], "gpu": ["0", "3"], "job_id": "demo-fail"}


def _start(spawn: Callable[..., Proc], state: Path) -> tuple[Proc, dict[str, Any]]:
    proc = spawn(jobsight_command("up", "--state-dir", str(state), *UP_FLAGS), name="up")

    def endpoints() -> dict[str, Any] | None:
        if not proc.alive():
            raise AssertionError(f"jobsight up exited with {proc.popen.returncode}:\n{proc.output()}")
        data: dict[str, Any] = json.loads((state / "endpoints.json").read_text())
        return data if data.get("pid") == proc.pid else None

    try:
        return proc, wait_until(endpoints, timeout=180, interval=0.5, message="jobsight up to be ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- output ---\n{proc.output()}") from None


def _stop(proc: Proc, state: Path) -> None:
    children = json.loads((state / "children.json").read_text())
    ports = [
        int(url.rsplit(":", 1)[1])
        for url in json.loads((state / "endpoints.json").read_text()).values()
        if isinstance(url, str) and url.startswith("http://127.0.0.1:")
    ]
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
    assert proc.popen.wait(timeout=60) == 0, proc.output()
    assert "stopped." in proc.output()
    for child in children:
        assert not Path(f"/proc/{child['pid']}").exists() or _is_zombie(child["pid"]), child
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_jobsight_up_demo_end_to_end(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    state = tmp_path / "state"
    started = time.time()
    proc, ep = _start(spawn, state)
    api, prom = ep["api"], ep["prometheus"]
    auth = {"Authorization": f"Bearer {ep['demo_token']}"}
    client = httpx.Client(timeout=15)
    try:
        # 1. every scrape target is up
        def targets_up() -> bool:
            active = client.get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
            return len(active) == 5 and all(t["health"] == "up" for t in active)

        wait_until(targets_up, timeout=60, interval=1, message="all Prometheus targets up")

        # 2. the XID alert reaches the API through Alertmanager, mapped to the failed job
        def xid_alert() -> dict[str, Any] | None:
            alerts = client.get(f"{api}/v1/jobs/demo-fail/alerts", headers=auth).json()["alerts"]
            return next((a for a in alerts if a["alertname"] == "GPUXidError"), None)

        alert = wait_until(xid_alert, timeout=120, interval=1, message="GPUXidError at the API")
        assert alert["labels"]["xid"] == "79"
        assert (alert["labels"]["Hostname"], alert["labels"]["gpu"]) == ("node2", "3")

        # 3. exactly one notification, naming the fault, with the job's links; the JobFailed alert
        #    arriving later must not send a second one
        def job_failed_alert_seen() -> bool:
            alerts = client.get(f"{api}/v1/jobs/demo-fail/alerts", headers=auth).json()["alerts"]
            return any(a["alertname"] == "JobFailed" for a in alerts)

        wait_until(job_failed_alert_seen, timeout=120, interval=1, message="JobFailed alert at the API")
        notes_path = Path(ep["notifications"])
        lines = wait_until(lambda: notes_path.read_text().splitlines(), timeout=60, message="a notification")
        recorded = client.get(f"{api}/v1/jobs/demo-fail/notifications", headers=auth).json()
        assert len(lines) == 1, lines
        items = recorded["notifications"] if isinstance(recorded, dict) else recorded
        assert len(items) == 1, recorded
        note = json.loads(lines[0])
        text = note["title"] + "\n" + note["body"]
        assert "XID 79" in text and "node2" in text and "GPU 3" in text, text
        assert "/d/jobsight-job/" in text and "var-job_id=demo-fail" in text, text
        assert "demo-ok" not in text
        fault_at = float((state / "fault_injected_at").read_text())
        print(f"\nfault to notification: {notes_path.stat().st_mtime - fault_at:.1f} s (informational)")

        # 4. the summary names the fault as the first cause
        summary = client.get(f"{api}/v1/jobs/demo-fail/summary", headers=auth).json()
        causes = summary["diagnosis"]["causes"]
        first = json.dumps(causes[0])
        assert "79" in first and "node2" in first, causes
        assert causes[0].get("gpu") in (3, "3") or "GPU 3" in first, causes[0]
        # the XID counter, born during the job, is counted from Prometheus too
        lost = [g for g in summary["gpus"] if (g["host"], g["gpu"]) == ("node2", 3)]
        assert lost and [x["xid"] for x in lost[0]["xids"]] == [79], lost
        assert summary["overall"]["xid_count"] >= 1, summary["overall"]

        # 5. every dashboard query returns data
        # The job dashboard's hidden job_hosts/job_gpus come from Prometheus, as Grafana fills them.
        def instant(expr: str) -> list[dict[str, Any]]:
            return list(client.get(f"{prom}/api/v1/query", params={"query": expr}).json()["data"]["result"])

        queries = [
            (uid, q)
            for uid, model in load_committed().items()
            for q in iter_queries(model, resolve_variables(model, VARIABLES, instant))
        ]
        empty: list[str] = []

        def all_have_data() -> bool:
            empty.clear()
            for uid, (title, expr) in queries:
                # Over the test's time range, as Grafana asks: the failed job's process series
                # ended with it, its events are a burst, yet the dashboard shows them.
                params: dict[str, str | float] = {
                    "query": expr,
                    "start": started,
                    "end": time.time(),
                    "step": 2,
                }
                body = client.get(f"{prom}/api/v1/query_range", params=params).json()
                if body.get("status") != "success" or not body["data"]["result"]:
                    empty.append(f"{uid} / {title}: {expr}")
            return not empty

        try:
            wait_until(all_have_data, timeout=90, interval=2, message="every dashboard query to return data")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still empty:\n" + "\n".join(empty)) from None
    finally:
        client.close()

    # 6. Ctrl-C stops every child and frees every port
    _stop(proc, state)

    # 7. a second `jobsight up` on the same state directory starts cleanly, and stops cleanly
    proc2, ep2 = _start(spawn, state)
    assert ep2["pid"] == proc2.pid
    assert httpx.get(f"{ep2['api']}/healthz", timeout=10).status_code == 200
    _stop(proc2, state)
