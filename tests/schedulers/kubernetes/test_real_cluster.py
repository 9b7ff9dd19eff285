"""``jobsight kube watch`` against a real Kubernetes cluster (``KUBECONFIG``; skipped without it):
a batch Job whose container exits 3 is registered and finished in the real API (a subprocess here)
with its exit code and ``BackoffLimitExceeded``. Needs permission to create a namespace and a Job,
and an image the cluster can pull (``JOBSIGHT_TEST_IMAGE``, default ``busybox:1.36``)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.schedulers.kubernetes.test_watch import SCHEDULER_TOKEN, Api, api  # noqa: F401 - fixture
from tests.support import Proc, jobsight_command

pytestmark = pytest.mark.kubernetes


def test_a_failing_batch_job_on_a_real_cluster(api: Api, tmp_path: Path) -> None:  # noqa: F811
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])  # type: ignore[no-untyped-call]
    core = client.CoreV1Api(api_client)
    batch = client.BatchV1Api(api_client)
    namespace = f"jobsight-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace.from_dict({"metadata": {"name": namespace}}))  # type: ignore[arg-type]
    token = tmp_path / "token"
    token.write_text(SCHEDULER_TOKEN)
    proc = Proc(
        jobsight_command(
            "kube", "watch", "--kubeconfig", os.environ["KUBECONFIG"], "--api.url", api.url,
            "--api.token-file", str(token), "--all-jobs", "--kinds", "jobs.batch",
        ),
        tmp_path / "watch.log",
    )  # fmt: skip
    try:
        image = os.environ.get("JOBSIGHT_TEST_IMAGE", "busybox:1.36")
        batch.create_namespaced_job(namespace, client.V1Job.from_dict({  # type: ignore[arg-type]
            "metadata": {"name": "exit3"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": image, "command": ["sh", "-c", "exit 3"]}],
            }}},
        }))  # fmt: skip
        job = api.wait(f"{namespace}:exit3", "failed", timeout=300)
        assert job["exit_code"] == 3 and "BackoffLimitExceeded" in job["reason"]
        assert job["tenant"] == namespace and job["scheduler"] == "kubernetes"
    finally:
        proc.stop()
        core.delete_namespace(namespace)
