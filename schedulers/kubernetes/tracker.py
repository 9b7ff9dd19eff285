"""The cluster's training jobs, as the watcher has seen them: pods and job objects in, the API's
job records (``PUT /v1/jobs/{id}`` bodies) out. Pure state, no I/O, so every rule is testable
with recorded objects.

- A job exists while pods of it exist (owner rules in :mod:`owners`); only jobs whose pods ask for
  GPUs are registered unless ``all_jobs`` is set: a cluster runs many batch Jobs that are not
  training.
- The end state comes from the job object's conditions when its kind is watched (a Kubeflow job,
  JobSet, Volcano job or batch Job restarts or replaces failed pods, so a failed pod is not a failed
  job); the pods say why (exit code, ``OOMKilled``, ``Evicted``). A job of a kind nobody watches
  (a site label) ends when all its pods have ended or gone.
- Restarts (elastic jobs, ``Restarting``, a replaced pod) keep the job id and stay ``running``.
- A final state is final: a job once reported failed is never reported running again, unless its
  object is replaced by a new one with the same name (a new UID), which is a new run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schedulers.kubernetes.owners import KubeJob, PodJobResolver, PodMeta, kube_job_id
from schedulers.kubernetes.podresources import is_gpu_resource

FINAL = frozenset({"succeeded", "failed", "cancelled"})
_MAX_GONE_PODS = 64


@dataclass(frozen=True)
class JobKind:
    """A job resource the watcher may watch: API group, version, plural, kind."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group or 'core'}"


KNOWN_JOB_KINDS: tuple[JobKind, ...] = (
    JobKind("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
    JobKind("kubeflow.org", "v1", "tfjobs", "TFJob"),
    JobKind("kubeflow.org", "v1", "mpijobs", "MPIJob"),
    JobKind("kubeflow.org", "v1", "xgboostjobs", "XGBoostJob"),
    JobKind("kubeflow.org", "v1", "paddlejobs", "PaddleJob"),
    JobKind("kubeflow.org", "v1", "jaxjobs", "JAXJob"),
    JobKind("training.kubedl.io", "v1alpha1", "pytorchjobs", "PyTorchJob"),
    JobKind("training.kubedl.io", "v1alpha1", "tfjobs", "TFJob"),
    JobKind("training.kubedl.io", "v1alpha1", "mpijobs", "MPIJob"),
    JobKind("jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet"),
    JobKind("batch.volcano.sh", "v1alpha1", "jobs", "Job"),
    JobKind("batch", "v1", "jobs", "Job"),
)


def matches(job: KubeJob, kind: JobKind) -> bool:
    """Whether objects of ``kind`` are the job objects of ``job`` (the Kubeflow label alone, with
    no owner reference, names no kind: any Kubeflow kind then)."""
    if job.group != kind.group:
        return False
    return job.kind == kind.kind or job.kind == "TrainingJob"


@dataclass(frozen=True)
class ObjectState:
    """What a job object's status says."""

    status: str | None  # None: nothing final or running said yet
    reason: str | None = None
    started_at: str | None = None
    ended_at: str | None = None


def _true_conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    status = obj.get("status") or {}
    return {str(c.get("type")): c for c in status.get("conditions") or []
            if isinstance(c, Mapping) and str(c.get("status", "")).lower() == "true"}


def _why(condition: Mapping[str, Any]) -> str | None:
    bits = [str(condition[k]) for k in ("reason", "message") if condition.get(k)]
    return ": ".join(bits) or None


def object_state(kind: JobKind, obj: Mapping[str, Any]) -> ObjectState:
    """The state a job object's status reports, per controller convention."""
    status = obj.get("status") or {}
    conditions = _true_conditions(obj)
    started = status.get("startTime")
    ended = status.get("completionTime")
    if kind.group == "batch.volcano.sh":
        state = status.get("state") or {}
        phase = str(state.get("phase", ""))
        mapped = {"Completed": "succeeded", "Failed": "failed", "Aborted": "cancelled",
                  "Terminated": "cancelled", "Running": "running", "Restarting": "running",
                  "Completing": "running", "Pending": "pending"}.get(phase)
        why = ": ".join(str(state[k]) for k in ("reason", "message") if state.get(k)) or None
        when = state.get("lastTransitionTime")
        return ObjectState(mapped, why if mapped in FINAL else None, started,
                           when if mapped in FINAL else None)
    if kind.group == "batch":
        for ctype, result in (("Failed", "failed"), ("Complete", "succeeded")):
            if ctype in conditions:
                c = conditions[ctype]
                return ObjectState(result, _why(c) if result == "failed" else None, started,
                                   ended or c.get("lastTransitionTime"))
        return ObjectState("running" if status.get("active") else None, None, started)
    if kind.group == "jobset.x-k8s.io":
        for ctype, result in (("Failed", "failed"), ("Completed", "succeeded")):
            if ctype in conditions:
                c = conditions[ctype]
                return ObjectState(result, _why(c) if result == "failed" else None, started,
                                   c.get("lastTransitionTime"))
        return ObjectState("running" if "Suspended" not in conditions else "pending", None, started)
    # Kubeflow training-operator and KubeDL: Created, Running, Restarting, Succeeded, Failed.
    for ctype, result in (("Failed", "failed"), ("Succeeded", "succeeded")):
        if ctype in conditions:
            c = conditions[ctype]
            return ObjectState(result, _why(c) if result == "failed" else None, started,
                               ended or c.get("lastTransitionTime"))
    if "Running" in conditions or "Restarting" in conditions:
        return ObjectState("running", None, started)
    if "Created" in conditions:
        return ObjectState("pending", None, started)
    return ObjectState(None, None, started)


@dataclass(frozen=True)
class PodFailure:
    """Why one pod (or one of its containers) ended badly."""

    exit_code: int | None
    reason: str
    time: str
    current: bool = True  # False: a container's end before its last restart (``lastState``)


@dataclass
class PodInfo:
    uid: str
    meta: PodMeta
    job: KubeJob
    node: str | None
    phase: str
    gpus: int
    started_at: str | None
    failures: list[PodFailure]


def _gpu_count(spec: Mapping[str, Any]) -> int:
    total = 0
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        asked = dict(resources.get("requests") or {}) | dict(resources.get("limits") or {})
        for name, value in asked.items():
            if is_gpu_resource(str(name)):
                try:
                    total += int(str(value))
                except ValueError:
                    continue
    return total


def declared_size(spec: Any, replicas: int = 1) -> tuple[int, int]:
    """(pods, GPUs) a job object's spec asks for: every pod template in it, times the
    ``replicas``/``parallelism`` above it (Kubeflow replica specs, JobSet replicated Jobs, Volcano
    tasks, a batch Job's parallelism). Reproducible from the object alone, unlike counting the pods
    seen, which come and go."""
    if isinstance(spec, list):
        sizes = [declared_size(item, replicas) for item in spec]
        return sum(p for p, _ in sizes), sum(g for _, g in sizes)
    if not isinstance(spec, Mapping):
        return 0, 0
    if isinstance(spec.get("containers"), list):
        return replicas, replicas * _gpu_count(spec)
    factor = 1
    for key in ("replicas", "parallelism"):
        value = spec.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            factor *= value
    pods = gpus = 0
    for key, value in spec.items():
        if key in ("replicas", "parallelism") or not isinstance(value, Mapping | list):
            continue
        p, g = declared_size(value, replicas * factor)
        pods, gpus = pods + p, gpus + g
    return pods, gpus


def pod_failures(pod: Mapping[str, Any]) -> list[PodFailure]:
    """Every bad end a pod's status records: evictions, and containers that terminated with a
    non-zero code now or before their last restart (``lastState``), oldest first."""
    status = pod.get("status") or {}
    name = (pod.get("metadata") or {}).get("name", "?")
    found: list[PodFailure] = []
    if status.get("reason") in ("Evicted", "Preempting", "DeadlineExceeded", "UnexpectedAdmissionError"):
        why = f"pod {name} {str(status['reason']).lower()}"
        if status.get("message"):
            why += f": {status['message']}"
        found.append(PodFailure(None, why, str(status.get("startTime") or ""), current=True))
    for cs in status.get("containerStatuses") or []:
        for which in ("lastState", "state"):
            term = ((cs.get(which) or {}).get("terminated")) or {}
            if not term:
                continue
            code = term.get("exitCode")
            reason = str(term.get("reason") or "")
            if code in (0, None) and reason != "OOMKilled":
                continue
            container = cs.get("name", "?")
            if reason == "OOMKilled":
                why = f"out of memory: container {container} of pod {name} was OOMKilled"
            else:
                why = f"container {container} of pod {name} exited with code {code}"
                if reason and reason != "Error":
                    why += f" ({reason})"
            if term.get("message"):
                why += f": {str(term['message'])[:500]}"
            found.append(PodFailure(code if isinstance(code, int) else None, why,
                                    str(term.get("finishedAt") or ""), current=which == "state"))
    return sorted(found, key=lambda f: f.time)


_Object = tuple[str, ObjectState, Mapping[str, Any], tuple[int, int]]


@dataclass
class _JobRecord:
    job: KubeJob
    pods: dict[str, PodInfo] = field(default_factory=dict)
    object_uid: str | None = None
    object_state: ObjectState | None = None
    object_labels: Mapping[str, str] = field(default_factory=dict)
    object_annotations: Mapping[str, str] = field(default_factory=dict)
    watched_kind: bool = False
    gone_pods: list[PodInfo] = field(default_factory=list)  # deleted pods: their failures still count
    peak_gpus: int = 0  # the most GPUs its live pods held at once (replaced pods are not added up)
    peak_pods: int = 0
    declared: tuple[int, int] = (0, 0)  # (pods, GPUs) its object's spec asks for


@dataclass(frozen=True)
class TrackerSettings:
    tenant_map: Mapping[str, str] = field(default_factory=dict)
    user_keys: tuple[str, ...] = ("jobsight.io/user",)
    all_jobs: bool = False
    cluster: str | None = None


class JobTracker:
    """Pods and job objects in (events, or whole lists after a relist), job bodies out."""

    def __init__(self, resolver: PodJobResolver, settings: TrackerSettings | None = None,
                 watched_kinds: Iterable[JobKind] = ()) -> None:
        self.resolver = resolver
        self.settings = settings or TrackerSettings()
        self.watched_kinds: set[JobKind] = set(watched_kinds)
        self._jobs: dict[str, _JobRecord] = {}
        self._pod_job: dict[str, str] = {}  # pod uid → job id
        # job id → kind → (uid, state, metadata, declared (pods, GPUs)); by job id first, so that
        # attaching a job's object costs the same however many objects the cluster has.
        self._objects: dict[str, dict[JobKind, _Object]] = {}
        self.dirty: set[str] = set()

    # -- input ---------------------------------------------------------------------------------
    def watch_kind(self, kind: JobKind) -> None:
        """``kind`` is now watched (its resource exists in the cluster): its objects decide ends."""
        self.watched_kinds.add(kind)
        for job_id, record in self._jobs.items():
            if not record.watched_kind and matches(record.job, kind):
                record.watched_kind = True
                self.dirty.add(job_id)

    def pod_event(self, event: str, pod: Mapping[str, Any]) -> None:
        meta = PodMeta.from_object(pod)
        uid = meta.uid or f"{meta.namespace}/{meta.name}"
        if event == "DELETED":
            self._drop_pod(uid)
            return
        job = self.resolver.job_of(meta)
        if job is None:
            self._drop_pod(uid)
            return
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        info = PodInfo(uid=uid, meta=meta, job=job, node=spec.get("nodeName") or None,
                       phase=str(status.get("phase") or "Pending"), gpus=_gpu_count(spec),
                       started_at=status.get("startTime"), failures=pod_failures(pod))
        previous = self._pod_job.get(uid)
        if previous is not None and previous != job.job_id:
            self._drop_pod(uid)
        record = self._jobs.get(job.job_id)
        if record is None:
            watched = any(matches(job, kind) for kind in self.watched_kinds)
            record = self._jobs[job.job_id] = _JobRecord(job, watched_kind=watched)
            self._attach_object(record)
        record.pods[uid] = info
        record.peak_gpus = max(record.peak_gpus, sum(p.gpus for p in record.pods.values()))
        record.peak_pods = max(record.peak_pods, len(record.pods))
        self._pod_job[uid] = job.job_id
        self.dirty.add(job.job_id)

    def replace_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list: pods not in it were deleted while the watch was down."""
        listed: set[str] = set()
        for pod in pods:
            meta = PodMeta.from_object(pod)
            listed.add(meta.uid or f"{meta.namespace}/{meta.name}")
            self.pod_event("ADDED", pod)
        for uid in [u for u in self._pod_job if u not in listed]:
            self._drop_pod(uid)

    def object_event(self, kind: JobKind, event: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        job_id = kube_job_id(str(meta.get("namespace", "")), str(meta.get("name", "")))
        if job_id is None:
            return
        if event == "DELETED":
            kinds = self._objects.get(job_id, {})
            kinds.pop(kind, None)
            if not kinds:
                self._objects.pop(job_id, None)
        else:
            self._objects.setdefault(job_id, {})[kind] = (
                str(meta.get("uid", "")), object_state(kind, obj), meta, declared_size(obj.get("spec") or {}))
        record = self._jobs.get(job_id)
        if record is not None and matches(record.job, kind):
            self._attach_object(record)
            self.dirty.add(job_id)

    def replace_objects(self, kind: JobKind, objs: Iterable[Mapping[str, Any]]) -> None:
        """A fresh list of ``kind``: objects not in it were deleted while the watch was down."""
        listed: set[str] = set()
        for obj in objs:
            meta = obj.get("metadata") or {}
            job_id = kube_job_id(str(meta.get("namespace", "")), str(meta.get("name", "")))
            if job_id is not None:
                listed.add(job_id)
            self.object_event(kind, "ADDED", obj)
        for job_id in [j for j, kinds in self._objects.items() if kind in kinds and j not in listed]:
            self.object_event(kind, "DELETED", {"metadata": _split(job_id)})

    def _attach_object(self, record: _JobRecord) -> None:
        for kind, (uid, state, meta, size) in self._objects.get(record.job.job_id, {}).items():
            if matches(record.job, kind):
                record.object_uid, record.object_state, record.declared = uid, state, size
                record.object_labels = dict(meta.get("labels") or {})
                record.object_annotations = dict(meta.get("annotations") or {})
                return
        record.object_state = None

    def _drop_pod(self, uid: str) -> None:
        job_id = self._pod_job.pop(uid, None)
        if job_id is None:
            return
        record = self._jobs.get(job_id)
        if record is None:
            return
        info = record.pods.pop(uid, None)
        if info is not None:
            record.gone_pods.append(info)
            # Bounded: an elastic job replacing pods for weeks keeps only its latest ends.
            del record.gone_pods[:-_MAX_GONE_PODS]
        self.dirty.add(job_id)

    # -- output --------------------------------------------------------------------------------
    def take_dirty(self) -> list[str]:
        found = sorted(self.dirty)
        self.dirty.clear()
        return found

    def prune(self, settled: Callable[[str], bool]) -> list[str]:
        """Drop the jobs with no pods and no object left for which ``settled(job_id)`` (their end
        is delivered, or they were never reported); returns their ids."""
        gone = [job_id for job_id, record in self._jobs.items()
                if not record.pods and record.object_state is None and job_id not in self.dirty
                and settled(job_id)]
        for job_id in gone:
            del self._jobs[job_id]
        return gone

    def object_uid(self, job_id: str) -> str | None:
        record = self._jobs.get(job_id)
        return record.object_uid if record is not None else None

    def body(self, job_id: str) -> dict[str, Any] | None:
        """The ``PUT /v1/jobs/{id}`` body for the job now, or None when it is not (or no longer)
        a job to report: no GPU pods, or no pods and no object ever seen."""
        record = self._jobs.get(job_id)
        if record is None:
            return None
        pods = list(record.pods.values())
        everything = pods + record.gone_pods
        if not everything:
            return None
        pod_count, gpus = record.declared if record.declared[1] or record.declared[0] else (
            record.peak_pods, record.peak_gpus)
        if max(gpus, record.peak_gpus) == 0 and not self.settings.all_jobs:
            return None
        job = record.job
        status, reason, ended = self._status(record, pods)
        # The cause is the first bad end of the last attempt: a container that failed and was
        # restarted (an elastic job recovering) is history, not why the job ended.
        failures = sorted((f for p in everything for f in p.failures), key=lambda f: (not f.current, f.time))
        exit_code = next((f.exit_code for f in failures if f.exit_code is not None), None)
        if status == "failed" and failures:
            # The first bad end is the cause; the controller's own reason (BackoffLimitExceeded)
            # says what it did about it.
            first = failures[0].reason
            reason = f"{first}; {reason}" if reason else first
        starts = [p.started_at for p in everything if p.started_at]
        started = (record.object_state.started_at if record.object_state else None) or (
            min(starts) if starts else None)
        labels = {"kind": job.kind, "namespace": job.namespace, "name": job.name[:1024],
                  "gpus_requested": str(gpus), "pods": str(pod_count)}
        if self.settings.cluster:
            labels["cluster"] = self.settings.cluster
        if record.object_uid:
            labels["uid"] = record.object_uid
        body: dict[str, Any] = {
            "name": job.name, "scheduler": "kubernetes",
            "tenant": self.settings.tenant_map.get(job.namespace, job.namespace),
            "nodes": sorted({p.node for p in everything if p.node}),
            "status": status, "labels": labels,
        }
        user = self._user(record, everything)
        if user:
            body["user"] = user[:128]
        if started:
            body["started_at"] = started
        if status in FINAL:
            if ended:
                body["ended_at"] = ended
            if status == "failed":
                body["exit_code"] = exit_code
                if reason:
                    body["reason"] = reason[:4096]
        return body

    def _status(self, record: _JobRecord, pods: list[PodInfo]) -> tuple[str, str | None, str | None]:
        state = record.object_state
        if state is not None and state.status is not None:
            return state.status, state.reason, state.ended_at
        phases = [p.phase for p in pods]
        if record.watched_kind:
            # The object is authoritative but says nothing (yet), or it is gone.
            if record.object_state is None and not pods and record.gone_pods:
                return "cancelled", "the job and its pods were deleted before it ended", None
            return ("running" if any(ph == "Running" for ph in phases) or any(
                ph in ("Succeeded", "Failed") for ph in phases) else "pending"), None, None
        if not pods:
            ended = [p for p in record.gone_pods if p.phase in ("Succeeded", "Failed")]
            if ended and all(p.phase == "Succeeded" for p in ended) and len(ended) == len(record.gone_pods):
                return "succeeded", None, None
            if any(p.phase == "Failed" for p in ended):
                return "failed", None, None
            return "cancelled", "the job's pods were deleted before they ended", None
        if all(ph in ("Succeeded", "Failed") for ph in phases):
            return ("failed" if "Failed" in phases else "succeeded"), None, None
        if any(ph in ("Running", "Succeeded", "Failed") for ph in phases):
            return "running", None, None
        return "pending", None, None

    def _user(self, record: _JobRecord, pods: list[PodInfo]) -> str | None:
        sources = [record.object_labels, record.object_annotations]
        for pod in pods:
            sources += [pod.meta.labels, pod.meta.annotations]
        for key in self.settings.user_keys:
            for source in sources:
                if source.get(key):
                    return str(source[key])
        return None


def _split(job_id: str) -> dict[str, str]:
    namespace, _, name = job_id.partition(":")
    return {"namespace": namespace, "name": name}
