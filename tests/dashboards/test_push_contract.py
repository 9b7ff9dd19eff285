"""Contract test at the HTTP boundary: what `jobsight dashboards push` and annotate_job send to
Grafana through grafana-client, against an in-test server that answers like Grafana."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from dashboards.push import push_dashboards, with_datasource
from dashboards.render import load_committed
from jobsight.errors import ConfigError, DependencyUnavailable, InvalidInput
from jobsight.grafana import annotate_job, make_client
from tests.dashboards.fake_grafana import FakeGrafana
from tests.support import REPO_ROOT, free_port, jobsight_command

TOKEN = "glsa_test_token"


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    with FakeGrafana(TOKEN) as fake:
        yield fake


def _datasources(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            found.append(node["datasource"])
        for value in node.values():
            found.extend(_datasources(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_datasources(value))
    return found


def test_push_creates_the_folder_and_saves_every_dashboard_with_overwrite(grafana: FakeGrafana) -> None:
    dashboards = load_committed()
    pushed = push_dashboards(
        make_client(grafana.url, TOKEN), dashboards, folder="GPU cluster", datasource_uid="prom-main"
    )

    assert grafana.calls() == [("GET", "/api/folders"), ("POST", "/api/folders")] + [
        ("POST", "/api/dashboards/db")
    ] * len(dashboards)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in grafana.requests)
    assert grafana.requests[1].body == {"title": "GPU cluster"}
    saves = [r.body for r in grafana.requests[2:]]
    assert [s["dashboard"]["uid"] for s in saves] == list(dashboards)
    for save in saves:
        assert save["overwrite"] is True
        assert save["folderUid"] == "folder1"
        assert save["dashboard"]["id"] is None
        sources = _datasources(save["dashboard"])
        assert sources, save["dashboard"]["uid"]
        for source in sources:
            if source["type"] == "prometheus":
                # through the $datasource variable, whose default is the pushed uid
                assert source["uid"] in ("${datasource}", "prom-main")
            else:  # Grafana's own annotation store is not a Prometheus datasource
                assert source == {"type": "grafana", "uid": "-- Grafana --"}
        (variable,) = [v for v in save["dashboard"]["templating"]["list"] if v["type"] == "datasource"]
        assert variable["current"]["value"] == "prom-main"
    assert [(p.uid, p.version) for p in pushed] == [(uid, 1) for uid in dashboards]
    # Grafana slugs the title "jobsight / Job": the link the API builds (conventions) matches.
    assert {p.uid: p.url for p in pushed}["jobsight-job"] == "/d/jobsight-job/jobsight-job"
    # The committed files themselves still default to the datasource uid "prometheus".
    (committed,) = [v for v in dashboards["jobsight-gpu"]["templating"]["list"] if v["type"] == "datasource"]
    assert committed["current"]["value"] == "prometheus"


def test_a_fixed_datasource_uid_is_replaced_and_a_variable_reference_kept() -> None:
    model: dict[str, Any] = {
        "templating": {
            "list": [{"type": "datasource", "query": "prometheus", "current": {"value": "prometheus"}}]
        },
        "panels": [
            {"datasource": {"type": "prometheus", "uid": "prometheus"}},
            {"datasource": {"type": "prometheus", "uid": "${datasource}"}},
        ],
    }
    pushed = with_datasource(model, "p9")
    assert [p["datasource"]["uid"] for p in pushed["panels"]] == ["p9", "${datasource}"]
    assert pushed["templating"]["list"][0]["current"]["value"] == "p9"
    assert model["panels"][0]["datasource"]["uid"] == "prometheus"  # the input is not changed


def test_second_push_reuses_the_folder_and_overwrites(grafana: FakeGrafana) -> None:
    client = make_client(grafana.url, TOKEN)
    push_dashboards(client, load_committed())
    before = len(grafana.requests)
    pushed = push_dashboards(client, load_committed())
    assert ("POST", "/api/folders") not in grafana.calls()[before:]
    assert {p.version for p in pushed} == {2}
    assert len(grafana.folders) == 1 and grafana.folders[0]["title"] == "jobsight"


def test_cli_push_installs_all_dashboards(grafana: FakeGrafana) -> None:
    env = {**os.environ, "JOBSIGHT_GRAFANA_TOKEN": TOKEN}
    result = subprocess.run(
        jobsight_command(
            "dashboards", "push", "--grafana-url", grafana.url, "--folder", "Fleet", "--datasource-uid", "p1"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(grafana.dashboards) == sorted(load_committed())
    assert f"jobsight-job: version 1 {grafana.url}/d/jobsight-job/jobsight-job" in result.stdout
    saved = grafana.dashboards["jobsight-node"]["dashboard"]
    (variable,) = [v for v in saved["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == "p1"


def test_cli_push_with_a_rejected_token_exits_2_naming_the_problem(grafana: FakeGrafana) -> None:
    result = subprocess.run(
        jobsight_command("dashboards", "push", "--grafana-url", grafana.url, "--token", "wrong"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert "Grafana rejected the token while trying to list folders (401)" in result.stderr
    assert grafana.dashboards == {}


def test_grafana_errors_are_translated(grafana: FakeGrafana) -> None:
    grafana.fail_with = 500
    with pytest.raises(DependencyUnavailable, match="grafana: cannot list folders"):
        push_dashboards(make_client(grafana.url, TOKEN), load_committed())
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(DependencyUnavailable, match="grafana"):
        push_dashboards(make_client(closed, TOKEN, timeout=2), load_committed())
    with pytest.raises(ConfigError, match="invalid Grafana URL"):
        make_client("grafana:3000", TOKEN)


def test_annotate_job_posts_a_tagged_annotation(grafana: FakeGrafana) -> None:
    client = make_client(grafana.url, TOKEN)
    first = annotate_job(client, "4711", "job 4711 started", 1_700_000_000_000, ["start"])
    second = annotate_job(
        client,
        "4711",
        "job 4711 failed: XID 79 on node2 GPU 3",
        1_700_000_600_000,
        ["failed", "jobsight"],
        time_end_ms=1_700_000_660_000,
    )
    assert (first, second) == (1, 2)
    assert grafana.calls() == [("POST", "/api/annotations")] * 2
    assert grafana.annotations[0] == {
        "panelId": None,
        "time": 1_700_000_000_000,
        "timeEnd": None,
        "tags": ["jobsight", "job_id:4711", "start"],
        "text": "job 4711 started",
    }
    assert grafana.annotations[1]["tags"] == ["jobsight", "job_id:4711", "failed"]
    assert grafana.annotations[1]["timeEnd"] == 1_700_000_660_000


@pytest.mark.parametrize(
    ("job_id", "time_ms", "text", "message"),
    [
        ('47"11', 1, "x", "invalid job id"),
        ("4711", -1, "x", "invalid annotation time"),
        ("4711", 1, "  ", "annotation text is empty"),
    ],
)
def test_annotate_job_refuses_bad_input_before_calling_grafana(
    grafana: FakeGrafana, job_id: str, time_ms: int, text: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        annotate_job(make_client(grafana.url, TOKEN), job_id, text, time_ms)
    assert grafana.requests == []
