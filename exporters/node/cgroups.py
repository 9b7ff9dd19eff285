"""Scheduler job cgroups: Slurm's job directories (cgroup v2 ``/system.slice/slurmstepd.scope/
job_<id>``, v1 ``<controller>/slurm/uid_<uid>/job_<id>``) and Kubernetes pod directories
(``/kubepods…/pod<uid>``), found under ``<sysfs>/fs/cgroup``.

They give two things. Which processes belong to which job: the PIDs in ``cgroup.procs`` of the
directory and its sub-cgroups, which only root (slurmstepd, the kubelet) can put there, read for
the job processes alone rather than for every process on the host. And the kernel's own per-job
totals, which, unlike sums over live processes, also count processes that came and went between
two scrapes (cgroup v2 files; v1 directories give the PIDs only).

Directories are matched by their whole path from the root of the hierarchy
(:func:`jobsight.identity.job_from_cgroup_path`), never by name alone: a user owns a delegated
subtree (``/user.slice/user-U.slice/user@U.service``) and can name a directory there ``job_4711``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporters.node._files import join, read_bytes
from jobsight.identity import PodJobs, job_from_cgroup_path

# Directories on the way to a scheduler cgroup, in the form /proc/<pid>/cgroup writes paths; only
# these are descended into, so the walk stays small on a host with thousands of service and
# container cgroups.
_ON_THE_WAY = re.compile(
    r"^/(?:system\.slice(?:/[^/]*slurmstepd\.scope)?|slurm[^/]*(?:/uid_\d+)?|kubepods[^/]*(?:/[^/]+)?)$"
)


@dataclass(frozen=True)
class CgroupUsage:
    job_id: str
    path: str
    cpu_seconds: float | None  # cpu.stat usage_usec
    memory_bytes: float | None  # memory.current: anon + page cache, what memory.max limits
    read_bytes: float | None  # io.stat rbytes over all devices
    write_bytes: float | None
    processes: int  # distinct PIDs in cgroup.procs of the job and its sub-cgroups
    pids: frozenset[int] = field(default_factory=frozenset)  # those PIDs


class JobCgroupFinder:
    """:func:`find_job_cgroups`, re-walked every ``ttl`` seconds rather than every scrape: new job
    directories show up within ``ttl``; a directory that disappears is noticed at once."""

    def __init__(self, cgroup_root: str, max_depth: int = 5, ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, pod_jobs: PodJobs | None = None) -> None:
        self.cgroup_root = cgroup_root
        # Kubernetes pod cgroups are named by pod UID: their job is the pod's training job (the
        # agent's files), pods of no job are no job, and a job's pods on this node add up.
        self.pod_jobs = pod_jobs if pod_jobs is not None else PodJobs(clock=clock)
        self.max_depth = max_depth
        self.ttl = ttl
        self.clock = clock
        self._found: dict[str, str] = {}
        self._present = False
        self._at: float | None = None

    def usage(self) -> dict[str, CgroupUsage]:
        now = self.clock()
        if self._at is None or now - self._at >= self.ttl:
            self._found = find_job_cgroups(self.cgroup_root, self.max_depth)
            self._present = cgroupfs_present(self.cgroup_root)
            self._at = now
        found: dict[str, CgroupUsage] = {}
        for key, path in self._found.items():
            if not os.path.isdir(path):
                self._at = None  # the job ended: walk again next scrape
                continue
            job_id = self.pod_jobs.job_of(key) if _POD_UID.match(key) else key
            if job_id is None:
                continue
            usage = read_cgroup(job_id, path)
            found[job_id] = _add(found[job_id], usage) if job_id in found else usage
        return found

    def present(self) -> bool:
        """Whether a cgroup hierarchy was mounted at the root at the last walk: if not, scheduler
        jobs can only be found through each process's ``/proc/<pid>/cgroup``."""
        return self._present


def cgroupfs_present(cgroup_root: str) -> bool:
    """A cgroup v2 root, or a v1 tmpfs whose controller directories are hierarchies, has
    ``cgroup.procs``; an empty directory (no /sys/fs/cgroup in a container) has none."""
    if os.path.exists(join(cgroup_root, "cgroup.procs")):
        return True
    try:
        with os.scandir(cgroup_root) as entries:
            return any(os.path.exists(join(e.path, "cgroup.procs")) for e in entries)
    except OSError:
        return False


def _job_of_dir(parts: tuple[str, ...]) -> str | None:
    """The job of a directory at ``parts`` below the root: read as a v2 path, or as a v1 path
    below its controller directory (the first part). Only root makes the root's children, so
    either reading is anchored in root-owned directories."""
    for path in ("/" + "/".join(parts), "/" + "/".join(parts[1:]) if len(parts) > 1 else None):
        if path is None:
            continue
        ref = job_from_cgroup_path(path)
        if ref is not None:
            return ref.job_id
    return None


def _on_the_way(parts: tuple[str, ...]) -> bool:
    if len(parts) == 1:
        return True  # a v1 controller hierarchy, or a v2 top-level slice
    return bool(_ON_THE_WAY.match("/" + "/".join(parts)) or _ON_THE_WAY.match("/" + "/".join(parts[1:])))


def find_job_cgroups(cgroup_root: str, max_depth: int = 5) -> dict[str, str]:
    """job id → directory, for scheduler job cgroups up to ``max_depth`` below the root. Job
    directories are not descended into (their step and container cgroups are not jobs); only
    directories on the way to one are, and not deeper than ``max_depth``. Of a v1 job present in
    several controller hierarchies, the first in name order is kept (all list the same PIDs)."""
    found: dict[str, str] = {}
    stack: list[tuple[str, tuple[str, ...]]] = [(cgroup_root, ())]
    while stack:
        path, parts = stack.pop()
        try:
            with os.scandir(path) as it:
                # Reversed onto a stack: subtrees are walked in name order.
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            here = (*parts, entry.name)
            job_id = _job_of_dir(here)
            if job_id is not None:
                found.setdefault(job_id, entry.path)
            elif len(here) < max_depth and _on_the_way(here):
                stack.append((entry.path, here))
    return found


_POD_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _add(a: CgroupUsage, b: CgroupUsage) -> CgroupUsage:
    """Two pods of one job: values add up; one unknown makes the sum unknown."""
    def both(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x + y

    pids = a.pids | b.pids
    return CgroupUsage(a.job_id, a.path, both(a.cpu_seconds, b.cpu_seconds),
                       both(a.memory_bytes, b.memory_bytes), both(a.read_bytes, b.read_bytes),
                       both(a.write_bytes, b.write_bytes), a.processes + b.processes, pids)


def _usage_usec(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == b"usage_usec" and parts[1].isdigit():
            return int(parts[1])
    return None


def _io_bytes(raw: bytes | None) -> tuple[float, float] | None:
    """rbytes and wbytes of ``io.stat`` ("8:0 rbytes=1 wbytes=2 rios=3 ..." per device) summed
    over devices; an empty file means no I/O yet; garbage means unknown."""
    if raw is None:
        return None
    read = write = 0.0
    for line in raw.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition(b"=")
            if key in (b"rbytes", b"wbytes"):
                if not value.isdigit():
                    return None
                if key == b"rbytes":
                    read += int(value)
                else:
                    write += int(value)
    return read, write


def _optional(path: str) -> bytes | None:
    try:
        return read_bytes(path)
    except OSError:
        return None  # controller not enabled for this cgroup: that value is unknown, not 0


def read_cgroup(job_id: str, path: str) -> CgroupUsage:
    """What the kernel accounts to one job directory. A file that is missing (controller not
    enabled) or garbage leaves that value unknown (None) — never 0, never a failed scrape."""
    usage = _usage_usec(_optional(join(path, "cpu.stat")))
    mem_raw = _optional(join(path, "memory.current"))
    memory = float(int(mem_raw.strip())) if mem_raw is not None and mem_raw.strip().isdigit() else None
    io = _io_bytes(_optional(join(path, "io.stat")))
    read, write = io if io is not None else (None, None)
    pids: set[int] = set()
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            raw = _optional(join(dirpath, "cgroup.procs"))
            if raw is not None:
                pids.update(int(p) for p in raw.split() if p.isdigit())
    return CgroupUsage(
        job_id, path, usage / 1e6 if usage is not None else None, memory, read, write, len(pids),
        frozenset(pids),
    )
