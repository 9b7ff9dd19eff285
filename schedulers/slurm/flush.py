"""Delivers the spool: completes each record from scontrol (final state, GPUs) and PUTs it.

``jobsight slurm flush`` runs it once (a systemd timer or cron runs it every minute as a safety
net); the controller hooks start it detached with ``--wait``, so it keeps trying until the queue is
empty or the wait is over: that is what brings a job's end to the API seconds after slurmctld lets
go of it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from jobsight.errors import DependencyUnavailable
from schedulers.slurm import hostlist
from schedulers.slurm.client import JobsClient
from schedulers.slurm.config import SlurmHookConfig
from schedulers.slurm.spool import DeliveryReport, JobNotReady, Spool
from schedulers.slurm.state import Scontrol, StillCompleting, UnknownJob, inferred

log = logging.getLogger(__name__)

# How long a job may read COMPLETING (or scontrol be unreachable) before its end is delivered
# with the state inferred from the hook's environment. Slurm's own epilogs normally end in seconds.
FINAL_STATE_GRACE_SECONDS = 600.0

_NODE_GRES = re.compile(r"Nodes=(?P<nodes>\S+) CPU_IDs=\S+ Mem=\S+ GRES=(?P<gres>\S*)")
_IDX = re.compile(r"gpu(?::[^:(]+)?:\d+\(IDX:(?P<idx>[0-9,-]+)\)")


def gpus_from_detail(raw: str) -> list[dict[str, Any]]:
    """``scontrol -d show job``'s per-node ``GRES=gpu:2(IDX:0-1)`` → ``[{host, gpu}]`` (Slurm's
    per-node GPU positions; the node's job map has the exact GPU)."""
    out: list[dict[str, Any]] = []
    for match in _NODE_GRES.finditer(raw):
        idx = _IDX.search(match["gres"])
        if not idx:
            continue
        indices: list[int] = []
        for part in idx["idx"].split(","):
            lo, _, hi = part.partition("-")
            indices.extend(range(int(lo), int(hi or lo) + 1))
        for node in hostlist.expand(match["nodes"]):
            out.extend({"host": node, "gpu": i} for i in indices)
    return out


class Deliverer:
    def __init__(self, client: JobsClient, scontrol: Scontrol,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.scontrol = scontrol
        self.clock = clock

    def __call__(self, record: dict[str, Any]) -> None:
        job_id = str(record["job_id"])
        body = dict(record["body"])
        resolve = dict(record.get("resolve") or {})
        if resolve.get("gpus"):
            try:
                raw = self.scontrol.show_job_detail(job_id)
                gpus = gpus_from_detail(raw)
                if gpus:
                    body["gpus"] = gpus
            except (DependencyUnavailable, UnknownJob) as exc:
                log.info("job %s: no GPU detail from scontrol (%s)", job_id, exc)
        if resolve.get("final"):
            body.update(self._final(job_id, resolve))
        self.client.put_job(job_id, body)

    def _final(self, job_id: str, resolve: dict[str, Any]) -> dict[str, Any]:
        age = self.clock() - float(resolve.get("since") or 0)
        try:
            state = self.scontrol.final_state(job_id)
        except (StillCompleting, DependencyUnavailable) as exc:
            if age < FINAL_STATE_GRACE_SECONDS:
                raise JobNotReady(f"job {job_id}: {exc}") from exc
            state = inferred(resolve.get("exit_code"), resolve.get("exit_signal"))
        except UnknownJob:
            state = inferred(resolve.get("exit_code"), resolve.get("exit_signal"))
        out: dict[str, Any] = {"status": state.status, "exit_code": state.exit_code}
        if state.reason:
            out["reason"] = state.reason
        if state.started_at:
            out["started_at"] = state.started_at
        if state.ended_at:
            out["ended_at"] = state.ended_at
        return out


def flush(config: SlurmHookConfig, wait_seconds: float = 0.0,
          sleep: Callable[[float], None] = time.sleep, lock_fd: int | None = None) -> DeliveryReport:
    """Deliver until the spool is empty, or ``wait_seconds`` have passed (one round when 0).

    One waiting delivery process per spool (:meth:`Spool.claim_delivery`): when another one runs,
    this one hands over at once (``handed_over``). ``lock_fd`` is the delivery lock a hook claimed and
    handed to this process; used only if it is this spool's. A delivery started by
    PrologSlurmctld waits first (``flush --delay``, in the command, before its imports): it would
    otherwise ask scontrol while slurmctld is still launching the very job, and hold up its start."""
    spool = Spool(config.node_path(config.spool_dir, "slurmctld"))
    if not config.api_url:
        return DeliveryReport(pending=len(spool.pending()), error="no api_url configured")
    client = JobsClient(config.api_url, config.read_token(), timeout=config.timeout_seconds)
    scontrol = Scontrol(config.scontrol, str(config.slurm_conf) if config.slurm_conf else None,
                        timeout=config.timeout_seconds)
    deliver = Deliverer(client, scontrol)
    if wait_seconds <= 0 and lock_fd is None:
        # One round (a person, or the timer): beside a waiting delivery process, under the same
        # per-round lock, so nothing is sent twice.
        return spool.deliver(deliver, deadline=time.monotonic() + config.timeout_seconds * 4)
    end = time.monotonic() + wait_seconds
    held = lock_fd if lock_fd is not None and spool.is_delivery_lock(lock_fd) else None
    while True:
        with spool.sole_deliverer(held) as sole:
            held = None
            if not sole:
                return DeliveryReport(pending=len(spool.pending()), handed_over=True,
                                      error="another delivery process is running; it takes these")
            report = _deliver_until(spool, deliver, end, config.timeout_seconds, sleep)
        # Let go, then look again: a hook that spooled while this process held the lock started
        # no delivery of its own.
        if report.pending or not spool.pending() or time.monotonic() >= end:
            return report


def _deliver_until(spool: Spool, deliver: Deliverer, end: float, timeout: float,
                   sleep: Callable[[float], None]) -> DeliveryReport:
    pause = 0.2
    while True:
        report = spool.deliver(deliver, deadline=max(end, time.monotonic() + timeout * 4))
        if report.pending == 0 or time.monotonic() >= end:
            return report
        # Rounds back off to one every 5 s (a job still COMPLETING), but a record a hook spooled
        # meanwhile is taken within 0.2 s.
        seen = set(spool.pending())
        waited = 0.0
        while waited < pause and time.monotonic() < end:
            step = min(0.2, pause - waited, max(0.0, end - time.monotonic()))
            sleep(step)
            waited += step
            if not set(spool.pending()) <= seen:
                break
        pause = min(pause * 2, 5.0)
