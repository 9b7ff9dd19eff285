"""Links from a job to where its data lives: Grafana dashboards (uids fixed by the dashboards
component), TensorBoard, this API's logs/events routes, and Alertmanager."""

from __future__ import annotations

import time
from urllib.parse import quote, urlencode

from api.models import Links
from api.store import Job

JOB_DASHBOARD = "jobsight-job/jobsight-job"
NODE_DASHBOARD = "jobsight-node/jobsight-node"
GPU_DASHBOARD = "jobsight-gpu/jobsight-gpu"


def _ms(ts: float) -> int:
    return int(ts * 1000)


def job_time_range(job: Job, now: float, pad: float = 300.0) -> tuple[int, int | str]:
    """Grafana's ``from``/``to`` for the job: its start - 5 min to its end + 5 min; a job still
    running ends at ``now``, so the dashboard keeps following it instead of freezing at the moment
    the link was made."""
    start = (job.started_at if job.started_at is not None else now - 3600) - pad
    if job.ended_at is None:
        return _ms(start), "now"
    return _ms(start), _ms(job.ended_at + pad)


def job_dashboard_url(grafana_url: str, job_id: str, start_ms: int, end_ms: int | str) -> str:
    query = urlencode({"var-job_id": job_id, "from": start_ms, "to": end_ms})
    return f"{grafana_url.rstrip('/')}/d/{JOB_DASHBOARD}?{query}"


def build_links(job: Job, hosts: list[str], gpus: list[tuple[str, int]], *, grafana_url: str | None,
                api_url: str, alertmanager_url: str | None, tensorboard_url: str | None,
                now: float | None = None, page_url: str | None = None) -> Links:
    start_ms, end_ms = job_time_range(job, time.time() if now is None else now)
    window = {"from": start_ms, "to": end_ms}
    node_links: dict[str, str] = {}
    gpu_links: list[dict[str, str]] = []
    job_link = None
    if grafana_url:
        base = grafana_url.rstrip("/")
        job_link = job_dashboard_url(base, job.job_id, start_ms, end_ms)
        for host in hosts:
            node_links[host] = f"{base}/d/{NODE_DASHBOARD}?{urlencode({'var-Hostname': host, **window})}"
        for host, gpu in gpus:
            url = f"{base}/d/{GPU_DASHBOARD}?{urlencode({'var-Hostname': host, 'var-gpu': gpu, **window})}"
            gpu_links.append({"host": host, "gpu": str(gpu), "url": url})
    api = api_url.rstrip("/")
    quoted = quote(job.job_id, safe="")
    alertmanager = None
    if alertmanager_url:
        # Alertmanager's UI takes a matcher list in `filter`.
        matchers = '{job_id="' + job.job_id + '"}'
        alertmanager = f"{alertmanager_url.rstrip('/')}/#/alerts?{urlencode({'filter': matchers})}"
    return Links(
        job_dashboard=job_link, node_dashboards=node_links, gpu_dashboards=gpu_links,
        tensorboard=tensorboard_url, logs=f"{api}/v1/jobs/{quoted}/logs",
        events=f"{api}/v1/jobs/{quoted}/events",
        alertmanager=alertmanager, page=page_url,
    )
