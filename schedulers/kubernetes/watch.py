"""``jobsight kube watch``: registers and finishes the cluster's training jobs in the API.

One process per cluster (the chart runs one replica): a list+watch loop per resource (pods, and each
known job kind whose resource the cluster serves) feeds a :class:`~tracker.JobTracker`; after each
change the job bodies that changed are ``PUT`` to the API.

Resuming without losing or duplicating a state:
- every watch resumes from the last ``resourceVersion`` it saw (events and bookmarks); a dropped
  connection, a watch timeout or an API server restart just starts a new watch from there;
- ``410 Gone`` (the version is too old) or a failed resume leads to a fresh list, which replaces
  what the tracker knew: objects missing from it were deleted meanwhile;
- what is sent is the whole job record, and only when it differs from what was last delivered;
  what could not be delivered stays pending (the newest body per job) and is retried with backoff;
- after a restart the watcher first asks the API what it already has, so a finished job is not
  reported again and a job is never reported running after it was reported finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jobsight.errors import DependencyUnavailable, InvalidInput
from schedulers.kubernetes.jobsapi import JobsApi
from schedulers.kubernetes.tracker import FINAL, JobKind, JobTracker

log = logging.getLogger(__name__)

POD_KIND = JobKind("", "v1", "pods", "Pod")
PRUNE_SECONDS = 60.0
_COMPARED = ("status", "nodes", "started_at", "ended_at", "exit_code", "reason", "name", "user", "tenant")


class GpuLookup(Protocol):
    def gpus(self, job_id: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Event:
    kind: JobKind
    type: str  # ADDED, MODIFIED, DELETED, or SYNC (a whole list: ``objects``)
    obj: Mapping[str, Any] | None = None
    objects: tuple[Mapping[str, Any], ...] = ()


class Gone(Exception):
    """The API server no longer has the resourceVersion asked for: list again."""


class Absent(Exception):
    """The cluster does not serve this resource (its CRD is not installed)."""


class KubeSource:
    """List and watch calls through the official ``kubernetes`` client, raw JSON in and out.

    ``api_client`` is a configured ``kubernetes.client.ApiClient`` (in-cluster or kubeconfig).
    Client errors are translated here: 404 → :class:`Absent`, 410 → :class:`Gone`, anything else
    (HTTP errors, dropped connections, timeouts) → :class:`DependencyUnavailable`."""

    def __init__(self, api_client: Any, page_size: int = 500, watch_seconds: int = 300,
                 read_timeout: float = 360.0) -> None:
        self.api_client = api_client
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        self.read_timeout = read_timeout
        self._open: set[Any] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Cut the open watch streams, so their threads see the stop at once rather than at the
        next event (a quiet watch can last ``watch_seconds``)."""
        with self._lock:
            responses = list(self._open)
        for response in responses:
            raw = getattr(response, "response", response)  # the client's wrapper around urllib3's
            # As the client's own Watch.stop does: shut the socket down, which wakes a blocked read
            # on every urllib3 flavour (closing the response object does not, on some).
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            with contextlib.suppress(Exception):
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                else:
                    raw.close()

    def _call(self, kind: JobKind, **kwargs: Any) -> Any:
        from kubernetes import client

        kwargs.update(_preload_content=False, _request_timeout=(10.0, self.read_timeout))
        if kind.plural == "pods":
            return client.CoreV1Api(self.api_client).list_pod_for_all_namespaces(**kwargs)
        if kind.group == "batch":
            return client.BatchV1Api(self.api_client).list_job_for_all_namespaces(**kwargs)
        return client.CustomObjectsApi(self.api_client).list_cluster_custom_object(
            kind.group, kind.version, kind.plural, **kwargs)

    def _translate(self, kind: JobKind, exc: BaseException) -> Exception:
        status = getattr(exc, "status", None)
        if status == 404:
            return Absent(f"{kind.key}: not served by this cluster")
        if status == 403:
            # RBAC that leaves a job kind out (the chart's values) means: do not watch it.
            return Absent(f"{kind.key}: forbidden to this service account")
        if status == 410:
            return Gone(f"{kind.key}: resource version too old")
        return DependencyUnavailable("kubernetes API", f"{kind.key}: {type(exc).__name__}: {exc}")

    def list(self, kind: JobKind) -> tuple[list[Mapping[str, Any]], str]:
        """All objects of ``kind`` in pages, and the list's resourceVersion."""
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            try:
                kwargs: dict[str, Any] = {"limit": self.page_size}
                if token:
                    kwargs["_continue"] = token
                response = self._call(kind, **kwargs)
                try:
                    page = json.loads(response.data)
                finally:
                    response.release_conn()
            except (Gone, Absent):
                raise
            except Exception as exc:  # the client's and urllib3's errors, translated once, here
                raise self._translate(kind, exc) from exc
            items.extend(page.get("items") or [])
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                return items, str(metadata.get("resourceVersion", ""))

    def watch(self, kind: JobKind, resource_version: str,
              stop: threading.Event) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """Events after ``resource_version`` as (type, object) until the server ends the watch;
        BOOKMARK events carry only the new version. Raises :class:`Gone` on 410."""
        from kubernetes.watch import watch as kube_watch

        iter_resp_lines: Callable[[Any], Iterator[str]] = kube_watch.iter_resp_lines  # untyped upstream

        try:
            response = self._call(kind, watch=True, resource_version=resource_version,
                                  allow_watch_bookmarks=True, timeout_seconds=self.watch_seconds)
        except Exception as exc:  # the client's and urllib3's errors, translated once, here
            raise self._translate(kind, exc) from exc
        with self._lock:
            self._open.add(response)
        try:
            for line in iter_resp_lines(response):
                if stop.is_set():
                    return
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DependencyUnavailable("kubernetes API", f"{kind.key}: bad watch line") from exc
                etype, obj = str(event.get("type", "")), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(f"{kind.key}: {obj.get('message', 'expired')}")
                    raise DependencyUnavailable("kubernetes API", f"{kind.key}: watch error {obj}")
                yield etype, obj
        except (Gone, DependencyUnavailable):
            raise
        except Exception as exc:  # the client's and urllib3's errors, translated once, here
            raise self._translate(kind, exc) from exc
        finally:
            with self._lock:
                self._open.discard(response)
            response.close()
            response.release_conn()


class ResourceLoop:
    """List, then watch from the list's version; resume from the last version seen; list again
    after 410 Gone. Puts :class:`Event` items on ``events``. A resource the cluster does not serve
    is probed again every ``absent_retry`` seconds (a CRD installed later is picked up)."""

    def __init__(self, source: KubeSource, kind: JobKind, events: queue.Queue[Event],
                 stop: threading.Event, backoff: float = 1.0, max_backoff: float = 30.0,
                 absent_retry: float = 300.0) -> None:
        self.source = source
        self.kind = kind
        self.events = events
        self.stop = stop
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.absent_retry = absent_retry
        self.resource_version: str | None = None
        self.lists = 0
        self.watches = 0

    def run(self) -> None:
        delay = self.backoff
        while not self.stop.is_set():
            try:
                if self.resource_version is None:
                    items, version = self.source.list(self.kind)
                    self.lists += 1
                    self.events.put(Event(self.kind, "SYNC", objects=tuple(items)))
                    self.resource_version = version
                self.watches += 1
                for etype, obj in self.source.watch(self.kind, self.resource_version, self.stop):
                    seen = (obj.get("metadata") or {}).get("resourceVersion")
                    if etype in ("ADDED", "MODIFIED", "DELETED"):
                        self.events.put(Event(self.kind, etype, obj=obj))
                    if seen:
                        self.resource_version = str(seen)
                    delay = self.backoff
            except Gone as exc:
                log.info("%s; listing again", exc)
                self.resource_version = None
            except Absent as exc:
                log.info("%s; trying again in %.0f s", exc, self.absent_retry)
                self.events.put(Event(self.kind, "ABSENT"))
                self.stop.wait(self.absent_retry)
            except DependencyUnavailable as exc:
                log.warning("%s; resuming in %.0f s from version %s", exc, delay, self.resource_version)
                self.stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)


class Delivery:
    """The newest body per job, sent when it differs from what the API last acknowledged.

    A final state waits ``settle`` seconds after the job's last change before it is sent: the pod
    that says why (``OOMKilled``) and the job object that says "failed" come on different watches,
    in either order, and the failure notification should name the cause, once."""

    def __init__(self, api: JobsApi, clock: Callable[[], float] = time.monotonic,
                 backoff: float = 1.0, max_backoff: float = 60.0, settle: float = 2.0) -> None:
        self.api = api
        self.clock = clock
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.settle = settle
        self.delivered: dict[str, dict[str, Any]] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        self._not_before: dict[str, float] = {}
        self._retry_at = 0.0
        self._delay = backoff
        self.sent = 0
        # What the API had of this scheduler's jobs when the watcher started (prime), used by the
        # first pass instead of a GET per job; None: ask per job.
        self._known: dict[str, dict[str, Any]] | None = None
        self.primed = False

    def prime(self, scheduler: str = "kubernetes") -> bool:
        """Read what the API has of ``scheduler``'s jobs in pages (one request per 1,000 jobs),
        so that the first pass over a cluster's jobs asks nothing per job. False, and the first
        pass asks per job as before, when the API cannot list them (down, or too old to filter)."""
        self.primed = True
        known: dict[str, dict[str, Any]] = {}
        try:
            for job in self.api.list_jobs(scheduler):
                job_id = job.get("job_id")
                if isinstance(job_id, str):
                    known[job_id] = job
        except (DependencyUnavailable, InvalidInput) as exc:
            log.warning("could not list the API's %s jobs, asking per job instead: %s", scheduler, exc)
            return False
        self._known = known
        return True

    def end_priming(self) -> None:
        """After the first pass: jobs seen from now on are new, or learnt per job."""
        self._known = None

    def offer(self, job_id: str, body: dict[str, Any]) -> None:
        last = self.delivered.get(job_id)
        if last is not None:
            if _same(last, body):
                self.pending.pop(job_id, None)
                return
            if (last.get("status") in FINAL and body.get("status") != last.get("status")
                    and not _new_run(last, body)):
                # A final state is final: a restart of the job is still the same run, and a job
                # deleted after it succeeded did not get cancelled.
                return
        previous = self.pending.get(job_id)
        if previous is not None and _same(previous, body):
            return  # already waiting: the same record offered again does not restart the settling
        self.pending[job_id] = body
        self._not_before[job_id] = self.clock() + (self.settle if body.get("status") in FINAL else 0.0)

    def learn(self, job_id: str, uid: str | None) -> None:
        """Before a job's first delivery by this process: what does the API already have?"""
        if job_id in self.delivered:
            return
        if self._known is not None:
            known = self._known.pop(job_id, None)
        else:
            try:
                known = self.api.get(job_id)
            except (DependencyUnavailable, InvalidInput) as exc:
                log.warning("could not read %s from the API: %s", job_id, exc)
                return
        if known is None:
            return
        labels = known.get("labels") or {}
        if uid is None or labels.get("uid") in (None, uid):
            self.delivered[job_id] = {k: known.get(k) for k in (*_COMPARED, "labels", "gpus")}

    def forget(self, job_id: str) -> None:
        """Drop what is known of a job that is over and gone from the cluster (bounded memory)."""
        if job_id not in self.pending:
            self.delivered.pop(job_id, None)

    def flush(self) -> None:
        now = self.clock()
        if not self.pending or now < self._retry_at:
            return
        for job_id in list(self.pending):
            if self._not_before.get(job_id, 0.0) > now:
                continue
            body = self.pending[job_id]
            try:
                self.api.put(job_id, body)
            except DependencyUnavailable as exc:
                log.warning("job %s not delivered (will retry in %.0f s): %s", job_id, self._delay, exc)
                self._retry_at = self.clock() + self._delay
                self._delay = min(self._delay * 2, self.max_backoff)
                return
            except InvalidInput as exc:
                log.error("the API refused job %s: %s", job_id, exc)
                self.pending.pop(job_id, None)
                continue
            self.sent += 1
            self.delivered[job_id] = body
            self.pending.pop(job_id, None)
            self._not_before.pop(job_id, None)
        self._delay = self.backoff


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if any(_norm(a.get(k)) != _norm(b.get(k)) for k in _COMPARED):
        return False
    if _gpu_keys(a) != _gpu_keys(b):
        return False
    return dict(a.get("labels") or {}) == dict(b.get("labels") or {})


def _gpu_keys(body: Mapping[str, Any]) -> list[tuple[str, int, str | None]]:
    return sorted((str(g.get("host")), int(g.get("gpu", -1)), g.get("uuid")) for g in body.get("gpus") or [])


def _norm(value: Any) -> Any:
    # The API returns times as "+00:00" ISO strings; Kubernetes sends "Z".
    if isinstance(value, str) and len(value) >= 20 and value[4] == "-" and "T" in value:
        return value.replace("Z", "+00:00")
    return value


def _new_run(last: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    old = (last.get("labels") or {}).get("uid")
    new = (body.get("labels") or {}).get("uid")
    return bool(old and new and old != new)


class Watcher:
    """Runs the resource loops and turns their events into deliveries, until ``stop`` is set."""

    def __init__(self, source: KubeSource, tracker: JobTracker, delivery: Delivery,
                 kinds: tuple[JobKind, ...], stop: threading.Event | None = None,
                 tick: float = 1.0, backoff: float = 1.0, gpus: GpuLookup | None = None,
                 gpu_refresh: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.gpu_lookup = gpus
        self.gpu_refresh = gpu_refresh
        self.clock = clock
        self._gpus: dict[str, list[dict[str, Any]]] = {}
        self._gpus_at: dict[str, float] = {}
        self._next_gpu_refresh = 0.0
        self._next_prune = 0.0
        self.tracker = tracker
        self.delivery = delivery
        self.kinds = kinds
        self.stop = stop or threading.Event()
        self.tick = tick
        self.events: queue.Queue[Event] = queue.Queue()
        self.loops = [ResourceLoop(source, kind, self.events, self.stop, backoff=backoff)
                      for kind in (POD_KIND, *kinds)]
        self._threads: list[threading.Thread] = []
        self.synced: set[JobKind] = set()
        self.absent: set[JobKind] = set()

    @property
    def ready(self) -> bool:
        """Every resource listed once (or found not served)."""
        return all(loop.kind in self.synced or loop.kind in self.absent for loop in self.loops)

    def start(self) -> None:
        for loop in self.loops:
            thread = threading.Thread(target=loop.run, name=f"watch-{loop.kind.key}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def run(self) -> None:
        """Process events until stopped. Nothing is delivered before every resource has been
        listed once (or found not served), so that a job that finished while the watcher was away
        is not first reported running from its pods, then finished from its object."""
        self.start()
        try:
            while not self.stop.is_set():
                self.step(self.tick)
        finally:
            self.stop.set()
            self.source.close()
            for thread in self._threads:
                thread.join(timeout=5)

    def step(self, wait: float) -> None:
        try:
            event: Event | None = self.events.get(timeout=wait)
        except queue.Empty:
            event = None
        while event is not None:
            self._apply(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                event = None
        if self.ready:
            if not self.delivery.primed:
                self.delivery.prime()
            for job_id in self.tracker.take_dirty():
                self._offer(job_id)
            self.delivery.end_priming()
            if self.gpu_lookup is not None and self.clock() >= self._next_gpu_refresh:
                # The agents publish a job's GPUs a scrape after its pods start: look again for
                # the running ones until Prometheus has them all.
                self._next_gpu_refresh = self.clock() + self.gpu_refresh
                for job_id, sent in list(self.delivery.delivered.items()):
                    if sent.get("status") == "running":
                        self._offer(job_id)
            if self.clock() >= self._next_prune:
                self._next_prune = self.clock() + PRUNE_SECONDS
                self._prune()
        self.delivery.flush()

    def _prune(self) -> None:
        """Forget jobs whose pods and object are gone once their end is delivered (or that were
        never jobs to report), so a watcher running for months keeps only what is live."""
        def settled(job_id: str) -> bool:
            sent = self.delivery.delivered.get(job_id)
            return job_id not in self.delivery.pending and (sent is None or sent.get("status") in FINAL)

        for job_id in self.tracker.prune(settled):
            self.delivery.forget(job_id)
            self._gpus.pop(job_id, None)
            self._gpus_at.pop(job_id, None)

    def _offer(self, job_id: str) -> None:
        body = self.tracker.body(job_id)
        if body is None:
            return
        self.delivery.learn(job_id, self.tracker.object_uid(job_id))
        if self.gpu_lookup is not None:
            self._add_gpus(job_id, body)
        self.delivery.offer(job_id, body)

    def _add_gpus(self, job_id: str, body: dict[str, Any]) -> None:
        """The job's GPUs from Prometheus (asked at most every ``gpu_refresh`` seconds per job);
        when it has none to say (the job ended long ago, or Prometheus is down), the last ones
        known, here or in the API: a record is sent whole, and one without GPUs would erase them."""
        assert self.gpu_lookup is not None
        found: list[dict[str, Any]] = []
        now = self.clock()
        if now - self._gpus_at.get(job_id, -self.gpu_refresh) >= self.gpu_refresh:
            self._gpus_at[job_id] = now
            try:
                found = self.gpu_lookup.gpus(job_id)
            except DependencyUnavailable as exc:
                log.warning("%s", exc)
        if found:
            self._gpus[job_id] = found
        sent = self.delivery.delivered.get(job_id) or {}
        known = self._gpus.get(job_id) or list(sent.get("gpus") or [])
        if known:
            body["gpus"] = known

    def _apply(self, event: Event) -> None:
        if event.type == "ABSENT":
            self.absent.add(event.kind)
            return
        self.absent.discard(event.kind)
        if event.kind == POD_KIND:
            if event.type == "SYNC":
                self.tracker.replace_pods(event.objects)
                self.synced.add(POD_KIND)
            elif event.obj is not None:
                self.tracker.pod_event(event.type, event.obj)
            return
        if event.kind not in self.tracker.watched_kinds:
            self.tracker.watch_kind(event.kind)
        if event.type == "SYNC":
            self.tracker.replace_objects(event.kind, event.objects)
            self.synced.add(event.kind)
        elif event.obj is not None:
            self.tracker.object_event(event.kind, event.type, event.obj)
