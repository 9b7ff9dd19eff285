"""Why did a job fail? Rank the likely causes from findings gathered out of alerts, log events and
Prometheus. Pure: findings in, :class:`~api.models.Diagnosis` out.

The rule:
1. A *fatal event* is something that stops a rank or a GPU on its own: a hardware fault (an XID the
   catalog classes as hardware or driver, a GPU lost or fallen off the bus, an uncorrectable GPU ECC
   error, an NVLink/NVSwitch or InfiniBand fault), an out-of-memory (CUDA, container, a kernel OOM
   kill *of this job's process*), an application fault (illegal access, launch failure, NaN loss, an
   application-class XID such as 13/31) or a rank's process exiting before the others gave up.
   What an XID code means comes from the one XID table, :mod:`jobsight.xid` (NVIDIA's catalog).
2. NCCL timeouts and errors are *symptoms* of any fatal event before them: a collective hangs
   because one rank did not enter it, and then every other rank's watchdog times out
   (PyTorch ProcessGroupNCCL: "Watchdog caught collective operation timeout ... ran for N
   milliseconds"). The hang began at the timeout's time minus that N. NCCL is named as the cause
   only when nothing else is found; either way the ranks *missing* from the timeout set, or whose
   SeqNum / last completed NCCL work lags, are named: those are the ones that hung or died.
3. Causes are ranked by proximity to the incident: the hang's start when there was a hang, else the
   failure. Fatal events shortly before it (``RECENT_SECONDS``) come first, earliest first (the
   start of the chain); then events after it (consequences, usually); then older ones, nearest
   first. An XID 92 three days earlier does not outrank an XID 79 a minute before.
4. Information is never a cause: informational XIDs (43, 45, 63, 92, ...), host EDAC errors (the
   CPU's DIMMs, not a GPU), a kernel OOM kill not shown to hit this job's process.
5. A generic child failure / non-zero exit code comes last.
6. The job's own steps (``jobsight.training``, a ``job_hung`` finding from the summary) say when
   the ranks stopped and which stopped first ("ranks 3, 7 stopped stepping at … while the others
   waited in sync"): the cause when no fatal event came before, else a symptom of it. They also
   date the hang when no NCCL watchdog line does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from api.models import Cause, Diagnosis, Evidence
from jobsight import xid as xid_table

HARDWARE_KINDS = frozenset(
    {
        "gpu_xid",
        "gpu_fallen_off_bus",
        "gpu_lost",
        "ecc_error",
        "ib_link_down",
        "ib_port_error",
        "nvlink_error",
        "nvswitch_sxid",
    }
)
NCCL_KINDS = frozenset({"nccl_timeout", "nccl_error", "nccl_watchdog", "nccl_heartbeat"})
OOM_KINDS = frozenset({"cuda_oom", "oom_killed", "kernel_oom_kill", "slurm_oom"})
APP_KINDS = frozenset({"cuda_illegal_access", "cuda_launch_failure", "nan_loss", "checkpoint_error"})
GENERIC_KINDS = frozenset({"child_failed", "exit_code"})
# Never causes: the host's own memory (EDAC), host OOM alerts without a victim.
INFO_KINDS = frozenset({"host_edac", "host_oom_kill"})

# A kernel line can be logged a little after the process saw the failure; count faults up to this
# long after the recorded failure (or hang start) as "at" it.
FAILURE_GRACE_SECONDS = 120.0
# Fatal events up to this long before the incident belong to it; older ones rank after.
RECENT_SECONDS = 900.0

_TITLES = {
    "cuda_oom": "CUDA out of memory",
    "oom_killed": "container killed: out of memory",
    "kernel_oom_kill": "host out of memory: the kernel OOM killer killed the job's process",
    "slurm_oom": "Slurm step killed: out of memory (cgroup OOM)",
    "cuda_illegal_access": "CUDA illegal memory access",
    "cuda_launch_failure": "CUDA unspecified launch failure",
    "nan_loss": "loss became NaN/Inf",
    "process_exit": "a rank's process exited before the others",
}


@dataclass(frozen=True)
class Finding:
    time: float | None
    source: Literal["alert", "log", "prometheus", "job"]
    kind: str
    detail: str
    host: str | None = None
    gpu: int | None = None
    rank: int | None = None
    xid: int | None = None
    pci: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=UTC) if ts is not None else None


def _stamp(ts: float | None) -> str:
    return _dt(ts).strftime("%Y-%m-%d %H:%M:%S UTC") if ts is not None else "unknown time"  # type: ignore[union-attr]


def _evidence(f: Finding) -> Evidence:
    return Evidence(
        time=_dt(f.time), source=f.source, kind=f.kind, host=f.host, gpu=f.gpu, rank=f.rank, detail=f.detail
    )


def _order(f: Finding) -> tuple[float, str]:
    return (f.time if f.time is not None else float("inf"), f.source)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def xid_class(f: Finding) -> str:
    """The table's class of an XID finding (the line refines 154), ``unclassified`` if unknown."""
    return xid_table.class_of(f.xid, f.detail) if f.xid is not None else "unclassified"


def _is_hardware(f: Finding) -> bool:
    if f.kind not in HARDWARE_KINDS:
        return False
    if f.kind == "gpu_xid":
        return xid_class(f) in ("hardware", "driver", "unclassified")
    if f.kind == "nvswitch_sxid":
        # A non-fatal SXid is corrected by the switch; only a fatal one stops NVLink traffic.
        return f.extra.get("fatal", "Fatal") == "Fatal"
    return True


def _is_application_xid(f: Finding) -> bool:
    return f.kind == "gpu_xid" and xid_class(f) == "application"


def _attributed(f: Finding) -> bool:
    """A kernel OOM kill counts against the job only when its victim is the job's (the collector
    stamped the record with the job from the victim's pid/cgroup); otherwise another tenant's process
    or a system daemon may have been killed."""
    if f.kind != "kernel_oom_kill":
        return True
    return bool(f.extra.get("job_id")) or f.extra.get("attributed") == "true"


def _fill_gpus(findings: list[Finding]) -> list[Finding]:
    """A kernel log line names a PCI address, not a GPU index; when exactly one GPU on that host
    shows the same XID (or is lost) in another source, the finding takes that GPU."""
    known: dict[tuple[str | None, int | None], set[int]] = defaultdict(set)
    for f in findings:
        if f.gpu is not None and f.kind in HARDWARE_KINDS:
            known[(f.host, f.xid)].add(f.gpu)
            known[(f.host, None)].add(f.gpu)
    out = []
    for f in findings:
        if f.gpu is None and f.kind in HARDWARE_KINDS - {"ib_link_down", "ib_port_error", "nvswitch_sxid"}:
            candidates = known.get((f.host, f.xid)) or known.get((f.host, None))
            if candidates and len(candidates) == 1:
                f = replace(f, gpu=next(iter(candidates)))
        out.append(f)
    return out


def _where(f: Finding) -> str:
    return f"{f.host or 'unknown host'}" + (f" GPU {f.gpu}" if f.gpu is not None else "")


def _hardware_title(group: Sequence[Finding]) -> tuple[str, str]:
    first = group[0]
    where = _where(first)
    if first.kind in ("ib_link_down", "ib_port_error"):
        port = first.extra.get("device", "")
        what = "InfiniBand link down" if first.kind == "ib_link_down" else "InfiniBand port/cable error"
        return first.kind, f"{what} on {where}" + (f" ({port})" if port else "")
    if first.kind == "nvswitch_sxid":
        sxid = first.extra.get("sxid", "")
        return "nvswitch_sxid", f"NVSwitch SXid {sxid} on {first.host or 'unknown host'}".replace("  ", " ")
    xid = next((f.xid for f in group if f.xid is not None), None)
    if xid is not None:
        entry = xid_table.lookup(xid)
        meaning = entry.description if entry else "not in jobsight's XID table"
        title = f"XID {xid} on {where} ({meaning})"
        if xid == 154:
            action = next(
                (f.extra.get("recovery_action") for f in group if f.extra.get("recovery_action")), None
            )
            if action:
                title = f"XID 154 on {where} (GPU recovery action: {action})"
        return "gpu_xid", title
    kinds = {f.kind for f in group}
    if "gpu_fallen_off_bus" in kinds:
        return "gpu_lost", f"GPU fallen off the bus on {where}"
    if "gpu_lost" in kinds:
        return "gpu_lost", f"GPU lost on {where}"
    if "nvlink_error" in kinds:
        return "nvlink_error", f"uncorrectable NVLink error on {where}"
    return "ecc_error", f"uncorrectable GPU ECC error on {where}"


def _action(group: Sequence[Finding]) -> str:
    xid = next((f.xid for f in group if f.xid is not None), None)
    entry = xid_table.lookup(xid) if xid is not None else None
    if entry is None:
        return ""
    return f"; NVIDIA catalog: {entry.immediate}. {entry.action}"


@dataclass
class _Candidate:
    time: float | None
    kind: str
    title: str
    host: str | None
    gpu: int | None
    findings: list[Finding]
    extra_explanation: str = ""


@dataclass
class _Hang:
    """What the NCCL watchdog lines say about a hang."""

    lead: Finding
    start: float | None
    timed_out: list[int]
    missing: list[int]
    lagging: list[int]
    seq: int | None

    def describe(self) -> str:
        parts = []
        if self.timed_out:
            parts.append(
                f"ranks {_ranges(self.timed_out)} timed out"
                + (f" in SeqNum {self.seq}" if self.seq is not None else "")
            )
        if self.missing:
            parts.append(
                f"rank{'s' if len(self.missing) > 1 else ''} {_ranges(self.missing)} "
                f"missing from the timeout set (never entered the collective: hung or dead)"
            )
        if self.lagging:
            parts.append(
                f"rank{'s' if len(self.lagging) > 1 else ''} {_ranges(self.lagging)} "
                f"behind the others (lower SeqNum / last completed NCCL work)"
            )
        if self.start is not None:
            parts.append(f"the hang began at {_stamp(self.start)}")
        return "; ".join(parts)


def _ranges(ranks: Sequence[int]) -> str:
    """``0-4, 6, 7``: compact, for jobs with thousands of ranks."""
    out: list[str] = []
    values = sorted(set(ranks))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(f"{values[i]}-{values[j]}" if j - i >= 2 else ", ".join(map(str, values[i : j + 1])))
        i = j + 1
    return ", ".join(out)


def _hang(nccl: list[Finding], all_ranks: set[int], world_size: int | None) -> _Hang | None:
    if not nccl:
        return None
    timeouts = [f for f in nccl if f.kind == "nccl_timeout"]
    lead = (timeouts or nccl)[0]
    starts = [
        f.time - ran / 1000.0
        for f in timeouts
        if f.time is not None and (ran := _int(f.extra.get("ran_ms"))) is not None
    ]
    start = min(starts) if starts else (lead.time if timeouts else None)
    timed_out = sorted({f.rank for f in timeouts if f.rank is not None})
    reporting = {f.rank for f in nccl if f.rank is not None}
    seqs = {f.rank: s for f in timeouts if f.rank is not None and (s := _int(f.extra.get("seq"))) is not None}
    completed = {
        f.rank: c
        for f in nccl
        if f.rank is not None and (c := _int(f.extra.get("last_completed"))) is not None
    }
    lagging: set[int] = set()
    if seqs and min(seqs.values()) < max(seqs.values()):
        lagging |= {r for r, s in seqs.items() if s < max(seqs.values())}
    if completed and min(completed.values()) < max(completed.values()):
        lagging |= {r for r, c in completed.items() if c < max(completed.values())}
    missing: list[int] = []
    if timeouts:
        size = world_size if world_size is not None else (max(all_ranks) + 1 if all_ranks else 0)
        missing = sorted(set(range(size)) - reporting)
    seq = max(seqs.values()) if seqs else None
    return _Hang(
        lead=lead, start=start, timed_out=timed_out, missing=missing, lagging=sorted(lagging), seq=seq
    )


# What a scheduler writes into a job's failure reason when the job died for its memory limit:
# Kubernetes' container state reason (`OOMKilled`, schedulers/kubernetes) and Slurm's job state
# `OUT_OF_MEMORY` (schedulers/slurm/state.py). The scheduler saw the kill; that is evidence.
_REASON_OOM = (("oomkilled", "oom_killed"), ("out_of_memory", "slurm_oom"))


def findings_from_reason(reason: str | None, failed_at: float | None) -> list[Finding]:
    """A finding for a failure reason that names a cause (an out-of-memory kill)."""
    text = (reason or "").lower()
    for marker, kind in _REASON_OOM:
        if marker in text:
            return [Finding(time=failed_at, source="job", kind=kind, detail=reason or kind)]
    return []


def diagnose(
    findings: Iterable[Finding],
    *,
    started_at: float | None,
    failed_at: float | None,
    exit_code: int | None = None,
    reason: str | None = None,
    missing_sources: Sequence[str] = (),
    world_size: int | None = None,
) -> Diagnosis:
    """``world_size``: the job's number of ranks when known (else the highest rank seen + 1)."""
    horizon = (failed_at + FAILURE_GRACE_SECONDS) if failed_at is not None else float("inf")
    begin = started_at if started_at is not None else float("-inf")
    relevant = [
        f
        for f in _fill_gpus([*findings, *findings_from_reason(reason, failed_at)])
        if f.time is None or begin - FAILURE_GRACE_SECONDS <= f.time <= horizon
    ]
    relevant.sort(key=_order)
    symptoms: list[str] = []

    nccl = [f for f in relevant if f.kind in NCCL_KINDS]
    all_ranks = {f.rank for f in relevant if f.rank is not None}
    hang = _hang(nccl, all_ranks, world_size)
    nccl_time = hang.lead.time if hang is not None else None

    # Fatal events, as candidates. Hardware grouped per device (one XID seen in the kernel log, by
    # Prometheus and by an alert is one fault); OOM and application faults one per kind.
    candidates: list[_Candidate] = []
    groups: dict[tuple[str, str | None, int | str | None], list[Finding]] = defaultdict(list)
    for f in relevant:
        if _is_hardware(f):
            family = (
                "ib"
                if f.kind in ("ib_link_down", "ib_port_error")
                else ("nvswitch" if f.kind == "nvswitch_sxid" else "gpu")
            )
            # A GPU known only by its PCI address is still one device, not "any GPU of the host".
            device: int | str | None = (
                f.gpu if f.gpu is not None else (f.pci or "").lower().removeprefix("pci:") or None
            )
            if family == "ib":
                device = f.extra.get("device") or device
            groups[(family, f.host, device)].append(f)
    for group in groups.values():
        group.sort(key=_order)
        kind, title = _hardware_title(group)
        candidates.append(
            _Candidate(group[0].time, kind, title, group[0].host, group[0].gpu, group, _action(group))
        )

    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for f in relevant:
        if f.kind in OOM_KINDS | APP_KINDS and _attributed(f):
            by_kind[f.kind].append(f)
        elif f.kind == "kernel_oom_kill" or f.kind == "host_oom_kill":
            victim = f.extra.get("process") or "a process"
            pid = f" pid {f.extra['pid']}" if f.extra.get("pid") else ""
            symptoms.append(
                f"the kernel OOM killer ran on {f.host or 'a host of the job'} at {_stamp(f.time)} "
                f"({victim}{pid}), not shown to belong to this job"
            )
        elif _is_application_xid(f):
            by_kind[f"xid_{f.xid}"].append(f)
        elif f.kind == "child_failed" and nccl_time is not None and f.time is not None and f.time < nccl_time:
            # A rank's process died before the others' watchdogs gave up: it is what they waited for.
            by_kind["process_exit"].append(f)
    for kind, items in by_kind.items():
        first = items[0]
        rank = f" on rank {first.rank}" if first.rank is not None else ""
        host = f" ({first.host})" if first.host else ""
        if kind.startswith("xid_"):
            entry = xid_table.lookup(first.xid) if first.xid is not None else None
            process = first.extra.get("process")
            app_pid = first.extra.get("pid")
            who = f" in process {process}" + (f" (pid {app_pid})" if app_pid else "") if process else ""
            title = (
                f"XID {first.xid} on {_where(first)} ({entry.description if entry else 'application fault'})"
                f"{who}: an application fault"
            )
            candidates.append(
                _Candidate(
                    first.time,
                    "gpu_xid_application",
                    title,
                    first.host,
                    first.gpu,
                    items,
                    "; NVIDIA catalog: RESTART_APP: a bug in the job, not a GPU fault",
                )
            )
            continue
        if kind == "process_exit":
            code = first.extra.get("exit_code")
            failed = _int(first.extra.get("failed_rank"))
            rank = f" on rank {failed}" if failed is not None else rank
            signal = {"-9": " (SIGKILL: often the host OOM killer)", "-11": " (SIGSEGV)", "-6": " (SIGABRT)"}
            title = f"{_TITLES[kind]}{rank}{host}" + (
                f": exit code {code}{signal.get(code, '')}" if code else ""
            )
        else:
            title = f"{_TITLES[kind]}{rank}{host}"
        candidates.append(_Candidate(first.time, kind, title, first.host, first.gpu, items))

    stall = next((f for f in relevant if f.kind == "job_hung"), None)
    # Rank by proximity to the incident: the hang's start, else the failure.
    anchor = (
        hang.start if hang is not None and hang.start is not None
        else stall.time if stall is not None else failed_at
    )

    def bucket(c: _Candidate) -> tuple[int, float]:
        if c.time is None or anchor is None:
            return (0, c.time if c.time is not None else float("inf"))
        if anchor - RECENT_SECONDS <= c.time <= anchor + FAILURE_GRACE_SECONDS:
            return (0, c.time)
        if c.time > anchor + FAILURE_GRACE_SECONDS:
            return (1, c.time)
        return (2, -c.time)

    candidates.sort(key=bucket)
    reference = (
        "the hang's start"
        if (hang is not None and hang.start is not None) or stall is not None
        else "the failure"
    )
    causes: list[Cause] = []
    for i, c in enumerate(candidates):
        b = bucket(c)[0]
        position = {
            0: f"at {_stamp(c.time)}, the {'first' if i == 0 else 'next'} fatal event near {reference}",
            1: f"at {_stamp(c.time)}, after {reference} (possibly a consequence)",
            2: f"at {_stamp(c.time)}, long before {reference}",
        }[b]
        if anchor is not None and c.time is not None and b != 1:
            position += f" ({abs(anchor - c.time):.0f} s before it)" if c.time <= anchor else ""
        causes.append(
            Cause(
                rank=0,
                kind=c.kind,
                title=c.title,
                time=_dt(c.time),
                host=c.host,
                gpu=c.gpu,
                explanation=position + c.extra_explanation,
                evidence=[_evidence(f) for f in c.findings[:20]],
            )
        )

    # NCCL: symptoms of an earlier fatal event; else the cause, naming the ranks that hung.
    if hang is not None:
        what = "NCCL watchdog timeouts" if hang.timed_out else "NCCL errors"
        summary = what + (": " + hang.describe() if hang.describe() else "")
        earlier = [
            c
            for c in candidates
            if c.time is not None and nccl_time is not None and c.time <= nccl_time + 1.0
        ]
        if earlier:
            symptoms.insert(
                0,
                summary + " (a symptom of the cause above: a collective hangs when one rank "
                "stops, and every other rank then times out)",
            )
            index = candidates.index(earlier[0])
            causes[index] = causes[index].model_copy(
                update={"evidence": causes[index].evidence + [_evidence(f) for f in nccl[:20]]}
            )
        else:
            if hang.missing or hang.lagging:
                culprits = hang.missing or hang.lagging
                title = (
                    f"NCCL collective timeout: rank{'s' if len(culprits) > 1 else ''} {_ranges(culprits)} "
                    f"{'never joined' if hang.missing else 'fell behind'}"
                    + (f" (SeqNum {hang.seq})" if hang.seq is not None else "")
                )
            elif hang.timed_out:
                title = f"NCCL collective timeout (ranks {_ranges(hang.timed_out)} timed out)"
            else:
                title = "NCCL error" + (f" on rank {hang.lead.rank}" if hang.lead.rank is not None else "")
            causes.insert(
                0,
                Cause(
                    rank=0,
                    kind=hang.lead.kind,
                    title=title,
                    time=_dt(hang.start or hang.lead.time),
                    host=hang.lead.host,
                    gpu=hang.lead.gpu,
                    explanation=summary
                    + "; no fatal event was found before it: look at the missing or lagging "
                    "ranks' hosts (hung process, network, storage)",
                    evidence=[_evidence(f) for f in nccl[:50]],
                ),
            )

    # The job's own step telemetry: no rank stepped after stall.time, and it names the ranks that
    # stopped first. A fatal event before (or just after: the step in progress when it struck) is
    # the cause, and the stop its symptom.
    if stall is not None:
        before = [
            c for c in candidates
            if c.time is not None and stall.time is not None and c.time <= stall.time + FAILURE_GRACE_SECONDS
        ]
        if before:
            symptoms.insert(0, f"training stopped: {stall.detail} (a symptom of the cause above)")
        else:
            causes.insert(
                0,
                Cause(
                    rank=0,
                    kind="job_hung",
                    title=f"training hung: {stall.detail}",
                    time=_dt(stall.time),
                    host=stall.host,
                    gpu=stall.gpu,
                    explanation="from the job's own step telemetry (jobsight.training): no rank stepped "
                    "after this and no fatal event came before it; the ranks named are usually the "
                    "culprits (stuck outside the collective the others wait in): look at their stacks "
                    "and hosts",
                    evidence=[_evidence(stall)] + [_evidence(f) for f in nccl[:20]],
                ),
            )

    # Generic failure last.
    generic = [
        f
        for f in relevant
        if f.kind in GENERIC_KINDS
        and not (f.kind == "child_failed" and "process_exit" in by_kind and f in by_kind["process_exit"])
    ]
    if generic or exit_code not in (None, 0) or not causes:
        lead_generic: Finding | None = generic[0] if generic else None
        bits = []
        if exit_code not in (None, 0):
            bits.append(f"exit code {exit_code}")
        if reason:
            bits.append(reason)
        title = "process failed" + (f" ({'; '.join(bits)})" if bits else "")
        if lead_generic is not None:
            where = f" on {lead_generic.host}" if lead_generic.host else ""
            title = f"child process failed{where}" + (f" ({'; '.join(bits)})" if bits else "")
        causes.append(
            Cause(
                rank=0,
                kind="child_failed",
                title=title,
                time=_dt(lead_generic.time if lead_generic else failed_at),
                host=lead_generic.host if lead_generic else None,
                gpu=None,
                explanation="generic failure: no more specific cause was found"
                if len(causes) == 0
                else "the failure itself, after the causes above",
                evidence=[_evidence(f) for f in generic[:20]]
                or [Evidence(time=_dt(failed_at), source="job", kind="exit_code", detail=title)],
            )
        )

    ranked = [c.model_copy(update={"rank": i + 1}) for i, c in enumerate(causes)]
    return Diagnosis(
        failed_at=_dt(failed_at),
        causes=ranked,
        symptoms=symptoms,
        missing_sources=sorted(set(missing_sources)),
    )
