"""Pods and job objects in the shapes the controllers write them (Kubeflow training-operator v1,
JobSet, Volcano, batch/v1), built by small functions so each test says only what differs."""

from __future__ import annotations

from typing import Any

NS = "team-a"
STAMP = "2026-11-29T10:00:00Z"


def owner(api_version: str, kind: str, name: str, uid: str = "owner-uid") -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod(
    name: str,
    *,
    namespace: str = NS,
    labels: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    node: str | None = "gpu-node1",
    gpus: int = 0,
    phase: str = "Running",
    containers: list[dict[str, Any]] | None = None,
    reason: str | None = None,
    message: str | None = None,
    annotations: dict[str, str] | None = None,
    uid: str | None = None,
    container: str = "pytorch",
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    status: dict[str, Any] = {"phase": phase, "startTime": STAMP}
    if containers is not None:
        status["containerStatuses"] = containers
    elif phase == "Running":
        status["containerStatuses"] = [
            {"name": container, "ready": True, "restartCount": 0, "state": {"running": {"startedAt": STAMP}}}
        ]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": labels or {},
        "ownerReferences": owners or [],
        "creationTimestamp": STAMP,
    }
    if annotations:
        meta["annotations"] = annotations
    if uid:
        meta["uid"] = uid
    spec: dict[str, Any] = {"containers": [{"name": container, "image": "trainer:1", "resources": resources}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def terminated(
    exit_code: int,
    reason: str,
    name: str = "pytorch",
    finished: str = "2026-11-29T11:00:00Z",
    last: bool = False,
    restarts: int = 0,
) -> dict[str, Any]:
    term = {"exitCode": exit_code, "reason": reason, "startedAt": STAMP, "finishedAt": finished}
    if last:
        return {
            "name": name,
            "ready": True,
            "restartCount": restarts,
            "state": {"running": {"startedAt": finished}},
            "lastState": {"terminated": term},
        }
    return {"name": name, "ready": False, "restartCount": restarts, "state": {"terminated": term}}


def pytorch_worker(
    job: str,
    index: int,
    *,
    node: str,
    gpus: int = 2,
    namespace: str = NS,
    job_uid: str = "pytorchjob-uid-1",
    **kwargs: Any,
) -> dict[str, Any]:
    labels = {
        "training.kubeflow.org/job-name": job,
        "training.kubeflow.org/operator-name": "pytorchjob-controller",
        "training.kubeflow.org/replica-type": "worker",
        "training.kubeflow.org/replica-index": str(index),
    }
    return pod(
        f"{job}-worker-{index}",
        namespace=namespace,
        labels=labels,
        node=node,
        gpus=gpus,
        owners=[owner("kubeflow.org/v1", "PyTorchJob", job, job_uid)],
        **kwargs,
    )


def pytorchjob(
    name: str,
    *conditions: tuple[str, str, str],
    namespace: str = NS,
    uid: str = "pytorchjob-uid-1",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``conditions``: (type, reason, message) tuples, all with status True, oldest first."""
    status: dict[str, Any] = {
        "conditions": [
            {
                "type": t,
                "status": "True",
                "reason": r,
                "message": m,
                "lastUpdateTime": "2026-11-29T11:00:05Z",
                "lastTransitionTime": "2026-11-29T11:00:05Z",
            }
            for t, r, m in conditions
        ],
        "replicaStatuses": {"Worker": {"active": 4}},
        "startTime": STAMP,
    }
    if any(t in ("Failed", "Succeeded") for t, _, _ in conditions):
        status["completionTime"] = "2026-11-29T11:00:05Z"
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "creationTimestamp": STAMP}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": meta,
        "spec": {
            "pytorchReplicaSpecs": {
                "Worker": {
                    "replicas": 4,
                    "restartPolicy": "OnFailure",
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "pytorch",
                                    "image": "trainer:1",
                                    "resources": {"limits": {"nvidia.com/gpu": "2"}},
                                }
                            ]
                        }
                    },
                }
            }
        },
        "status": status,
    }


CREATED = ("Created", "PyTorchJobCreated", f"PyTorchJob {NS}/llama is created.")
RUNNING = ("Running", "PyTorchJobRunning", f"PyTorchJob {NS}/llama is running.")
FAILED = (
    "Failed",
    "PyTorchJobFailed",
    f"PyTorchJob {NS}/llama is failed because 1 Worker replica(s) failed.",
)
SUCCEEDED = ("Succeeded", "PyTorchJobSucceeded", f"PyTorchJob {NS}/llama is successfully completed.")


def kube_proxy(node: str = "gpu-node1") -> dict[str, Any]:
    return pod(
        f"kube-proxy-{node}",
        namespace="kube-system",
        node=node,
        labels={"k8s-app": "kube-proxy", "controller-revision-hash": "5d8f"},
        owners=[owner("apps/v1", "DaemonSet", "kube-proxy")],
        container="kube-proxy",
    )


def batch_job_pod(job: str, *, gpus: int = 0, namespace: str = NS, **kwargs: Any) -> dict[str, Any]:
    labels = {
        "batch.kubernetes.io/job-name": job,
        "job-name": job,
        "batch.kubernetes.io/controller-uid": "batch-uid",
        "controller-uid": "batch-uid",
    }
    return pod(
        f"{job}-x7k2p",
        namespace=namespace,
        labels=labels,
        gpus=gpus,
        owners=[owner("batch/v1", "Job", job, "batch-uid")],
        **kwargs,
    )


def batch_job(
    name: str, gpus: int = 0, *, failed_reason: str | None = None, complete: bool = False, namespace: str = NS
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    conditions = []
    if failed_reason:
        conditions.append(
            {
                "type": "Failed",
                "status": "True",
                "reason": failed_reason,
                "message": "Job has reached the specified backoff limit",
                "lastTransitionTime": "2026-11-29T11:00:05Z",
            }
        )
    if complete:
        conditions.append(
            {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-29T11:00:05Z"}
        )
    status: dict[str, Any] = {"startTime": STAMP, "conditions": conditions}
    if not conditions:
        status["active"] = 1
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "uid": "batch-uid"},
        "spec": {
            "backoffLimit": 2,
            "parallelism": 1,
            "template": {
                "spec": {"containers": [{"name": "pytorch", "image": "trainer:1", "resources": resources}]}
            },
        },
        "status": status,
    }
