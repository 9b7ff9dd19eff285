"""Which jobs hold a GPU, and how much of its memory each one uses.

Order (DESIGN.md "Job identity"): the job map directory first (a Slurm prolog wrote which job got
the GPU, so every process on it belongs to that job); otherwise each process on the GPU is
resolved by PID through ``/proc/<pid>/environ`` and ``/proc/<pid>/cgroup``. A backend that
already knows a process's job (the simulated one) passes it in ``ProcessUsage.job_id``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporters.gpu.model import Clock, GpuIdentity, InstanceReading, ProcessUsage
from jobsight.identity import JobMapDir, JobMapSnapshot, JobRef, ProcessJobResolver
from jobsight.jobid import is_valid_job_id

log = logging.getLogger(__name__)

# Distinct job-map problems are logged once each; the set is bounded so a directory full of bad
# files cannot grow it without end.
_MAX_LOGGED_ERRORS = 256


class JobMapSource(Protocol):
    """What the attribution reads GPU → job from: a job map directory, or on Kubernetes the
    kubelet's GPU allocations in the same shape (schedulers/kubernetes, wired by the agent)."""

    def read(self) -> JobMapSnapshot: ...


@dataclass(frozen=True)
class GpuJobs:
    jobs: tuple[str, ...] = ()
    memory_bytes: dict[str, int] = field(default_factory=dict)
    # Per MIG instance of the GPU (GPU instance id → its jobs), when MIG mode is on.
    instances: dict[int, GpuJobs] = field(default_factory=dict)


class JobAttributor:
    """Thread-safe: the sampler's per-GPU threads call :meth:`attribute` concurrently."""

    def __init__(
        self,
        job_map: JobMapDir | JobMapSource | None,
        resolver: ProcessJobResolver,
        clock: Clock,
        map_ttl_s: float = 1.0,
    ) -> None:
        self._job_map = job_map
        self._resolver = resolver
        self._clock = clock
        self._map_ttl_s = map_ttl_s
        self._lock = threading.Lock()
        self._snapshot = JobMapSnapshot()
        self._snapshot_at: float | None = None
        self._pids_by_gpu: dict[int, set[int]] = {}
        self._logged: set[str] = set()
        self.map_errors = 0

    def attribute(self, identity: GpuIdentity, processes: Sequence[ProcessUsage],
                  instances: Sequence[InstanceReading] = ()) -> GpuJobs:
        """The jobs on the GPU, and on each of its MIG instances: an instance's own map file
        (``<index>.<GPU instance id>`` as dcgm-exporter names it, or its ``MIG-…`` UUID) first,
        then the GPU's map file, then the instance's processes."""
        with self._lock:
            snapshot = self._map()
            pids = {p.pid for p in processes}
            for inst in instances:
                pids.update(p.pid for p in inst.processes)
            self._pids_by_gpu[identity.index] = pids
            mapped = snapshot.jobs_for_gpu(identity.index, identity.uuid or None)
            per_instance: dict[int, GpuJobs] = {}
            for inst in instances:
                key = f"{identity.index}.{inst.instance.gi_id}"
                own = snapshot.jobs_for_gpu(key, inst.instance.uuid or None)
                per_instance[inst.instance.gi_id] = self._jobs(own or mapped, inst.processes)
            live = set().union(*self._pids_by_gpu.values())
            self._resolver.forget_except(live)
            found = self._jobs(mapped, processes)
            return GpuJobs(found.jobs, found.memory_bytes, per_instance)

    def _jobs(self, mapped: Sequence[JobRef], processes: Sequence[ProcessUsage]) -> GpuJobs:
        memory: dict[str, int] = {}
        jobs: list[str] = []
        if len(mapped) == 1:
            # The scheduler gave the whole GPU to one job: every process on it is that job's.
            only = mapped[0].job_id
            used = [p.used_bytes for p in processes if p.used_bytes is not None]
            if used:
                memory[only] = sum(used)
            return GpuJobs((only,), memory)
        if mapped:
            # Jobs sharing a GPU (a map file with several lines): all of them hold it, and each
            # process's memory goes to its own job where its cgroup (or trusted environment) says
            # which; memory of a process that names none of them is not attributed.
            names = [ref.job_id for ref in mapped]
            for proc in processes:
                owner = self._job_of(proc)
                if owner is not None and owner in names and proc.used_bytes is not None:
                    memory[owner] = memory.get(owner, 0) + proc.used_bytes
            return GpuJobs(tuple(names), memory)
        for proc in processes:
            job_id = self._job_of(proc)
            if job_id is None:
                continue
            if job_id not in jobs:
                jobs.append(job_id)
            if proc.used_bytes is not None:
                memory[job_id] = memory.get(job_id, 0) + proc.used_bytes
        return GpuJobs(tuple(sorted(jobs)), memory)

    def _job_of(self, proc: ProcessUsage) -> str | None:
        if proc.job_id is not None:
            return proc.job_id if is_valid_job_id(proc.job_id) else None
        ref = self._resolver.job_of(proc.pid)
        return ref.job_id if ref is not None else None

    def _map(self) -> JobMapSnapshot:
        if self._job_map is None:
            return self._snapshot
        now = self._clock()
        if self._snapshot_at is not None and now - self._snapshot_at < self._map_ttl_s:
            return self._snapshot
        snapshot = self._job_map.read()
        for problem in snapshot.errors:
            self.map_errors += 1
            if problem not in self._logged and len(self._logged) < _MAX_LOGGED_ERRORS:
                self._logged.add(problem)
                log.warning("job map: %s", problem)
        self._snapshot, self._snapshot_at = snapshot, now
        return snapshot
