"""Against a real Grafana (JOBSIGHT_GRAFANA_URL, JOBSIGHT_GRAFANA_TOKEN with Editor rights on a
scratch instance: the dashboards are overwritten by uid and moved into a test folder, which is
deleted afterwards)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from dashboards.push import push_dashboards
from dashboards.render import load_committed
from jobsight.grafana import annotate_job, make_client


@pytest.mark.grafana
def test_push_and_annotate_against_a_real_grafana() -> None:
    client = make_client(os.environ["JOBSIGHT_GRAFANA_URL"], os.environ.get("JOBSIGHT_GRAFANA_TOKEN", ""))
    folder = f"jobsight-test-{uuid.uuid4().hex[:8]}"
    pushed = push_dashboards(client, load_committed(), folder=folder, datasource_uid="jobsight-test-ds")
    try:
        assert [p.uid for p in pushed] == list(load_committed())
        stored = client.dashboard.get_dashboard("jobsight-job")
        assert stored["meta"]["folderTitle"] == folder
        panel = next(p for p in stored["dashboard"]["panels"] if p["type"] == "timeseries")
        assert panel["datasource"]["uid"] == "${datasource}"
        (variable,) = [v for v in stored["dashboard"]["templating"]["list"] if v["type"] == "datasource"]
        assert variable["current"]["value"] == "jobsight-test-ds"

        now_ms = int(time.time() * 1000)
        job_id = f"test-{uuid.uuid4().hex[:8]}"
        annotation_id = annotate_job(client, job_id, f"job {job_id} failed", now_ms, ["failed"])
        found = client.annotations.find_annotations(tags=[f"job_id:{job_id}"], time_from=now_ms - 1000)
        assert [a["id"] for a in found] == [annotation_id]
        client.annotations.delete_annotations_by_id(annotation_id)
    finally:
        uid = next(f["uid"] for f in client.folder.get_all_folders() if f["title"] == folder)
        client.folder.delete_folder(uid)
