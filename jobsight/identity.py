"""Job identity: which training job a GPU, a process or a log file belongs to.

Three sources, in the order DESIGN.md gives:

1. a job map directory (default ``/run/jobsight/jobs``): one file per GPU, named by index
   (``0``, MIG ``0.1``), by UUID (``GPU-…``) or MIG UUID (``MIG-…``); the first token of the
   first non-empty line is the job id. That is the format Slurm prolog scripts already write for
   dcgm-exporter's ``--hpc-job-mapping-dir`` (a job id per line) and for Princeton jobstats'
   ``/run/gpustat`` (``<jobid> <uid>``);
2. a process: its environment (``JOBSIGHT_JOB_ID``, ``SLURM_JOB_ID``, configurable) and its cgroup
   path (Slurm cgroup v1 ``/slurm/uid_U/job_N``, v2 ``slurmstepd.scope/job_N``, Kubernetes
   ``pod<uid>``);
3. a log file: a path pattern with a named group ``job_id``.

Every root path is an argument so tests point it at fixture trees. Job ids are validated against
one safe character set (:func:`validate_job_id`) wherever they enter, so that no id read from a
file, a process or a request can carry PromQL or query syntax.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobsight.errors import InvalidInput

DEFAULT_JOB_MAP_DIR = Path("/run/jobsight/jobs")
DEFAULT_JOB_ENV_VARS: tuple[str, ...] = ("JOBSIGHT_JOB_ID", "SLURM_JOB_ID")

# Letters, digits and ._:@- ; starts with a letter or digit; at most 128 characters. Slurm ids
# (``4711``, ``4711_3`` for arrays, ``4711+1`` is not used in cgroups), Kubernetes UIDs and
# names, and most schedulers' ids fit; quotes, braces, spaces, ``=~`` and backslashes do not.
JOB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"
_JOB_ID_RE = re.compile(rf"^{JOB_ID_PATTERN}$")

# Only regular files with these names are read from a job map directory, as dcgm-exporter does
# (``^\d+(\.\d+)?$``), plus jobstats' UUID-named files.
_MAP_NAME_RE = re.compile(r"^(?:\d+(?:\.\d+)?|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+)$")

# How much of a map file or /proc/<pid>/environ is read: both are tiny; a bound keeps a hostile
# or corrupt file from costing memory.
_MAX_MAP_FILE_BYTES = 4096
_MAX_ENVIRON_BYTES = 256 * 1024

_SLURM_CGROUP_V1 = re.compile(r"/slurm(?:_[^/]*)?/uid_\d+/job_(?P<job_id>\d+)(?:/|$)")
_SLURM_CGROUP_V2 = re.compile(r"slurmstepd\.scope/job_(?P<job_id>\d+)(?:/|$)")
# cgroupfs driver: /kubepods/burstable/pod<uid>/…; systemd driver: kubepods-burstable-pod<uid
# with underscores>.slice. Both normalised to the dashed UID Kubernetes reports.
_K8S_POD_CGROUP = re.compile(
    r"pod(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)

DEFAULT_LOG_PATH_PATTERNS: tuple[str, ...] = (
    r"slurm-(?P<job_id>\d+(?:_\d+)?)\.out$",
    r"/var/log/pods/[^/_]+_[^/_]+_(?P<job_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/",
)


def is_valid_job_id(value: str) -> bool:
    """True when ``value`` is in the safe job-id character set and length."""
    return bool(_JOB_ID_RE.match(value))


def validate_job_id(value: str) -> str:
    """Return ``value`` unchanged if it is a safe job id, else raise :class:`InvalidInput`."""
    if not is_valid_job_id(value):
        shown = value if len(value) <= 64 else value[:61] + "..."
        raise InvalidInput(
            f"invalid job id {shown!r}: use 1-128 letters, digits or ._:@- starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class JobRef:
    """A job id and where it was learnt (``map:<file>``, ``env:<VAR>``, ``cgroup:slurm``, …)."""

    job_id: str
    source: str


@dataclass(frozen=True)
class JobMapSnapshot:
    """One read of a job map directory: key (index, ``index.gi``, UUID) → job id, plus the files
    that could not be used and why."""

    by_key: dict[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def job_for_gpu(self, index: int | str, uuid: str | None = None) -> JobRef | None:
        """The job holding GPU ``index`` (or the GPU with ``uuid``); UUID files win over index files
        because an index can be renumbered (the ordinal/minor caveat jobstats documents)."""
        for key in (uuid, str(index)):
            if key and key in self.by_key:
                return JobRef(self.by_key[key], f"map:{key}")
        return None


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
        by_key: dict[str, str] = {}
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
            job_id = _first_token(raw)
            if job_id is None:
                continue  # an empty file means "no job": the epilog truncated rather than removed it
            if not is_valid_job_id(job_id):
                errors.append(f"{entry.path}: invalid job id {job_id[:64]!r}")
                continue
            by_key[entry.name] = job_id
        return JobMapSnapshot(by_key=by_key, errors=tuple(errors))


def _first_token(raw: bytes) -> str | None:
    text = raw.decode("utf-8", errors="replace")
    for line in text.splitlines():
        tokens = line.split()
        if tokens:
            return tokens[0]
    return None


def job_from_cgroup(cgroup_text: str) -> JobRef | None:
    """Find a job in the text of ``/proc/<pid>/cgroup`` (v1: many ``id:controllers:path`` lines;
    v2: one ``0::path`` line). Slurm paths win over a Kubernetes pod UID."""
    paths = [line.split(":", 2)[2] for line in cgroup_text.splitlines() if line.count(":") >= 2]
    for path in paths:
        for regex, source in ((_SLURM_CGROUP_V1, "cgroup:slurm"), (_SLURM_CGROUP_V2, "cgroup:slurm")):
            match = regex.search(path)
            if match:
                return JobRef(match.group("job_id"), source)
    for path in paths:
        match = _K8S_POD_CGROUP.search(path)
        if match:
            return JobRef(match.group("uid").replace("_", "-"), "cgroup:kubernetes")
    return None


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


class ProcessJobResolver:
    """Maps PIDs to jobs through ``<proc_root>/<pid>/environ`` and ``<proc_root>/<pid>/cgroup``.

    The environment is read first: it is what a launcher sets on purpose (``JOBSIGHT_JOB_ID``) and
    children inherit it. ``environ`` is readable only by the process owner or root, so the
    world-readable cgroup path is the fallback. Results are cached per (pid, start time) because a
    scrape may ask about the same long-lived training processes every few seconds, and a PID reused
    by a new process has a new start time.
    """

    def __init__(
        self,
        proc_root: Path | str = "/proc",
        env_vars: Sequence[str] = DEFAULT_JOB_ENV_VARS,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.env_vars = tuple(env_vars)
        self._cache: dict[int, tuple[str, JobRef | None]] = {}

    def job_of(self, pid: int) -> JobRef | None:
        """The job of ``pid``, or None when it has none or has exited."""
        base = self.proc_root / str(pid)
        start = _start_time(base)
        if start is None:
            self._cache.pop(pid, None)
            return None
        cached = self._cache.get(pid)
        if cached is not None and cached[0] == start:
            return cached[1]
        ref = self._resolve(base)
        self._cache[pid] = (start, ref)
        return ref

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
            with open(base / "environ", "rb") as fh:
                ref = job_from_environ(fh.read(_MAX_ENVIRON_BYTES), self.env_vars)
            if ref is not None:
                return ref
        except OSError:
            pass  # not ours to read (another user) or gone: the cgroup path may still tell
        try:
            return job_from_cgroup((base / "cgroup").read_text(errors="replace"))
        except OSError:
            return None


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


class PathJobMatcher:
    """Finds a job id in a log file's path with regexes holding a named group ``job_id``."""

    def __init__(self, patterns: Sequence[str] = DEFAULT_LOG_PATH_PATTERNS) -> None:
        compiled: list[re.Pattern[str]] = []
        for pattern in patterns:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise InvalidInput(f"job_id pattern {pattern!r} is not a valid regex: {exc}") from exc
            if "job_id" not in regex.groupindex:
                raise InvalidInput(f"job_id pattern {pattern!r} has no named group (?P<job_id>...)")
            compiled.append(regex)
        self.patterns = tuple(compiled)

    def job_of(self, path: str) -> JobRef | None:
        for regex in self.patterns:
            match = regex.search(path)
            if match:
                value = match.group("job_id")
                if value and is_valid_job_id(value):
                    return JobRef(value, "path")
        return None
