"""Job records from recorded-shape pods and job objects: one job per PyTorchJob, end states from
the object's conditions, causes from the pods, restarts that stay one job."""

from __future__ import annotations

from typing import Any

from schedulers.kubernetes.owners import PodJobResolver
from schedulers.kubernetes.tracker import KNOWN_JOB_KINDS, JobKind, JobTracker, TrackerSettings
from tests.schedulers.kubernetes.objects import (
    CREATED,
    FAILED,
    RUNNING,
    batch_job,
    batch_job_pod,
    kube_proxy,
    pod,
    pytorch_worker,
    pytorchjob,
    terminated,
)

PYTORCH = next(k for k in KNOWN_JOB_KINDS if k.plural == "pytorchjobs" and k.group == "kubeflow.org")
BATCH = next(k for k in KNOWN_JOB_KINDS if k.group == "batch")
JOB = "team-a:llama"


def tracker(*kinds: JobKind, **settings: Any) -> JobTracker:
    return JobTracker(PodJobResolver(), TrackerSettings(**settings), kinds)


def workers(**kwargs: Any) -> list[dict[str, Any]]:
    return [pytorch_worker("llama", i, node=f"gpu-node{1 + i // 2}", **kwargs) for i in range(4)]


def test_four_workers_on_two_nodes_are_one_job_with_eight_gpus() -> None:
    t = tracker(PYTORCH, tenant_map={"team-a": "research"})
    t.replace_objects(
        PYTORCH, [pytorchjob("llama", CREATED, RUNNING, annotations={"jobsight.io/user": "ada"})]
    )
    t.replace_pods([*workers(), kube_proxy(), kube_proxy("gpu-node2")])
    assert t.take_dirty() == [JOB]
    body = t.body(JOB)
    assert body is not None
    assert body["status"] == "running" and body["tenant"] == "research" and body["user"] == "ada"
    assert body["nodes"] == ["gpu-node1", "gpu-node2"] and body["scheduler"] == "kubernetes"
    assert body["labels"]["gpus_requested"] == "8" and body["labels"]["kind"] == "PyTorchJob"
    assert body["labels"]["uid"] == "pytorchjob-uid-1" and body["started_at"] == "2026-11-29T10:00:00Z"


def test_oom_killed_worker_and_the_job_failed_condition() -> None:
    t = tracker(PYTORCH)
    t.replace_objects(PYTORCH, [pytorchjob("llama", CREATED, RUNNING)])
    pods = workers()
    t.replace_pods(pods)
    oom = pytorch_worker(
        "llama", 3, node="gpu-node2", phase="Failed", containers=[terminated(137, "OOMKilled")]
    )
    t.pod_event("MODIFIED", oom)
    assert t.body(JOB)["status"] == "running"  # type: ignore[index]  # the operator decides, not one pod
    t.object_event(PYTORCH, "MODIFIED", pytorchjob("llama", CREATED, RUNNING, FAILED))
    body = t.body(JOB)
    assert body is not None and body["status"] == "failed" and body["exit_code"] == 137
    assert body["reason"].startswith("out of memory: container pytorch of pod llama-worker-3 was OOMKilled")
    assert "PyTorchJobFailed" in body["reason"] and body["ended_at"] == "2026-11-29T11:00:05Z"


def test_elastic_restart_is_the_same_job_and_stays_running() -> None:
    t = tracker(PYTORCH)
    t.replace_objects(PYTORCH, [pytorchjob("llama", CREATED, RUNNING)])
    t.replace_pods(workers())
    t.pod_event("DELETED", workers()[1])
    replaced = pytorch_worker("llama", 1, node="gpu-node1", uid="new-pod-uid")
    t.pod_event("ADDED", replaced)
    t.object_event(
        PYTORCH, "MODIFIED", pytorchjob("llama", CREATED, ("Restarting", "PyTorchJobRestarting", ""))
    )
    body = t.body(JOB)
    assert body is not None and body["status"] == "running" and body["labels"]["gpus_requested"] == "8"


def test_batch_job_backoff_limit_with_an_evicted_pod() -> None:
    t = tracker(BATCH)
    evicted = batch_job_pod(
        "train", gpus=1, phase="Failed", reason="Evicted", message="The node was low on resource: memory."
    )
    t.replace_pods([evicted])
    t.replace_objects(BATCH, [batch_job("train", failed_reason="BackoffLimitExceeded")])
    body = t.body("team-a:train")
    assert body is not None and body["status"] == "failed"
    assert body["reason"].startswith("pod train-x7k2p evicted: The node was low on resource: memory.")
    assert "BackoffLimitExceeded" in body["reason"]


def test_jobs_without_gpus_or_owner_are_not_registered() -> None:
    t = tracker(BATCH)
    t.replace_pods([batch_job_pod("nightly-report"), kube_proxy(), pod("notebook", gpus=1)])
    assert [t.body(j) for j in t.take_dirty()] == [None]
    assert tracker(BATCH, all_jobs=True).body("team-a:nightly-report") is None  # never seen by that one
    t2 = tracker(BATCH, all_jobs=True)
    t2.replace_pods([batch_job_pod("nightly-report")])
    assert t2.body("team-a:nightly-report") is not None


def test_a_kind_nobody_watches_ends_with_its_pods() -> None:
    t = tracker()  # no job kinds served: the pods decide
    done = workers(phase="Succeeded", containers=[terminated(0, "Completed")])
    t.replace_pods(done)
    assert t.body(JOB)["status"] == "succeeded"  # type: ignore[index]
    t2 = tracker()
    t2.replace_pods(workers())
    t2.replace_pods([])  # all deleted while running
    body = t2.body(JOB)
    assert body is not None and body["status"] == "cancelled"


def test_deleted_job_object_and_pods_while_running_is_cancelled() -> None:
    t = tracker(PYTORCH)
    t.replace_objects(PYTORCH, [pytorchjob("llama", CREATED, RUNNING)])
    t.replace_pods(workers())
    t.replace_objects(PYTORCH, [])
    t.replace_pods([])
    body = t.body(JOB)
    assert body is not None and body["status"] == "cancelled"


def test_prune_forgets_only_settled_jobs_with_nothing_left() -> None:
    t = tracker(PYTORCH)
    t.replace_objects(PYTORCH, [pytorchjob("llama", CREATED, RUNNING)])
    t.replace_pods([*workers(), batch_job_pod("nightly-report")])
    t.take_dirty()
    assert t.prune(lambda job_id: True) == []  # pods and the object still there
    t.replace_pods([])
    t.replace_objects(PYTORCH, [])
    t.take_dirty()
    assert t.prune(lambda job_id: job_id != JOB) == ["team-a:nightly-report"]
    assert t.body(JOB) is not None  # its end is not delivered yet: kept
    assert t.prune(lambda job_id: True) == [JOB]
    assert t.body(JOB) is None
