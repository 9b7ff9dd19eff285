"""``jobsight slurm hook``: one command for all four Slurm hooks, told apart by ``SLURM_SCRIPT_CONTEXT``.

- ``prolog_slurmd`` / ``epilog_slurmd`` (on each node): add the job to / take it out of the job map
  of the job's GPUs, and keep the array alias (``<array job>_<task>`` → job id) the log collector
  reads for ``slurm-%A_%a.out`` files.
- ``prolog_slurmctld`` / ``epilog_slurmctld`` (on the controller): spool the job's start / end and
  hand delivery to a detached ``flush`` process, so that the API's speed or death never delays a
  job (a PrologSlurmctld holds the job's start until it exits).

The hook never hurts a job: whatever happens (bad config, API down, disk full, a bug) it writes one
line to stderr and syslog and exits 0, within ``timeout_seconds``: a failing Prolog would drain the
node and hold the job.
"""

from __future__ import annotations

import os
import signal
import sys
import syslog
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from jobsight.errors import JobsightError
from schedulers.slurm import gres
from schedulers.slurm.config import SlurmHookConfig, config_path, load_config
from schedulers.slurm.environment import SlurmJob, from_environ
from schedulers.slurm.jobmap import JobMapWriter
from schedulers.slurm.spool import Spool

ALIAS_DIR = "aliases"  # inside the job map directory; the map readers skip directories
ALIAS_KEEP_SECONDS = 7 * 24 * 3600

# Starts the delivery process: its command, and the delivery lock it inherits (Spool.claim_delivery).
Spawn = Callable[[Sequence[str], int], None]


class HookTimeout(Exception):
    pass


def _now_iso(clock: Callable[[], float]) -> str:
    from datetime import UTC, datetime  # the controller hooks only: 1.3 ms of a node hook's start

    return datetime.fromtimestamp(clock(), UTC).isoformat()


def tenant_for(job: SlurmJob, config: SlurmHookConfig) -> str | None:
    if config.tenant:
        return config.tenant
    if job.account:
        return config.tenant_map.get(job.account, job.account)
    return None


def spawn_detached(argv: Sequence[str], lock_fd: int) -> None:
    """Start ``argv`` in its own session with no stdio but ``lock_fd``, so it outlives the hook,
    no Slurm process-group kill reaches it, and the delivery lock is never let go in between."""
    import subprocess  # only the controller hooks start a process: not imported on the nodes

    subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True, pass_fds=(lock_fd,),
    )


FLUSH_DELAY_SECONDS = 1.0


def flush_command(config_file: Path, wait_seconds: float, lock_fd: int) -> list[str]:
    """``flush`` as the hook starts it: Python isolated and without site, as the wrapper starts the
    hook (slurmctld's environment and working directory are no place to import from, and its
    start-up is CPU the job launch it runs beside needs)."""
    from schedulers.slurm.wrapper import fast_python

    return [*fast_python("schedulers.slurm.__main__:main"), "flush", "--config", str(config_file),
            "--wait", str(wait_seconds), "--delay", str(FLUSH_DELAY_SECONDS), "--lock-fd", str(lock_fd)]


class Hook:
    def __init__(self, config: SlurmHookConfig, config_file: Path, environ: Mapping[str, str],
                 clock: Callable[[], float] = time.time, spawn: Spawn = spawn_detached,
                 flush_wait_seconds: float = 300.0) -> None:
        self.config = config
        self.config_file = config_file
        self.environ = environ
        self.clock = clock
        self.spawn = spawn
        self.flush_wait_seconds = flush_wait_seconds

    def run(self) -> str:
        job = from_environ(self.environ)
        if job.node_side:
            return self._node(job)
        return self._controller(job)

    # -- node side -------------------------------------------------------------------------
    def _node_name(self, job: SlurmJob) -> str:
        return self.config.hostname or job.node_name or os.uname().nodename.split(".")[0]

    def _node(self, job: SlurmJob) -> str:
        node = self._node_name(job)
        map_dir = self.config.node_path(self.config.job_map_dir, node)
        writer = JobMapWriter(map_dir)
        alias_dir = (self.config.node_path(self.config.alias_dir, node) if self.config.alias_dir
                     else map_dir / ALIAS_DIR)
        if job.context == "prolog_slurmd":
            keys = self._gpu_keys(job, node)
            writer.add(job.job_id, keys)
            alias = self._alias_path(alias_dir, job)
            if alias is not None:
                alias.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                tmp = alias.with_name(f".{alias.name}.{os.getpid()}")
                tmp.write_text(job.job_id + "\n", encoding="utf-8")
                os.replace(tmp, alias)
                _prune(alias_dir, self.clock() - ALIAS_KEEP_SECONDS)
            return f"job map: job {job.job_id} on GPUs {','.join(keys) or 'none'} of {node}"
        # The alias stays after the job: the collector may meet the job's last output file only
        # after the epilog (it globs every few seconds). Old aliases are pruned by later prologs.
        held = writer.remove(job.job_id)
        return f"job map: job {job.job_id} released GPUs {','.join(held) or 'none'} of {node}"

    def _alias_path(self, alias_dir: Path, job: SlurmJob) -> Path | None:
        if not job.array_job_id and job.named_by_array_pair:
            job = self._with_array_ids(job)
        if job.array_job_id and job.array_task_id:
            return alias_dir / f"{job.array_job_id}_{job.array_task_id}"
        if job.het_job_id and job.het_job_offset:
            return alias_dir / f"{job.het_job_id}+{job.het_job_offset}"
        return None

    def _with_array_ids(self, job: SlurmJob) -> SlurmJob:
        """slurmd's Prolog/Epilog get no SLURM_ARRAY_* (22.05); for a job whose output names
        use the array pair, ask scontrol (one RPC, only for such jobs)."""
        from schedulers.slurm.state import Scontrol  # subprocess and all: only for such jobs

        fields = Scontrol(self.config.scontrol, job.slurm_conf or (
            str(self.config.slurm_conf) if self.config.slurm_conf else None),
            timeout=self.config.timeout_seconds).show_job(job.job_id)
        array, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        if array and task and array.isdigit() and task.isdigit():
            return job._replace(array_job_id=array, array_task_id=task)
        return job

    def _gpu_keys(self, job: SlurmJob, node: str) -> list[str]:
        if not job.gpu_indices:
            return []
        conf = self.config.gres_conf
        if conf is None and job.slurm_conf:
            conf = Path(job.slurm_conf).parent / "gres.conf"
        files = gres.gpu_files(gres.read_gres_conf(conf), node) if conf else []
        uuids = gres.uuids_by_minor(self.config.node_path(self.config.nvidia_procfs, node))
        return gres.map_keys(job.gpu_indices, files, uuids)

    # -- controller side -------------------------------------------------------------------
    def _controller(self, job: SlurmJob) -> str:
        spool = Spool(self.config.node_path(self.config.spool_dir, "slurmctld"))
        body: dict[str, Any] = {
            "name": job.name, "user": job.user, "tenant": tenant_for(job, self.config),
            "scheduler": "slurm", "nodes": list(job.nodes), "labels": job.labels,
            "status": "running",
        }
        body = {k: v for k, v in body.items() if v is not None}
        if job.context == "prolog_slurmctld":
            body["started_at"] = _now_iso(self.clock)
            path = spool.put(job.job_id, "running", body, resolve={"gpus": True})
        else:
            body["ended_at"] = _now_iso(self.clock)
            resolve = {"final": True, "gpus": True, "exit_code": job.exit_code,
                       "exit_signal": job.exit_signal, "since": self.clock()}
            path = spool.put(job.job_id, "ended", body, resolve=resolve)
        if self.config.api_url:
            lock = spool.claim_delivery()
            if lock is not None:  # no delivery process runs: start one and hand it the lock
                try:
                    self.spawn(flush_command(self.config_file, self.flush_wait_seconds, lock), lock)
                finally:
                    os.close(lock)
        return f"spooled {path.name}"


def _prune(directory: Path, older_than: float) -> None:
    """Remove aliases last written before ``older_than`` (Slurm reuses no job id, but the
    directory must not grow for ever)."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < older_than:
                        os.unlink(entry.path)
                except OSError:
                    continue
    except OSError:
        return


def _say(line: str, stderr: TextIO) -> None:
    # One line, whatever the error's own formatting: slurmd logs and syslog are read line by line.
    line = " ".join(line.split())
    print(f"jobsight slurm hook: {line}", file=stderr, flush=True)
    try:
        syslog.openlog("jobsight-slurm", syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_ERR, line)
    except OSError:
        pass


def run_hook(environ: Mapping[str, str], stderr: TextIO = sys.stderr,
             spawn: Spawn = spawn_detached) -> int:
    """Run as the hook Slurm invoked; always returns 0 (see the module docstring)."""
    context = environ.get("SLURM_SCRIPT_CONTEXT", "?")
    job_id = environ.get("SLURM_JOB_ID", "?")
    path = config_path(environ)
    timeout = 5.0

    def _expired(signum: int, frame: FrameType | None) -> None:
        raise HookTimeout(f"gave up after {timeout:g} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        config = load_config(path)
        timeout = config.timeout_seconds
        signal.setitimer(signal.ITIMER_REAL, timeout)
        Hook(config, path, environ, spawn=spawn).run()
    except HookTimeout as exc:
        _say(f"{context} job {job_id}: {exc}; the job goes on", stderr)
    except JobsightError as exc:
        _say(f"{context} job {job_id}: {exc}; the job goes on", stderr)
    except Exception as exc:  # noqa: BLE001 - a hook must never fail a job, whatever broke
        _say(f"{context} job {job_id}: unexpected {type(exc).__name__}: {exc}; the job goes on", stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return 0


def main() -> int:
    """What the wrapper of ``jobsight slurm wrapper`` runs."""
    return run_hook(os.environ)
