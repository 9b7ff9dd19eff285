"""The job dashboard opened the way the API links to it - on a job that already failed, from its
start - 5 min to its end + 5 min - against a real Prometheus serving the synthetic cluster's
history (blocks written by the real promtool): every panel shows the ended job, the lost GPU
included; nothing fails where two jobs share a GPU; and the job's panels read the same series and
samples on a 3-host and a 32-host cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dashboards.queries import ALL, VariableValue, resolve_variables
from dashboards.render import load_committed
from tests.dashboards.synthetic_tsdb import (
    FAILED_HOSTS,
    FAILED_JOB,
    GPUS_PER_HOST,
    LOST_GPU,
    SHARED_GPU,
    SHARED_JOBS,
    XID_AT,
    Answer,
    View,
    ask_dashboard,
    build_tsdb,
    grafana_builtins,
    instant_query,
    start_prometheus,
    view,
)
from tests.support import require_binary

STEP = 30
# ALERTS needs rule evaluation, which a TSDB built from history has not had; the live test
# (test_queries_prometheus.py) covers those annotations.
NEEDS_RULES = {"annotation: Job alerts", "annotation: Alerts on the job's GPUs and nodes"}


@dataclass(frozen=True)
class History:
    base: str
    origin: int
    client: httpx.Client

    @property
    def view(self) -> View:
        return view(self.origin)

    def variables(self, model: dict[str, Any], **given: VariableValue) -> dict[str, VariableValue]:
        builtins = grafana_builtins(self.view, STEP)
        return resolve_variables(
            model, {**given, **builtins}, instant_query(self.client, self.base, self.view.end)
        )

    def ask(self, model: dict[str, Any], variables: dict[str, VariableValue]) -> dict[str, list[Answer]]:
        answers: dict[str, list[Answer]] = {}
        for answer in ask_dashboard(self.client, self.base, model, variables, self.view, STEP):
            answers.setdefault(answer.title, []).append(answer)
        return answers


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, History]]:
    """hosts -> a real Prometheus over that cluster's history, which ended an hour ago."""
    require_binary("promtool")
    require_binary("prometheus")
    root = tmp_path_factory.mktemp("history")
    origin = int(time.time()) - 2 * 3600
    origin -= origin % STEP
    started = []
    client = httpx.Client(timeout=30)
    try:
        found = {}
        for hosts in (3, 32):
            build_tsdb(root / f"tsdb-{hosts}", hosts, origin, step=STEP)
            proc, base = start_prometheus(root / f"tsdb-{hosts}", root)
            started.append(proc)
            found[hosts] = History(base, origin, client)
        yield found
    finally:
        client.close()
        for proc in started:
            proc.stop()


def _job() -> dict[str, Any]:
    return load_committed()["jobsight-job"]


def _value(answer: Answer) -> float:
    return float(answer.result[0]["value"][1])


def test_the_job_variables_list_the_ended_jobs_hosts_and_gpus_lost_one_included(
    clusters: dict[int, History],
) -> None:
    variables = clusters[3].variables(_job(), job_id=FAILED_JOB)
    assert variables["cluster"] == ALL
    assert variables["job_hosts"] == list(FAILED_HOSTS)
    gpus = variables["job_gpus"]
    assert len(gpus) == len(FAILED_HOSTS) * GPUS_PER_HOST
    assert f"GPU-{LOST_GPU[0]}-{LOST_GPU[1]}" in gpus


def test_every_panel_of_the_failed_job_shows_data_on_the_apis_link(clusters: dict[int, History]) -> None:
    history = clusters[3]
    model = _job()
    answers = history.ask(model, history.variables(model, job_id=FAILED_JOB))
    problems = [
        f"{title}: {a.status} {a.expr}"
        for title, found in answers.items()
        for a in found
        if title not in NEEDS_RULES and (a.status != 200 or not a.result)
    ]
    assert not problems, "panels without data for the failed job:\n" + "\n".join(problems)

    # The four stats of the issue, over the range rather than at its (post-mortem) end.
    assert _value(answers["GPUs"][0]) == len(FAILED_HOSTS) * GPUS_PER_HOST
    assert _value(answers["Nodes"][0]) == len(FAILED_HOSTS)
    assert _value(answers["GPU utilisation (avg)"][0]) == pytest.approx(90.0)
    assert _value(answers["GPU power (avg total)"][0]) == pytest.approx(600.0 * 16)
    # The lost GPU is on the graphs (until it was lost) and counted as lost.
    plotted = {(s["metric"]["Hostname"], s["metric"]["gpu"]) for s in answers["GPU utilisation"][0].result}
    assert (LOST_GPU[0], str(LOST_GPU[1])) in plotted and len(plotted) == 16
    assert _value(answers["GPUs lost"][0]) == 1
    # The XID with its code and time (ms), and as an annotation at that time.
    (xid,) = answers["XIDs"][0].result
    assert xid["metric"]["xid"] == "79" and xid["metric"]["Hostname"] == LOST_GPU[0]
    assert _value(answers["XIDs"][0]) == (history.origin + XID_AT) * 1000
    assert answers["annotation: XIDs"][0].result
    # Events from their first occurrence: each counter series is born at 1.
    by_kind = {
        s["metric"]["kind"]: float(s["value"][1])
        for a in answers["Events in range by kind"]
        for s in a.result
    }
    assert by_kind == {"nccl_timeout": 1.0, "gpu_xid": 1.0}
    per_step = answers["Log events by kind"][0].result
    assert [s["metric"]["kind"] for s in per_step] == ["nccl_timeout"]
    assert sum(float(v) for _, v in per_step[0]["values"]) == 1.0
    status = answers["Status"][0].result
    assert [s["metric"]["status"] for s in status] == ["failed"]


def test_nothing_fails_where_two_jobs_share_a_gpu(clusters: dict[int, History]) -> None:
    history = clusters[3]
    committed = load_committed()
    host, gpu = SHARED_GPU
    failures: list[str] = []
    for uid, model in committed.items():
        given: dict[str, VariableValue] = {"job_id": SHARED_JOBS[0], "Hostname": [host], "gpu": [str(gpu)]}
        for title, found in history.ask(model, history.variables(model, **given)).items():
            failures.extend(
                f"{uid} / {title}: {a.status} {a.body.get('error')}" for a in found if a.status != 200
            )
    assert not failures, "\n".join(failures)

    overview = history.ask(committed["jobsight-overview"], {"cluster": ALL})
    jobs = {s["metric"]["job_id"] for s in overview["Jobs by GPU utilisation (now)"][0].result}
    assert set(SHARED_JOBS) <= jobs
    shared = history.ask(_job(), history.variables(_job(), job_id=SHARED_JOBS[1]))
    assert _value(shared["GPUs"][0]) == 1
    assert _value(shared["GPU utilisation (avg)"][0]) == pytest.approx(90.0)


def test_the_jobs_panels_read_the_same_series_and_samples_on_a_10x_larger_cluster(
    clusters: dict[int, History],
) -> None:
    model = _job()

    def cost(history: History) -> dict[tuple[str, int], tuple[int, int]]:
        answers = history.ask(model, history.variables(model, job_id=FAILED_JOB))
        return {
            (title, index): (len(a.result), a.samples)
            for title, found in answers.items()
            for index, a in enumerate(found)
        }

    small, large = cost(clusters[3]), cost(clusters[32])
    assert small.keys() == large.keys()
    grown = {key: (small[key], large[key]) for key in small if small[key] != large[key]}
    assert not grown, f"job panels whose series or samples grow with the cluster: {grown}"
    assert sum(samples for _, samples in small.values()) > 10_000  # the comparison saw real work
