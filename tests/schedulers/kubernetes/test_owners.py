"""Pod → training job rules and the job id's safe form."""

from __future__ import annotations

import re

import pytest

from jobsight.jobid import JOB_ID_PATTERN
from schedulers.kubernetes.owners import PodJobResolver, PodMeta, kube_job_id
from tests.schedulers.kubernetes.objects import batch_job_pod, kube_proxy, owner, pod, pytorch_worker

ID_RE = re.compile(rf"^{JOB_ID_PATTERN}$")


def job_of(obj: dict[str, object], resolver: PodJobResolver | None = None) -> tuple[str, str, str] | None:
    found = (resolver or PodJobResolver()).job_of(PodMeta.from_object(obj))
    return None if found is None else (found.job_id, found.group, found.kind)


def test_a_pytorchjob_worker_belongs_to_its_job_not_to_itself() -> None:
    assert job_of(pytorch_worker("llama", 3, node="n1")) == ("team-a:llama", "kubeflow.org", "PyTorchJob")


def test_kubedl_job_by_owner_reference() -> None:
    kubedl = pod(
        "bert-worker-0",
        labels={"job-name": "bert", "replica-type": "worker"},
        owners=[owner("training.kubedl.io/v1alpha1", "TFJob", "bert")],
    )
    assert job_of(kubedl) == ("team-a:bert", "training.kubedl.io", "TFJob")


def test_jobset_label_wins_over_the_child_batch_job() -> None:
    labels = {
        "jobset.sigs.k8s.io/jobset-name": "gpt",
        "jobset.sigs.k8s.io/replicatedjob-name": "workers",
        "batch.kubernetes.io/job-name": "gpt-workers-0",
        "job-name": "gpt-workers-0",
    }
    member = pod("gpt-workers-0-0-abcde", labels=labels, owners=[owner("batch/v1", "Job", "gpt-workers-0")])
    assert job_of(member) == ("team-a:gpt", "jobset.x-k8s.io", "JobSet")


def test_volcano_and_batch_jobs() -> None:
    volcano = pod(
        "tf-dist-ps-0",
        labels={"volcano.sh/job-name": "tf-dist", "volcano.sh/task-spec": "ps"},
        owners=[owner("batch.volcano.sh/v1alpha1", "Job", "tf-dist")],
    )
    assert job_of(volcano) == ("team-a:tf-dist", "batch.volcano.sh", "Job")
    assert job_of(batch_job_pod("eval")) == ("team-a:eval", "batch", "Job")
    legacy = pod("old-abc12", labels={"job-name": "old"})  # before batch.kubernetes.io/job-name (1.27)
    assert job_of(legacy) == ("team-a:old", "batch", "Job")
    assert job_of(legacy, PodJobResolver(legacy_job_name_label=False)) is None


def test_site_label_comes_first() -> None:
    labeled = pytorch_worker("llama", 0, node="n1")
    labeled["metadata"]["labels"]["platform.example.com/job"] = "exp-42"
    assert job_of(labeled, PodJobResolver(["platform.example.com/job"])) == ("team-a:exp-42", "", "Job")


@pytest.mark.parametrize(
    "obj",
    [
        kube_proxy(),
        pod("web-7c9d-abcde", owners=[owner("apps/v1", "ReplicaSet", "web-7c9d")], labels={"app": "web"}),
        pod("standalone"),
        pod(
            "jobsight-agent-x1",
            namespace="monitoring",
            owners=[owner("apps/v1", "DaemonSet", "jobsight-agent")],
        ),
    ],
)
def test_pods_of_no_job_are_not_jobs(obj: dict[str, object]) -> None:
    assert job_of(obj) is None


def test_job_ids_pass_the_pattern_and_split_back() -> None:
    assert kube_job_id("team-a", "llama-7b.v2") == "team-a:llama-7b.v2"
    long_name = "x" * 200 + ".y" * 20
    long_id = kube_job_id("a" * 63, long_name)
    assert long_id is not None and ID_RE.match(long_id) and len(long_id) == 128
    other = kube_job_id("a" * 63, long_name[:-1] + "z")
    assert other is not None and other != long_id  # the hash keeps long names apart
    assert long_id.split(":", 1)[0] == "a" * 63
    for namespace, name in (("team-a", "llama"), ("x", "a.b-c"), ("n" * 63, "m" * 63)):
        job_id = kube_job_id(namespace, name)
        assert job_id is not None and ID_RE.match(job_id)
        assert job_id.split(":", 1) == [namespace, name]


@pytest.mark.parametrize(
    ("namespace", "name"),
    [
        ("Team", "x"),
        ("team", "bad name"),
        ("team", 'x"}'),
        ("", "x"),
        ("team", ""),
        ("team", "-x"),
    ],
)
def test_names_kubernetes_would_refuse_give_no_id(namespace: str, name: str) -> None:
    assert kube_job_id(namespace, name) is None
