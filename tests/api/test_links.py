"""Grafana links follow a running job to ``now`` and frame a finished one."""

from __future__ import annotations

from api.links import build_links
from api.store import Job


def test_a_running_jobs_dashboard_link_ends_at_now_and_a_finished_ones_at_its_end() -> None:
    running = Job(job_id="j-1", tenant="t", started_at=1_000.0)
    links = build_links(running, ["n1"], [("n1", 0)], grafana_url="http://g", api_url="http://a",
                        alertmanager_url=None, tensorboard_url=None, now=5_000.0)
    assert links.job_dashboard == "http://g/d/jobsight-job/jobsight-job?var-job_id=j-1&from=700000&to=now"
    assert links.node_dashboards["n1"].endswith("from=700000&to=now")
    done = Job(job_id="j-1", tenant="t", started_at=1_000.0, ended_at=2_000.0, status="failed")
    links = build_links(done, [], [], grafana_url="http://g", api_url="http://a", alertmanager_url=None,
                        tensorboard_url=None, now=5_000.0)
    assert links.job_dashboard is not None and links.job_dashboard.endswith("from=700000&to=2300000")
