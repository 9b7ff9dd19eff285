"""A finished job's final state, from ``scontrol -o show job``.

In EpilogSlurmctld the job still reads ``JobState=COMPLETING`` (slurmctld clears the flag only
after that very epilog has ended) and ``SLURM_JOB_EXIT_CODE2`` says ``0:0`` for a cancelled job, so
neither the hook's environment nor an scontrol call from inside the hook can tell cancelled from
succeeded. The hook therefore spools the end of the job with its state left open, and the
delivery (a detached ``jobsight slurm flush``) asks scontrol once the job has left COMPLETING.
If scontrol no longer knows the job (purged after ``MinJobAge``) or it stays COMPLETING past a
bound, the state is inferred from what the hook saw: exit code, signal and reason.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from jobsight.errors import DependencyUnavailable

# Slurm job states (slurm.h, job_state_string) → jobsight's statuses, with a reason where the
# state itself is the reason a researcher needs.
_FINAL: dict[str, tuple[str, str | None]] = {
    "COMPLETED": ("succeeded", None),
    "FAILED": ("failed", None),
    "CANCELLED": ("cancelled", None),
    "TIMEOUT": ("failed", "TIMEOUT"),
    "NODE_FAIL": ("failed", "NODE_FAIL"),
    "OUT_OF_MEMORY": ("failed", "OUT_OF_MEMORY"),
    "BOOT_FAIL": ("failed", "BOOT_FAIL"),
    "DEADLINE": ("failed", "DEADLINE"),
    "PREEMPTED": ("cancelled", "PREEMPTED"),
}
_PAIR = re.compile(r"(\S+?)=(\S*)")


@dataclass(frozen=True)
class FinalState:
    status: str
    exit_code: int | None
    reason: str | None
    started_at: str | None
    ended_at: str | None


class StillCompleting(Exception):
    """scontrol still reports the job COMPLETING: ask again later."""


class UnknownJob(Exception):
    """scontrol no longer knows the job."""


def parse_show_job(text: str) -> dict[str, str]:
    return dict(_PAIR.findall(text.strip().splitlines()[0])) if text.strip() else {}


def _iso(value: str | None) -> str | None:
    """scontrol prints local time without a zone (``2026-11-29T13:29:37``)."""
    if not value or value in ("Unknown", "None", "N/A"):
        return None
    try:
        local = datetime.fromisoformat(value).astimezone()
    except ValueError:
        return None
    return local.astimezone(UTC).isoformat()


def _exit_pair(value: str | None) -> tuple[int | None, int | None]:
    if not value or ":" not in value:
        return None, None
    code, _, signal = value.partition(":")
    return (int(code) if code.isdigit() else None), (int(signal) if signal.isdigit() else None)


def final_from_fields(fields: Mapping[str, str]) -> FinalState:
    state = fields.get("JobState", "")
    if state not in _FINAL:
        raise StillCompleting(f"job state is {state or 'unknown'}")
    status, reason = _FINAL[state]
    code, signal = _exit_pair(fields.get("ExitCode"))
    slurm_reason = fields.get("Reason")
    if reason is None and status == "failed" and slurm_reason not in (None, "", "None"):
        reason = slurm_reason
    exit_code = code
    if status == "failed" and not code and signal:
        exit_code = 128 + signal  # the shell's convention for a death by signal
    return FinalState(status, exit_code, reason, _iso(fields.get("StartTime")), _iso(fields.get("EndTime")))


def inferred(exit_code: int | None, exit_signal: int | None) -> FinalState:
    """The best guess from the hook's own environment, when scontrol cannot answer."""
    if exit_code:
        return FinalState("failed", exit_code, None, None, None)
    if exit_signal:
        return FinalState("failed", 128 + exit_signal, f"signal {exit_signal}", None, None)
    return FinalState("succeeded", 0, None, None, None)


class Scontrol:
    def __init__(self, command: str = "scontrol", slurm_conf: str | None = None,
                 timeout: float = 5.0) -> None:
        self.command = command
        self.slurm_conf = slurm_conf
        self.timeout = timeout

    def show_job(self, job_id: str) -> dict[str, str]:
        return parse_show_job(self._run(["-o", "show", "job", job_id], job_id))

    def show_job_detail(self, job_id: str) -> str:
        """``scontrol -d -o show job``: the raw line, with per-node GRES indices."""
        return self._run(["-d", "-o", "show", "job", job_id], job_id)

    def _run(self, args: list[str], job_id: str) -> str:
        env = dict(os.environ)
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        try:
            done = subprocess.run(
                [self.command, *args], env=env, capture_output=True,
                text=True, timeout=self.timeout, check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DependencyUnavailable("scontrol", str(exc)) from exc
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                raise UnknownJob(job_id)
            raise DependencyUnavailable("scontrol", done.stderr.strip() or f"exit {done.returncode}")
        return done.stdout

    def final_state(self, job_id: str) -> FinalState:
        return final_from_fields(self.show_job(job_id))
