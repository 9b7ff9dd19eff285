"""Every query of every dashboard, template variables filled, run against a real Prometheus: each
one parses (a parse error is a 400), and against a synthetic cluster scraped by that Prometheus -
with jobsight's alert rules loaded, so ALERTS exists - each one returns data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alerts.config import render_rules
from dashboards.queries import PanelQuery, iter_queries
from dashboards.render import load_committed
from tests.dashboards.synthetic_cluster import HOSTS, SyntheticCluster
from tests.support import Proc, free_port, require_binary, wait_for_http, wait_until

# gpu 3 of node2 is the one with the XID, so the XID panel has data. job_hosts and job_gpus are
# what the job dashboard's hidden variables give for job 4711 (test_job_history.py resolves them
# from Prometheus). cluster stays "All" (.*): the synthetic series have no cluster label.
VARIABLES = {
    "Hostname": ["node1", "node2"],
    "gpu": ["0", "3"],
    "job_id": "4711",
    "job_hosts": ["node1", "node2"],
    "job_gpus": [f"GPU-{host}-{gpu}" for host in ("node1", "node2") for gpu in range(4)],
}


def _all_queries() -> list[tuple[str, PanelQuery]]:
    return [
        (uid, query) for uid, model in load_committed().items() for query in iter_queries(model, VARIABLES)
    ]


def _query(base: str, expr: str) -> httpx.Response:
    return httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path, spawn: Callable[..., Proc]) -> Iterator[str]:
    """Prometheus on a free port scraping the synthetic cluster every second, with the rules."""
    require_binary("prometheus")
    with SyntheticCluster() as cluster:
        rules = render_rules(tmp_path / "rules")
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rules],
            "scrape_configs": [
                {
                    "job_name": f"synthetic-{host}",
                    "honor_labels": True,
                    "metrics_path": f"/metrics/{host}",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{cluster.port}"], "labels": {"Hostname": host}}
                    ],
                }
                for host in HOSTS
            ],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        proc = spawn(
            [
                "prometheus",
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            name="prometheus",
        )
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/-/ready", proc=proc)
        yield base


def test_the_parse_check_can_fail(prometheus: str) -> None:
    response = _query(prometheus, 'rate(DCGM_FI_DEV_GPU_UTIL{Hostname=~"node1"}[1m]')
    assert response.status_code == 400
    assert response.json()["errorType"] == "bad_data"


def test_every_dashboard_query_parses_and_returns_data(prometheus: str) -> None:
    queries = _all_queries()
    assert len(queries) > 80

    unparsable = []
    for uid, (title, expr) in queries:
        response = _query(prometheus, expr)
        if response.status_code != 200:
            unparsable.append(f"{uid} / {title}: {expr}\n    -> {response.status_code} {response.text}")
    assert not unparsable, "queries Prometheus rejects:\n" + "\n".join(unparsable)

    # Data arrives with the first scrapes; rate() needs two samples and ALERTS the first rule
    # evaluations, so wait (bounded) until every query has a result.
    empty: list[str] = []

    def all_return_data() -> bool:
        empty[:] = []
        for uid, (title, expr) in queries:
            body = _query(prometheus, expr).json()
            if body["status"] != "success" or not body["data"]["result"]:
                empty.append(f"{uid} / {title}: {expr} -> {body}")
        return not empty

    try:
        wait_until(all_return_data, timeout=90, interval=1.0, message="every dashboard query to return data")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still empty:\n" + "\n".join(empty)) from None


def test_xid_stat_counts_an_xid_whose_series_is_new(prometheus: str) -> None:
    # The synthetic XID 79 counter on node2 GPU 3 appears already at 1: increase() would say 0.
    stats = {(uid, title): expr for uid, (title, expr) in _all_queries() if title == "XIDs in range"}
    assert set(stats) == {("jobsight-gpu", "XIDs in range"), ("jobsight-overview", "XIDs in range")}

    def values() -> list[float] | None:
        results = [_query(prometheus, expr).json()["data"]["result"] for expr in stats.values()]
        if not all(results):
            return None
        return [float(result[0]["value"][1]) for result in results]

    wait_until(lambda: values() == [1.0, 1.0], timeout=60, interval=0.5, message="one XID in both XID stats")
