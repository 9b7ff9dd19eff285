"""GPU → container → pod → training job on one node, for the GPU exporter and the log collector.

The kubelet's pod-resources API says which container holds which GPU (by UUID); the pod's
metadata, read from the API server, says which training job the pod belongs to
(:class:`~owners.PodJobResolver`). Only metadata is asked for (``PartialObjectMetadata``): the agent
never reads pod specs, which may hold secrets in environment values.

What the GPU exporter publishes from this: ``jobsight_gpu_job_info{..., job_id, namespace, pod,
container}`` for each GPU a pod holds; pods that belong to no job give the labels with no job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jobsight.errors import ConfigError, DependencyUnavailable
from jobsight.identity import JobMapDir, JobMapSnapshot
from schedulers.kubernetes.owners import PodJobResolver, PodMeta
from schedulers.kubernetes.podresources import DEFAULT_GPU_RESOURCES, DeviceAssignment

_UID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MAX_POD_BYTES = 4 * 1024 * 1024  # one pod's metadata; a bound against a runaway answer
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
PARTIAL_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
_LIST_PAGE = 500  # pods per list request; a node holds at most a few hundred (kubelet's maxPods)
_MAX_LIST_PAGES = 20


@dataclass(frozen=True)
class GpuOwner:
    """Who holds one GPU (or MIG device) on this node."""

    device_id: str
    namespace: str
    pod: str
    container: str
    job_id: str | None
    pod_uid: str | None = None


class DeviceLister(Protocol):
    def gpus(self, resources: Sequence[str] = ...) -> list[DeviceAssignment]: ...


class PodMetadataSource(Protocol):
    def get(self, namespace: str, name: str) -> PodMeta | None: ...

    def list_on_node(self, node: str) -> list[PodMeta]:
        """Every pod the API server has bound to ``node``: one paged list request with a field
        selector (``spec.nodeName``), metadata only."""
        ...


def _pods_on_node(node: str, fetch: Callable[[str | None], Any]) -> list[PodMeta]:
    """The pods of a paged list; ``fetch(continue_token)`` returns one page as the API server's
    JSON (raising :class:`DependencyUnavailable` when it does not answer)."""
    found: list[PodMeta] = []
    more: str | None = None
    for _ in range(_MAX_LIST_PAGES):
        obj = fetch(more)
        if not isinstance(obj, dict) or not isinstance(obj.get("items"), list):
            raise DependencyUnavailable("kubernetes API", f"pods on {node}: not a list of pods")
        found.extend(PodMeta.from_object(item) for item in obj["items"] if isinstance(item, dict))
        more = (obj.get("metadata") or {}).get("continue") or None
        if not more:
            break
    return found


class ApiServerPodMetadata:
    """``GET /api/v1/namespaces/{ns}/pods/{name}`` as PartialObjectMetadata, through the official
    client's configured ``ApiClient`` (in-cluster service account or kubeconfig)."""

    def __init__(self, api_client: Any, timeout: float = 2.0) -> None:
        self.api_client = api_client
        self.timeout = timeout

    def get(self, namespace: str, name: str) -> PodMeta | None:
        from kubernetes import client

        try:
            core: Any = client.CoreV1Api(self.api_client)  # raw response: typed as V1Pod, it is not
            response = core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self.timeout,
                _headers={"Accept": PARTIAL_METADATA})
            try:
                obj = json.loads(response.data)
            finally:
                response.release_conn()
        except Exception as exc:  # the client's and urllib3's errors, translated once, here
            if getattr(exc, "status", None) == 404:
                return None
            quoted = urllib.parse.quote(f"{namespace}/{name}")
            raise DependencyUnavailable("kubernetes API",
                                        f"pod {quoted}: {type(exc).__name__}: {exc}") from exc
        return PodMeta.from_object(obj)

    def list_on_node(self, node: str) -> list[PodMeta]:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api_client)

        def fetch(more: str | None) -> Any:
            try:
                response = core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={node}", limit=_LIST_PAGE, _continue=more,
                    _preload_content=False, _request_timeout=self.timeout,
                    _headers={"Accept": PARTIAL_METADATA_LIST})
                try:
                    return json.loads(response.data)
                finally:
                    response.release_conn()
            except Exception as exc:  # the client's and urllib3's errors, translated once, here
                raise DependencyUnavailable("kubernetes API",
                                            f"pods on {node}: {type(exc).__name__}: {exc}") from exc

        return _pods_on_node(node, fetch)


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class InClusterPodMetadata:
    """The same request with the standard library, for ``jobsight agent``: node images carry
    ``jobsight[agent]``, which has no Kubernetes client. In a pod, ``api_url`` is
    ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` and the service account's token
    (read again for every request: the kubelet rotates it) and CA are used; a token file that does
    not exist sends no token (tests, or a proxy that adds its own)."""

    def __init__(self, api_url: str, token_file: Path | None = SERVICE_ACCOUNT / "token",
                 ca_file: Path | None = SERVICE_ACCOUNT / "ca.crt", timeout: float = 2.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if self.api_url.startswith("https://"):
            cafile = str(ca_file) if ca_file is not None and ca_file.exists() else None
            self._context = ssl.create_default_context(cafile=cafile)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> InClusterPodMetadata:
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError("not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST): "
                              "give the API server's URL")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}")

    def _get_json(self, path: str, accept: str, what: str, limit: int) -> Any:
        """GET ``path``; None for a 404; :class:`DependencyUnavailable` naming ``what`` otherwise."""
        headers = {"Accept": accept}
        if self.token_file is not None:
            with contextlib.suppress(OSError):
                headers["Authorization"] = "Bearer " + self.token_file.read_text(encoding="utf-8").strip()
        request = urllib.request.Request(self.api_url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as response:
                return json.loads(response.read(limit))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise DependencyUnavailable("kubernetes API", f"{what}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DependencyUnavailable("kubernetes API", f"{what}: {exc}") from exc

    def get(self, namespace: str, name: str) -> PodMeta | None:
        path = (f"/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}/pods/"
                f"{urllib.parse.quote(name, safe='')}")
        obj = self._get_json(path, PARTIAL_METADATA, f"pod {namespace}/{name}", _MAX_POD_BYTES)
        return PodMeta.from_object(obj) if obj is not None else None

    def list_on_node(self, node: str) -> list[PodMeta]:
        def fetch(more: str | None) -> Any:
            query = {"fieldSelector": f"spec.nodeName={node}", "limit": str(_LIST_PAGE)}
            if more:
                query["continue"] = more
            return self._get_json(f"/api/v1/pods?{urllib.parse.urlencode(query)}", PARTIAL_METADATA_LIST,
                                  f"pods on {node}", _MAX_POD_BYTES * 16)

        return _pods_on_node(node, fetch)


class PodGpuAttribution:
    """Who holds each GPU now. Pod metadata is cached for ``ttl`` seconds per pod (a scrape every
    few seconds must not cost an API request per GPU); entries of pods no longer listed by the
    kubelet are dropped at once, so a pod replaced under the same name is read afresh. An API
    server that does not answer is asked again after ``retry`` seconds."""

    def __init__(self, devices: DeviceLister, pods: PodMetadataSource, resolver: PodJobResolver,
                 resources: Sequence[str] = DEFAULT_GPU_RESOURCES, ttl: float = 60.0,
                 retry: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.devices = devices
        self.pods = pods
        self.resolver = resolver
        self.resources = tuple(resources)
        self.ttl = ttl
        self.retry = min(retry, ttl)
        self.clock = clock
        # (namespace, pod) → (when read, job id, pod UID)
        self._cache: dict[tuple[str, str], tuple[float, str | None, str | None]] = {}
        self._lock = threading.Lock()
        self.errors = 0

    def owners(self) -> list[GpuOwner]:
        """Raises :class:`DependencyUnavailable` when the kubelet does not answer; an API server
        that does not answer leaves the pods' job ids unknown (None) and counts an error."""
        assigned = self.devices.gpus(self.resources)
        now = self.clock()
        found: list[GpuOwner] = []
        with self._lock:
            live = {(d.namespace, d.pod) for d in assigned}
            for key in [k for k in self._cache if k not in live]:
                del self._cache[key]
            for device in assigned:
                job_id, uid = self._job_of(device.namespace, device.pod, now)
                found.append(GpuOwner(device.device_id, device.namespace, device.pod, device.container,
                                      job_id, uid))
        return found

    def _job_of(self, namespace: str, pod: str, now: float) -> tuple[str | None, str | None]:
        cached = self._cache.get((namespace, pod))
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1], cached[2]
        try:
            meta = self.pods.get(namespace, pod)
        except DependencyUnavailable:
            self.errors += 1
            # Keep the last answer and ask again after ``retry`` seconds, not on every read: the
            # GPU exporter reads this under its attribution lock, every sampling interval.
            known = (cached[1], cached[2]) if cached is not None else (None, None)
            self._cache[(namespace, pod)] = (now - self.ttl + self.retry, *known)
            return known
        job = self.resolver.job_of(meta) if meta is not None else None
        job_id = job.job_id if job is not None else None
        uid = meta.uid or None if meta is not None else None
        self._cache[(namespace, pod)] = (now, job_id, uid)
        return job_id, uid

    def by_device(self) -> dict[str, GpuOwner]:
        """Owners keyed by device id (GPU or MIG UUID), as the GPU exporter looks them up."""
        return {owner.device_id: owner for owner in self.owners()}


class PodJobMap:
    """The kubelet's GPU allocations as a job map: the ``read() -> JobMapSnapshot`` interface of
    :class:`jobsight.identity.JobMapDir`, keyed by GPU (or MIG) UUID, so the GPU exporter's job
    attribution takes a pod's GPUs as its job's, as it takes a Slurm prolog's map files. Files in
    ``files`` (if any) are read too; the kubelet's answer wins for the GPUs it names.

    :meth:`pod_labels` gives the job and dcgm-exporter's ``namespace``/``pod``/``container`` of
    each GPU a job's pod holds, as of the last read, for ``jobsight_gpu_job_info``. A kubelet that does not
    answer is one error in the snapshot (the exporter logs and counts it) and no pod GPUs until it
    answers again."""

    def __init__(self, attribution: PodGpuAttribution, files: JobMapDir | None = None,
                 pod_alias_dir: Path | None = None, alias_keep_seconds: float = 7 * 86400.0,
                 wall_clock: Callable[[], float] = time.time, node_name: str | None = None,
                 node_pods_interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.attribution = attribution
        self.files = files
        self.pod_alias_dir = pod_alias_dir
        self.alias_keep_seconds = alias_keep_seconds
        self.wall_clock = wall_clock
        # Pods that hold no GPU (an MPIJob's launcher, a data loader, a parameter server) write
        # logs too: with the node's name, the API server's list of pods bound to this node, read
        # every ``node_pods_interval`` seconds, gives their aliases as well.
        self.node_name = node_name
        self.node_pods_interval = node_pods_interval
        self.clock = clock
        self._node_jobs: dict[str, str] = {}
        self._node_jobs_at: float | None = None
        self._labels: dict[str, tuple[str, dict[str, str]]] = {}
        self._written: dict[str, str] = {}
        self._lock = threading.Lock()

    def read(self) -> JobMapSnapshot:
        base = self.files.read() if self.files is not None else JobMapSnapshot()
        jobs = dict(base.jobs_by_key)
        errors = list(base.errors)
        labels: dict[str, tuple[str, dict[str, str]]] = {}
        try:
            owners = self.attribution.owners()
        except DependencyUnavailable as exc:
            owners = []
            errors.append(str(exc))
        for owner in owners:
            if owner.job_id is None:
                # A pod of no job holds it: no job's GPU, and no pod labels that a job found
                # otherwise (by its processes) could be mistaken to have.
                jobs.pop(owner.device_id, None)
                continue
            jobs[owner.device_id] = (owner.job_id,)
            labels[owner.device_id] = (owner.job_id, {"namespace": owner.namespace, "pod": owner.pod,
                                                      "container": owner.container})
        with self._lock:
            self._labels = labels
        if self.pod_alias_dir is not None:
            aliases = dict(self._node_pod_jobs(errors))
            aliases.update({o.pod_uid: o.job_id for o in owners if o.pod_uid and o.job_id})
            try:
                self._write_aliases(aliases)
            except OSError as exc:
                errors.append(f"{self.pod_alias_dir}: {exc.strerror or exc}")
        return JobMapSnapshot(jobs_by_key=jobs, errors=tuple(errors))

    def _node_pod_jobs(self, errors: list[str]) -> dict[str, str]:
        """Pod UID → job id of every pod of a job bound to this node, as of the last list; an API
        server that does not answer keeps the last answer and is asked again after the
        attribution's ``retry`` seconds."""
        if self.node_name is None:
            return {}
        now = self.clock()
        if self._node_jobs_at is not None and now - self._node_jobs_at < self.node_pods_interval:
            return self._node_jobs
        try:
            pods = self.attribution.pods.list_on_node(self.node_name)
        except DependencyUnavailable as exc:
            errors.append(str(exc))
            self._node_jobs_at = now - self.node_pods_interval + self.attribution.retry
            return self._node_jobs
        found: dict[str, str] = {}
        for meta in pods:
            job = self.attribution.resolver.job_of(meta)
            if job is not None and meta.uid:
                found[meta.uid] = job.job_id
        self._node_jobs, self._node_jobs_at = found, now
        return found

    def _write_aliases(self, by_uid: dict[str, str]) -> None:
        """``<pod_alias_dir>/<pod UID>`` holding the pod's job id, for the log collector: the
        kubelet names a pod's log directory ``/var/log/pods/<ns>_<pod>_<uid>/``. Written once per
        pod (atomically: temporary file, rename); removed ``alias_keep_seconds`` after the pod is
        gone, since its last lines may be read late."""
        directory = self.pod_alias_dir
        assert directory is not None
        directory.mkdir(parents=True, exist_ok=True)
        for uid, job_id in by_uid.items():
            if self._written.get(uid) == job_id or not _UID_RE.match(uid):
                continue
            partial = directory / f".{uid}.tmp"
            partial.write_text(job_id + "\n", encoding="utf-8")
            partial.chmod(0o644)
            partial.replace(directory / uid)
            self._written[uid] = job_id
        now = self.wall_clock()
        for entry in os.scandir(directory):
            if entry.name in by_uid or not _UID_RE.match(entry.name):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > self.alias_keep_seconds:
                    os.unlink(entry.path)
                    self._written.pop(entry.name, None)

    def pod_labels(self) -> dict[str, tuple[str, dict[str, str]]]:
        with self._lock:
            return dict(self._labels)
