"""Pod → training job: which job a pod belongs to, from its labels and owner references.

The job is the training job a researcher submitted (a PyTorchJob, a JobSet, a Volcano job, a
batch Job), never the pod: a 4-worker PyTorchJob is one job. Rules, first match wins:

1. the site's own labels (``extra_labels``), for platforms with their own job controller;
2. the labels the job controllers put on the pods they create, most specific first:
   Kubeflow training-operator (and KubeDL in its Kubeflow-compatible mode)
   ``training.kubeflow.org/job-name``, JobSet ``jobset.sigs.k8s.io/jobset-name`` (before the
   batch Job label, since a JobSet's pods are also a child Job's pods), Volcano
   ``volcano.sh/job-name``, batch/v1 ``batch.kubernetes.io/job-name``;
3. the pod's controller owner reference when its kind is a known job kind (KubeDL's
   ``training.kubedl.io`` kinds, Kubeflow's, JobSet, Volcano, batch Job);
4. the legacy ``job-name`` label (batch Jobs before 1.27, KubeDL).

A pod matching none (kube-system daemons, Deployments, jobsight itself) belongs to no job.

Trust: labels and owner references are set by whoever creates the pod, but only inside the pod's
own namespace, which the API server enforces, and the namespace is part of the job id. A user can
at worst name a job of their own namespace.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobsight.jobid import is_valid_job_id

KUBEFLOW_JOB_LABEL = "training.kubeflow.org/job-name"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
VOLCANO_LABEL = "volcano.sh/job-name"
BATCH_JOB_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_LABEL = "job-name"

# (label, API group, kind reported when no owner reference says better)
BUILTIN_LABELS: tuple[tuple[str, str, str], ...] = (
    (KUBEFLOW_JOB_LABEL, "kubeflow.org", "TrainingJob"),
    (JOBSET_LABEL, "jobset.x-k8s.io", "JobSet"),
    (VOLCANO_LABEL, "batch.volcano.sh", "Job"),
    (BATCH_JOB_LABEL, "batch", "Job"),
)

# Owner kinds that are jobs, by API group. Kubeflow training-operator and KubeDL share kind names.
JOB_OWNER_KINDS: dict[str, frozenset[str]] = {
    "kubeflow.org": frozenset({"PyTorchJob", "TFJob", "MPIJob", "XGBoostJob", "PaddleJob", "JAXJob",
                               "MXJob"}),
    "training.kubedl.io": frozenset({"PyTorchJob", "TFJob", "MPIJob", "XGBoostJob", "XDLJob",
                                     "MarsJob", "ElasticDLJob"}),
    "jobset.x-k8s.io": frozenset({"JobSet"}),
    "batch.volcano.sh": frozenset({"Job"}),
    "batch": frozenset({"Job"}),
}

# job id = "<namespace>:<name>". ":" is in JOB_ID_PATTERN and in neither a namespace (a DNS label)
# nor an object name (a DNS subdomain), so the id splits back unambiguously; "/" is not in the
# pattern (ids appear in URL paths and file names).
SEPARATOR = ":"
_MAX_ID = 128
_HASH_CHARS = 10
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def kube_job_id(namespace: str, name: str) -> str | None:
    """The job id of job ``name`` in ``namespace``: ``<namespace>:<name>``. Longer than 128
    characters (names may have 253), the name is cut and a hash of the full ``namespace/name``
    appended (``<namespace>:<name prefix>-<10 hex>``), so two long names stay distinct. None for
    a namespace or name Kubernetes itself would refuse."""
    if not _NAMESPACE_RE.match(namespace) or not _NAME_RE.match(name):
        return None
    job_id = f"{namespace}{SEPARATOR}{name}"
    if len(job_id) > _MAX_ID:
        digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:_HASH_CHARS]
        keep = _MAX_ID - len(namespace) - len(SEPARATOR) - 1 - _HASH_CHARS
        job_id = f"{namespace}{SEPARATOR}{name[:keep].rstrip('.-')}-{digest}"
    return job_id if is_valid_job_id(job_id) else None


@dataclass(frozen=True)
class OwnerRef:
    api_version: str
    kind: str
    name: str
    uid: str = ""
    controller: bool = False

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0] if "/" in self.api_version else ""


@dataclass(frozen=True)
class PodMeta:
    """What the rules read of a pod: its metadata only (the agent asks for no more)."""

    namespace: str
    name: str
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    owners: tuple[OwnerRef, ...] = ()

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> PodMeta:
        """From a pod (or PartialObjectMetadata) as the API server's JSON has it."""
        meta = obj.get("metadata") or {}
        owners = tuple(
            OwnerRef(str(o.get("apiVersion", "")), str(o.get("kind", "")), str(o.get("name", "")),
                     str(o.get("uid", "")), bool(o.get("controller", False)))
            for o in meta.get("ownerReferences") or [] if isinstance(o, Mapping)
        )
        return cls(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                   uid=str(meta.get("uid", "")), labels=dict(meta.get("labels") or {}),
                   annotations=dict(meta.get("annotations") or {}), owners=owners)


@dataclass(frozen=True)
class KubeJob:
    """The training job a pod belongs to."""

    job_id: str
    namespace: str
    name: str
    group: str  # the job object's API group ("batch", "kubeflow.org", …); "" for a site label
    kind: str
    rule: str  # which rule matched: "label:<key>" or "owner:<group>/<kind>"


class PodJobResolver:
    """Maps a pod's metadata to its training job (module docstring), or None."""

    def __init__(self, extra_labels: Sequence[str] = (), *, legacy_job_name_label: bool = True) -> None:
        self.extra_labels = tuple(extra_labels)
        self.legacy_job_name_label = legacy_job_name_label

    def job_of(self, pod: PodMeta) -> KubeJob | None:
        controller = next((o for o in pod.owners if o.controller), None)
        known_owner = controller is not None and controller.kind in JOB_OWNER_KINDS.get(controller.group, ())
        for label in self.extra_labels:
            found = self._from_label(pod, label, "", "Job")
            if found is not None:
                return found
        for label, group, kind in BUILTIN_LABELS:
            if label == KUBEFLOW_JOB_LABEL and controller is not None and known_owner:
                # The Kubeflow label names no kind; the owner reference (PyTorchJob, TFJob, …, and
                # KubeDL's group) does.
                group, kind = controller.group, controller.kind
            found = self._from_label(pod, label, group, kind)
            if found is not None:
                return found
        if controller is not None and known_owner:
            job_id = kube_job_id(pod.namespace, controller.name)
            if job_id is not None:
                return KubeJob(job_id, pod.namespace, controller.name, controller.group, controller.kind,
                               f"owner:{controller.group or 'core'}/{controller.kind}")
        if self.legacy_job_name_label:
            if controller is not None and known_owner:
                return self._from_label(pod, LEGACY_JOB_LABEL, controller.group, controller.kind)
            return self._from_label(pod, LEGACY_JOB_LABEL, "batch", "Job")
        return None

    @staticmethod
    def _from_label(pod: PodMeta, label: str, group: str, kind: str) -> KubeJob | None:
        name = pod.labels.get(label)
        if not name:
            return None
        job_id = kube_job_id(pod.namespace, name)
        if job_id is None:
            return None
        return KubeJob(job_id, pod.namespace, name, group, kind, f"label:{label}")
