"""Job identity: which training job a GPU, a process or a log file belongs to.

Three sources, in the order DESIGN.md gives:

1. a job map directory (default ``/run/jobsight/jobs``): one file per GPU, named by index
   (``0``, MIG ``0.1``), by UUID (``GPU-…``) or MIG UUID (``MIG-…``); the first token of the
   first non-empty line is the job id. That is the format Slurm prolog scripts already write for
   dcgm-exporter's ``--hpc-job-mapping-dir`` (a job id per line) and for Princeton jobstats'
   ``/run/gpustat`` (``<jobid> <uid>``);
2. a process: its cgroup path (Slurm cgroup v1 ``/slurm/uid_U/job_N``, v2
   ``/system.slice/slurmstepd.scope/job_N``, Kubernetes ``/kubepods…/pod<uid>``), which the kernel
   enforces and only root can change; and, only for processes in no scheduler cgroup and only when
   configured (``trust_environment``), its environment (``JOBSIGHT_JOB_ID``, ``SLURM_JOB_ID``,
   configurable), which any user can set to any value;
3. a log file: a path pattern with a named group ``job_id``.

Every root path is an argument so tests point it at fixture trees. Job ids are validated against
one safe character set (:func:`validate_job_id`) wherever they enter, so that no id read from a
file, a process or a request can carry PromQL or query syntax.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobsight.errors import InvalidInput
from jobsight.jobid import is_valid_job_id

DEFAULT_JOB_MAP_DIR = Path("/run/jobsight/jobs")
# On Kubernetes nodes the agent writes <pod UID> → the pod's training job here (docs/kubernetes.md).
DEFAULT_POD_ALIAS_DIR = Path("/run/jobsight/pods")
DEFAULT_JOB_ENV_VARS: tuple[str, ...] = ("JOBSIGHT_JOB_ID", "SLURM_JOB_ID")

# Only regular files with these names are read from a job map directory, as dcgm-exporter does
# (``^\d+(\.\d+)?$``), plus jobstats' UUID-named files.
_MAP_NAME_RE = re.compile(r"^(?:\d+(?:\.\d+)?|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+)$")

# How much of a map file or /proc/<pid>/environ is read: both are tiny; a bound keeps a hostile
# or corrupt file from costing memory.
_MAX_MAP_FILE_BYTES = 4096
_MAX_ENVIRON_BYTES = 256 * 1024
_MAX_CGROUP_BYTES = 64 * 1024

# Scheduler cgroups are anchored at the root of the hierarchy. A user can own a cgroup subtree
# (systemd delegates /user.slice/user-U.slice/user@U.service to its user) and name directories in
# it as they like, so an unanchored "slurmstepd.scope/job_N" or "pod<uid>" could be forged there;
# the root's children are made by root only. A leading "/.." is what a reader in a cgroup
# namespace sees for cgroups outside it: the rest is still a path from an ancestor of the
# reader's own cgroup, which users do not own.
_NS_UP = r"^(?:/\.\.)*"
# v1: /slurm/uid_U/job_N in each controller hierarchy (/slurm_<node>/ with several slurmd).
_SLURM_CGROUP_V1 = re.compile(_NS_UP + r"/slurm(?:_[^/]*)?/uid_\d+/job_(?P<job_id>\d+)(?:/|$)")
# v2: /system.slice/slurmstepd.scope/job_N (<node>_slurmstepd.scope with several slurmd).
_SLURM_CGROUP_V2 = re.compile(
    _NS_UP + r"/system\.slice/(?:[^/]*_)?slurmstepd\.scope/job_(?P<job_id>\d+)(?:/|$)"
)
# cgroupfs driver: /kubepods[/<qos>]/pod<uid>/…; systemd driver: /kubepods.slice[/kubepods-<qos>
# .slice]/kubepods[-<qos>]-pod<uid with underscores>.slice. Both give the dashed UID Kubernetes
# reports.
_K8S_POD_CGROUP = re.compile(
    _NS_UP + r"/kubepods(?:\.slice)?/(?:[^/]+/)?(?:kubepods-(?:[a-z]+-)?)?"
    r"pod(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
    r"(?:\.slice)?(?:/|$)"
)
# Linux's PF_KTHREAD in the flags field (9) of /proc/<pid>/stat: kernel threads belong to no job.
PF_KTHREAD = 0x00200000

# Log path patterns are matched against the WHOLE path (re.fullmatch) and must start at the root
# ("/"), so that they can only name directories an administrator chose: the scheduler's spool
# directory, the kubelet's /var/log/pods. An unanchored ``slurm-(\d+)\.out`` would hand job 4711
# to ``~/slurm-4711.out`` written by any user (issue 9, finding 2). A pattern ending in "/" names a
# directory and matches every path below it. Both defaults point at directories only root writes:
# slurmd's spool directory (``/var/spool/slurmd/job04711/``) and the kubelet's pod log directory.
DEFAULT_LOG_PATH_PATTERNS: tuple[str, ...] = (
    r"/var/spool/slurm[^/]*/job[^/]+/slurm-(?P<job_id>\d+(?:_\d+)?)\.out",
    # A pod's log directory names the pod, never its job: the pod UID is resolved through the
    # job alias directory the agent writes on Kubernetes nodes (no directory: no job id).
    r"/var/log/pods/[^/_]+_[^/_]+_(?P<pod_uid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/",
)


@dataclass(frozen=True)
class JobRef:
    """A job id and where it was learnt (``map:<file>``, ``env:<VAR>``, ``cgroup:slurm``, …)."""

    job_id: str
    source: str


@dataclass(frozen=True)
class JobMapSnapshot:
    """One read of a job map directory: key (index, ``index.gi``, UUID) → the job ids its file
    lists (one per line, as dcgm-exporter's format allows: jobs sharing a GPU), plus the files that
    could not be used and why. ``by_key`` keeps the first job of each file."""

    jobs_by_key: dict[str, tuple[str, ...]] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    @property
    def by_key(self) -> dict[str, str]:
        return {key: jobs[0] for key, jobs in self.jobs_by_key.items()}

    def _key_for(self, index: int | str, uuid: str | None) -> str | None:
        # UUID files win over index files because an index can be renumbered (the ordinal/minor
        # caveat jobstats documents).
        for key in (uuid, str(index)):
            if key and key in self.jobs_by_key:
                return key
        return None

    def job_for_gpu(self, index: int | str, uuid: str | None = None) -> JobRef | None:
        """The (first) job holding GPU ``index`` (or the GPU with ``uuid``)."""
        jobs = self.jobs_for_gpu(index, uuid)
        return jobs[0] if jobs else None

    def jobs_for_gpu(self, index: int | str, uuid: str | None = None) -> tuple[JobRef, ...]:
        """Every job the GPU's map file lists, in the file's order."""
        key = self._key_for(index, uuid)
        if key is None:
            return ()
        return tuple(JobRef(job_id, f"map:{key}") for job_id in self.jobs_by_key[key])


class JobMapDir:
    """Reads a job map directory on demand. A missing directory is an empty map, as in
    dcgm-exporter: nodes without Slurm prologs simply have none."""

    def __init__(self, path: Path | str = DEFAULT_JOB_MAP_DIR) -> None:
        self.path = Path(path)

    def read(self) -> JobMapSnapshot:
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return JobMapSnapshot()
        except OSError as exc:
            return JobMapSnapshot(errors=(f"{self.path}: {exc.strerror or exc}",))
        by_key: dict[str, tuple[str, ...]] = {}
        errors: list[str] = []
        for entry in sorted(entries, key=lambda e: e.name):
            if not _MAP_NAME_RE.match(entry.name):
                continue
            try:
                if not entry.is_file():
                    continue
                with open(entry.path, "rb") as fh:
                    raw = fh.read(_MAX_MAP_FILE_BYTES)
            except OSError as exc:
                errors.append(f"{entry.path}: {exc.strerror or exc}")
                continue
            job_ids = _first_tokens(raw)
            if not job_ids:
                continue  # an empty file means "no job": the epilog truncated rather than removed it
            bad = [j for j in job_ids if not is_valid_job_id(j)]
            if bad:
                errors.append(f"{entry.path}: invalid job id {bad[0][:64]!r}")
                job_ids = [j for j in job_ids if is_valid_job_id(j)]
                if not job_ids:
                    continue
            by_key[entry.name] = tuple(job_ids)
        return JobMapSnapshot(jobs_by_key=by_key, errors=tuple(errors))


def _first_tokens(raw: bytes) -> list[str]:
    """The first token of each non-empty line, each job once, in order (``<jobid> <uid>`` in
    jobstats' format, a bare job id per line in dcgm-exporter's)."""
    out: list[str] = []
    for line in raw.decode("utf-8", errors="replace").splitlines():
        tokens = line.split()
        if tokens and tokens[0] not in out:
            out.append(tokens[0])
    return out


def job_from_cgroup_path(path: str) -> JobRef | None:
    """The scheduler job of one cgroup path (as ``/proc/<pid>/cgroup`` writes it, from the root of
    the hierarchy), or None when the path is in no Slurm job or Kubernetes pod cgroup."""
    for regex in (_SLURM_CGROUP_V1, _SLURM_CGROUP_V2):
        match = regex.search(path)
        if match:
            return JobRef(match.group("job_id"), "cgroup:slurm")
    match = _K8S_POD_CGROUP.search(path)
    if match:
        return JobRef(match.group("uid").replace("_", "-"), "cgroup:kubernetes")
    return None


def job_from_cgroup(cgroup_text: str) -> JobRef | None:
    """Find a job in the text of ``/proc/<pid>/cgroup`` (v1: many ``id:controllers:path`` lines;
    v2: one ``0::path`` line). Slurm paths win over a Kubernetes pod UID."""
    refs = [job_from_cgroup_path(line.split(":", 2)[2]) for line in cgroup_text.splitlines()
            if line.count(":") >= 2]
    found = [ref for ref in refs if ref is not None]
    for ref in found:
        if ref.source == "cgroup:slurm":
            return ref
    return found[0] if found else None


def job_from_environ(environ_raw: bytes, env_vars: Sequence[str] = DEFAULT_JOB_ENV_VARS) -> JobRef | None:
    """Find a job in the NUL-separated bytes of ``/proc/<pid>/environ``; the first of ``env_vars``
    that is set to a valid id wins."""
    values: dict[str, str] = {}
    wanted = set(env_vars)
    for item in environ_raw.split(b"\0"):
        name, sep, raw_value = item.partition(b"=")
        if not sep:
            continue
        key = name.decode("utf-8", errors="replace")
        if key in wanted:
            values[key] = raw_value.decode("utf-8", errors="replace").strip()
    for var in env_vars:
        value = values.get(var, "")
        if value and is_valid_job_id(value):
            return JobRef(value, f"env:{var}")
    return None


class PodJobs:
    """A Kubernetes pod's training job by pod UID, from the alias files the agent writes: a pod
    cgroup names the pod, never its job, and a pod with no file (kube-system, a notebook) belongs
    to no job. Answers are kept ``ttl`` seconds (a scrape asks for every process of every pod)."""

    def __init__(self, path: Path | str = DEFAULT_POD_ALIAS_DIR, ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.aliases = JobAliasDir(path)
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, str | None]] = {}

    def job_of(self, pod_uid: str) -> str | None:
        now = self.clock()
        cached = self._cache.get(pod_uid)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        if len(self._cache) > 4096:
            self._cache = {uid: hit for uid, hit in self._cache.items() if now - hit[0] < self.ttl}
        job_id = self.aliases.resolve(pod_uid)
        self._cache[pod_uid] = (now, job_id)
        return job_id


class ProcessJobResolver:
    """Maps PIDs to jobs through ``<proc_root>/<pid>/cgroup`` and, where allowed,
    ``<proc_root>/<pid>/environ``.

    Trust (DESIGN.md "Trust"): the cgroup path is read first and wins. Only root (slurmstepd,
    the kubelet) can put a process into a Slurm job or pod cgroup, while any user can start a
    process with ``JOBSIGHT_JOB_ID=<someone else's job>`` or ``SLURM_JOB_ID=…`` in its environment.
    So the environment is read only when ``trust_environment`` is set (off by default: a site
    opts in where no scheduler puts jobs into cgroups and its users are trusted not to name other
    users' jobs), and only for a process that is in no scheduler cgroup.

    Results are cached per (pid, start time): ``cgroup`` and ``environ`` are read once per process
    (a scrape may ask about the same long-lived training processes every few seconds), and a PID
    reused by a new process has a new start time, so it is read afresh. ``environ`` is read up to
    ``max_environ_bytes``.
    """

    def __init__(
        self,
        proc_root: Path | str = "/proc",
        env_vars: Sequence[str] = DEFAULT_JOB_ENV_VARS,
        *,
        trust_environment: bool = False,
        max_environ_bytes: int = _MAX_ENVIRON_BYTES,
        pod_jobs: PodJobs | None = None,
    ) -> None:
        self.proc_root = Path(proc_root)
        # A process in a pod cgroup belongs to the pod's job, found through the agent's files
        # (none: no job); the pod UID is never a job id.
        self.pod_jobs = pod_jobs if pod_jobs is not None else PodJobs()
        self.env_vars = tuple(env_vars)
        self.trust_environment = trust_environment
        self.max_environ_bytes = max_environ_bytes
        self._cache: dict[int, tuple[str, JobRef | None]] = {}

    def job_of(self, pid: int, start: int | str | None = None, *, fresh: bool = False) -> JobRef | None:
        """The job of ``pid``, or None when it has none or has exited. ``start`` is its start time
        (field 22 of ``stat``) when the caller has just read it; ``fresh`` reads the process again
        even if this start time is cached (a process seen between fork and exec)."""
        base = self.proc_root / str(pid)
        started = str(start) if start is not None else _start_time(base)
        if started is None:
            self._cache.pop(pid, None)
            return None
        cached = self._cache.get(pid)
        if not fresh and cached is not None and cached[0] == started:
            return self._job(cached[1])
        ref = self._resolve(base)
        self._cache[pid] = (started, ref)
        return self._job(ref)

    def _job(self, ref: JobRef | None) -> JobRef | None:
        # The pod UID is cached with the process, its job looked up on each call: the agent may
        # write the pod's file after the process was first seen.
        if ref is None or ref.source != "cgroup:kubernetes":
            return ref
        job_id = self.pod_jobs.job_of(ref.job_id)
        return JobRef(job_id, "cgroup:kubernetes") if job_id is not None else None

    def jobs_of(self, pids: Iterable[int]) -> dict[int, JobRef]:
        """The jobs of many PIDs; PIDs without a job are left out."""
        found: dict[int, JobRef] = {}
        for pid in pids:
            ref = self.job_of(pid)
            if ref is not None:
                found[pid] = ref
        return found

    def forget_except(self, live_pids: Iterable[int]) -> None:
        """Drop cache entries of PIDs that no longer exist, so the cache stays bounded."""
        keep = set(live_pids)
        for pid in [p for p in self._cache if p not in keep]:
            del self._cache[pid]

    def _resolve(self, base: Path) -> JobRef | None:
        try:
            with open(base / "cgroup", "rb") as fh:
                cgroup_text = fh.read(_MAX_CGROUP_BYTES).decode("utf-8", errors="replace")
        except OSError:
            return None  # gone (or hidden by hidepid): without the kernel's answer, believe nothing
        ref = job_from_cgroup(cgroup_text)
        if ref is not None or not self.trust_environment:
            return ref
        try:
            with open(base / "environ", "rb") as fh:
                return job_from_environ(fh.read(self.max_environ_bytes), self.env_vars)
        except OSError:
            return None  # not ours to read, or gone


def _start_time(base: Path) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None if the process is gone.
    The command name (field 2) may contain spaces and parentheses, so split after the last ')'."""
    try:
        stat = (base / "stat").read_text(errors="replace")
    except OSError:
        return None
    rest = stat.rpartition(")")[2].split()
    # rest[0] is field 3 (state); field 22 is rest[19].
    return rest[19] if len(rest) > 19 else None


class JobAliasDir:
    """Job ids under another name: a directory of files named like ``4710_3`` (Slurm's array job
    and task, ``%A_%a`` in output file names) or ``4700+1`` (a heterogeneous job's component),
    each holding the job's own id. The scheduler's prolog writes them (``jobsight slurm hook``),
    so a log named by the array pair joins the job by the id its metrics and registry use."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def resolve(self, alias: str) -> str | None:
        if not _ALIAS_RE.match(alias):
            return None
        try:
            fd = os.open(self.path / alias, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            tokens = _first_tokens(fh.read(_MAX_MAP_FILE_BYTES))
        return tokens[0] if tokens and is_valid_job_id(tokens[0]) else None


# Slurm's array/het pairs, and Kubernetes pod UIDs (the agent writes <uid> → the pod's job).
_ALIAS_RE = re.compile(r"^(?:\d{1,20}[_+]\d{1,20}"
                       r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


class PathJobMatcher:
    """Finds a job id in a log file's path with regexes holding a named group ``job_id`` — or a
    Kubernetes ``pod_uid``, or the pair ``array_job_id``/``array_task_id``, resolved through a
    :class:`JobAliasDir` — each matched against the whole path (see :func:`compile_path_pattern`)."""

    def __init__(self, patterns: Sequence[str] = DEFAULT_LOG_PATH_PATTERNS,
                 aliases: JobAliasDir | None = None) -> None:
        self.patterns = tuple(compile_path_pattern(pattern) for pattern in patterns)
        self.aliases = aliases

    def job_of(self, path: str) -> JobRef | None:
        for regex in self.patterns:
            match = regex.fullmatch(path)
            if not match:
                continue
            groups = match.groupdict()
            value = groups.get("job_id")
            if value and is_valid_job_id(value):
                return JobRef(value, "path")
            pod_uid = groups.get("pod_uid")
            if pod_uid and self.aliases is not None:
                # A pod's log directory names the pod; its job is what the agent found for it
                # (owner rules), never the UID itself.
                resolved = self.aliases.resolve(pod_uid)
                if resolved is not None:
                    return JobRef(resolved, f"alias:pod:{pod_uid}")
            array, task = groups.get("array_job_id"), groups.get("array_task_id")
            if array and task and self.aliases is not None:
                resolved = self.aliases.resolve(f"{array}_{task}")
                if resolved is not None:
                    return JobRef(resolved, f"alias:{array}_{task}")
        return None


def compile_path_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a log path pattern for :class:`PathJobMatcher`, refusing one that is not anchored.

    The pattern is matched against the whole path (``re.fullmatch``); it must start with ``/``
    (``^/`` is accepted too) so it names a directory from the root, and have a named group
    ``job_id`` (or the pair ``array_job_id`` and ``array_task_id``). A pattern ending in ``/``
    (or ``/$``) names a directory: it matches every path below it. Raises :class:`InvalidInput`
    saying what is wrong."""
    body = pattern[1:] if pattern.startswith("^") else pattern
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    if not body.startswith("/") or _has_top_level_alternation(body):
        raise InvalidInput(
            f"job_id pattern {pattern!r} must start with '/' (and put alternatives in a group after "
            f"it): patterns match the whole path, from the root, so that only a directory you name "
            f"(one the scheduler owns) can give a job id")
    if body.endswith("/"):
        body = f"(?:{body}).+"
    try:
        regex = re.compile(body)
    except re.error as exc:
        raise InvalidInput(f"job_id pattern {pattern!r} is not a valid regex: {exc}") from exc
    if ("job_id" not in regex.groupindex and "pod_uid" not in regex.groupindex
            and not {"array_job_id", "array_task_id"} <= set(regex.groupindex)):
        raise InvalidInput(f"job_id pattern {pattern!r} has no named group (?P<job_id>...) "
                           "(nor (?P<pod_uid>...), nor the pair (?P<array_job_id>...) and "
                           "(?P<array_task_id>...))")
    return regex


def _has_top_level_alternation(pattern: str) -> bool:
    """Whether ``pattern`` has a ``|`` outside every group and character class: ``/a/([0-9]+)|.*x``
    starts with ``/`` yet its second branch matches anywhere."""
    depth = 0
    in_class = False
    escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
    return False
