"""The job page's training chart over HTTP against a real ``jobsight api`` and Prometheus: a job
that reports its steps (jobsight.training) gets a per-rank step-time chart with the hang marked and
the ranks that stopped first and the slow ranks named, in its data and in the page's text; the
catalog entry behind it is served by the API route too; a job without steps gets no chart."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.catalog import CATALOG
from api.prometheus import matcher
from api.scope import host_matcher
from tests.api.conftest import auth
from tests.api.pages.conftest import TEAM_A, TRAIN_JOB, PagesApi, login
from tests.api.scenario import TRAIN_RANKS, TRAIN_SLOW_RANK, TRAIN_STOPPED_RANK


@pytest.fixture
def session(pages_api: PagesApi) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        assert login(client, pages_api.url, TEAM_A).status_code == 303
        yield client


def _page_data(text: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text, re.S)
    assert found is not None, text[:2000]
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def _step_series(metrics: dict[str, Any]) -> dict[int, list[list[float]]]:
    entry = next(m for m in metrics["metrics"] if m["name"] == "train_step_seconds")
    assert entry["scope"] == "rank" and entry["unit"] == "seconds"
    return {int(s["labels"]["rank"]): s["points"] for s in entry["series"]}


def test_every_train_selector_carries_the_escaped_job_and_hosts() -> None:
    job_id = 'a"b\\c'
    expr = CATALOG["train_step_seconds"].build(job_id, ["n1", "n.2"], 60.0)
    selectors = re.findall(r"jobsight_train_\w+\{[^}]*\}", expr)
    assert len(selectors) == 2, expr
    for selector in selectors:
        assert matcher("job_id", job_id) in selector, selector
        assert host_matcher(["n1", "n.2"]) in selector and "n\\\\.2" in selector, selector


def test_training_job_page_charts_the_ranks_and_marks_the_hang(
    pages_api: PagesApi, session: httpx.Client
) -> None:
    s = pages_api.scenario
    page = session.get(f"{pages_api.url}/jobs/{TRAIN_JOB}")
    assert page.status_code == 200, page.text[:2000]
    text = page.text
    assert 'id="chart-train_step_seconds"' in text and 'data-scope="rank"' in text
    # The text alternative: the hang, the ranks that stopped first, the slowest ranks' table.
    hang = re.search(r'<p class="flash warning training-hang">(.*?)</p>', text, re.S)
    assert hang is not None and "rank 3 stopped stepping first" in hang.group(1), text[:4000]
    assert "Ranks that stopped first: 3." in text
    rows = re.findall(r"<tr class=\"[^\"]*\">\s*<th scope=\"row\">(\d+)</th>(.*?)</tr>",
                      text.split('class="num training-ranks"', 1)[1].split("</table>", 1)[0], re.S)
    states = {int(rank): cells.rsplit("<td>", 1)[1].split("</td>")[0] for rank, cells in rows}
    assert states.get(TRAIN_SLOW_RANK) == "slow", rows
    assert 'class="moment moment-hang"' in text
    # What the script draws: the hang on the shared time axis, the stopped and slow ranks.
    data = _page_data(text)
    marks = data["training"]
    assert marks["hang"]["ranks"] == [TRAIN_STOPPED_RANK]
    assert abs(marks["hang"]["t"] - s.train_hang_at) < 1.0
    assert marks["slow"] == [TRAIN_SLOW_RANK]
    assert any(m["kind"] == "hang" and abs(m["t"] - s.train_hang_at) < 1.0 for m in data["moments"])
    assert data["axis"][0] <= s.train_hang_at <= data["axis"][1]


def test_training_chart_data_per_rank(pages_api: PagesApi, session: httpx.Client) -> None:
    s = pages_api.scenario
    charts = session.get(f"{pages_api.url}/jobs/{TRAIN_JOB}/charts.json")
    assert charts.status_code == 200, charts.text[:2000]
    body = charts.json()
    ranks = _step_series(body)
    assert sorted(ranks) == sorted(TRAIN_RANKS)
    hosts = {int(series["labels"]["rank"]): series["labels"]["host"] for m in body["metrics"]
             if m["name"] == "train_step_seconds" for series in m["series"]}
    assert hosts == TRAIN_RANKS
    for rank, points in ranks.items():
        assert points, rank
        values = [v for _, v in points]
        want = 1.5 if rank == TRAIN_SLOW_RANK else 1.0
        # Steps of a steady rate: every point the rank's step time, never a zero or a NaN.
        assert all(abs(v - want) < 0.05 for v in values), (rank, min(values), max(values))
        # A stopped rank has no points after it stopped (a gap, not a zero).
        assert points[-1][0] <= s.train_hang_at + 120, (rank, points[-1])
    assert ranks[TRAIN_STOPPED_RANK][-1][0] < ranks[0][-1][0]
    # The same catalog entry through the API route, with the rank label.
    api = httpx.get(f"{pages_api.url}/v1/jobs/{TRAIN_JOB}/metrics",
                    params={"name": "train_step_seconds"}, headers=auth(TEAM_A), timeout=60)
    assert api.status_code == 200, api.text[:2000]
    assert sorted(_step_series(api.json())) == sorted(TRAIN_RANKS)


def test_a_job_without_training_steps_has_no_training_chart(
    pages_api: PagesApi, session: httpx.Client
) -> None:
    page = session.get(f"{pages_api.url}/jobs/demo-fail")
    assert page.status_code == 200
    assert 'id="chart-gpu_util"' in page.text  # the other charts are there
    assert "chart-train_step_seconds" not in page.text and 'id="training"' not in page.text
    assert _page_data(page.text)["training"] is None
    charts = session.get(f"{pages_api.url}/jobs/demo-fail/charts.json")
    assert charts.status_code == 200
    assert _step_series(charts.json()) == {}
