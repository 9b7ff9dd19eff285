"""Why did a job fail? Rank the likely causes from findings gathered out of alerts, log events and
Prometheus. Pure: findings in, :class:`~api.models.Diagnosis` out.

The rule, in order:
1. the first hardware fault (XID, GPU lost / fallen off the bus, ECC double-bit error, IB link
   down) before the failure is the first cause; later hardware faults follow it;
2. NCCL timeouts/errors after a hardware fault are symptoms of it (we say which rank timed out
   first); without a hardware fault, the NCCL timeout itself is a cause;
3. out-of-memory (CUDA OOM, OOM-killed container, kernel OOM kill);
4. other application errors (illegal memory access, NaN loss);
5. a generic child failure / non-zero exit code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from api.models import Cause, Diagnosis, Evidence

HARDWARE_KINDS = frozenset({"gpu_xid", "gpu_fallen_off_bus", "gpu_lost", "ecc_error", "ib_link_down"})
NCCL_KINDS = frozenset({"nccl_timeout", "nccl_error"})
OOM_KINDS = frozenset({"cuda_oom", "oom_killed", "kernel_oom_kill"})
APP_KINDS = frozenset({"cuda_illegal_access", "nan_loss"})
GENERIC_KINDS = frozenset({"child_failed", "exit_code"})

# A kernel line can be logged a little after the process saw the failure; count faults up to this
# long after the recorded failure time as "before" it.
FAILURE_GRACE_SECONDS = 120.0

XID_MEANINGS = {
    13: "graphics engine exception", 31: "GPU memory page fault", 43: "GPU stopped processing",
    45: "preemptive cleanup after previous errors", 48: "double-bit ECC error",
    62: "internal micro-controller halt", 63: "ECC page retirement / row remap event",
    64: "ECC page retirement / row remap failure", 74: "NVLink error", 79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate", 94: "contained memory error", 95: "uncontained memory error",
    119: "GSP RPC timeout", 120: "GSP error", 140: "unrecovered ECC error",
}
# XIDs that are usually caused by the application, not the hardware (NVIDIA's catalog:
# RESTART_APP), and the informational row-remap event.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 63})


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
    return Evidence(time=_dt(f.time), source=f.source, kind=f.kind, host=f.host, gpu=f.gpu, rank=f.rank,
                    detail=f.detail)


def _order(f: Finding) -> tuple[float, str]:
    return (f.time if f.time is not None else float("inf"), f.source)


def _is_hardware(f: Finding) -> bool:
    if f.kind not in HARDWARE_KINDS:
        return False
    return not (f.kind == "gpu_xid" and f.xid in APPLICATION_XIDS)


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
        if f.gpu is None and f.kind in HARDWARE_KINDS - {"ib_link_down"}:
            candidates = known.get((f.host, f.xid)) or known.get((f.host, None))
            if candidates and len(candidates) == 1:
                f = replace(f, gpu=next(iter(candidates)))
        out.append(f)
    return out


def _hardware_title(group: Sequence[Finding]) -> tuple[str, str]:
    first = group[0]
    where = f"{first.host or 'unknown host'}" + (f" GPU {first.gpu}" if first.gpu is not None else "")
    if first.kind == "ib_link_down":
        port = first.extra.get("device", "")
        return "ib_link_down", f"InfiniBand link down on {where}" + (f" ({port})" if port else "")
    xid = next((f.xid for f in group if f.xid is not None), None)
    if xid is not None:
        meaning = XID_MEANINGS.get(xid)
        return "gpu_xid", f"XID {xid} on {where}" + (f" ({meaning})" if meaning else "")
    kinds = {f.kind for f in group}
    if "gpu_fallen_off_bus" in kinds:
        return "gpu_lost", f"GPU fallen off the bus on {where}"
    if "gpu_lost" in kinds:
        return "gpu_lost", f"GPU lost on {where}"
    return "ecc_error", f"ECC double-bit error on {where}"


def diagnose(findings: Iterable[Finding], *, started_at: float | None, failed_at: float | None,
             exit_code: int | None = None, reason: str | None = None,
             missing_sources: Sequence[str] = ()) -> Diagnosis:
    horizon = (failed_at + FAILURE_GRACE_SECONDS) if failed_at is not None else float("inf")
    begin = started_at if started_at is not None else float("-inf")
    relevant = [
        f for f in _fill_gpus(list(findings))
        if f.time is None or begin - FAILURE_GRACE_SECONDS <= f.time <= horizon
    ]
    relevant.sort(key=_order)
    causes: list[Cause] = []
    symptoms: list[str] = []

    # 1. hardware faults, grouped per device (one XID seen in the kernel log, by Prometheus and
    #    by an alert is one fault), ordered by their first sighting.
    groups: dict[tuple[str, str | None, int | None], list[Finding]] = defaultdict(list)
    for f in relevant:
        if _is_hardware(f):
            family = "ib" if f.kind == "ib_link_down" else "gpu"
            groups[(family, f.host, f.gpu)].append(f)
    hardware = sorted(groups.values(), key=lambda g: _order(g[0]))
    first_fault_time = hardware[0][0].time if hardware else None
    for i, group in enumerate(hardware):
        kind, title = _hardware_title(group)
        first = group[0]
        explanation = (
            f"first hardware fault before the failure, at {_stamp(first.time)}" if i == 0
            else f"further hardware fault, at {_stamp(first.time)}"
        )
        causes.append(Cause(rank=0, kind=kind, title=title, time=_dt(first.time), host=first.host,
                            gpu=first.gpu, explanation=explanation,
                            evidence=[_evidence(f) for f in group]))

    # 2. NCCL: symptoms after a hardware fault, else a cause of its own.
    nccl = [f for f in relevant if f.kind in NCCL_KINDS]
    if nccl:
        timeouts = [f for f in nccl if f.kind == "nccl_timeout"]
        lead = (timeouts or nccl)[0]
        ranks = sorted({f.rank for f in nccl if f.rank is not None})
        rank_text = f"rank {lead.rank}" if lead.rank is not None else "a rank"
        where = f" on {lead.host}" if lead.host else ""
        summary = (
            f"NCCL {'watchdog timeouts' if timeouts else 'errors'} in "
            f"{'ranks ' + ', '.join(map(str, ranks)) if ranks else 'the job'}; "
            f"{rank_text}{where} {'timed out' if timeouts else 'failed'} first at {_stamp(lead.time)}"
        )
        after_fault = (first_fault_time is not None and lead.time is not None
                       and lead.time >= first_fault_time - 1.0)
        if after_fault:
            symptoms.append(summary + " (a symptom of the hardware fault above)")
            causes[0] = causes[0].model_copy(
                update={"evidence": causes[0].evidence + [_evidence(f) for f in nccl[:20]]}
            )
        else:
            title = (f"NCCL collective timeout ({rank_text} timed out first)" if timeouts
                     else f"NCCL error ({rank_text} first)")
            causes.append(Cause(
                rank=0, kind=lead.kind, title=title, time=_dt(lead.time), host=lead.host, gpu=lead.gpu,
                explanation=summary + "; the ranks that did not time out may be the ones that hung",
                evidence=[_evidence(f) for f in nccl[:50]],
            ))

    # 3. out of memory, 4. application errors: one cause per kind, earliest first.
    for kinds, label in ((OOM_KINDS, None), (APP_KINDS, None)):
        del label
        by_kind: dict[str, list[Finding]] = defaultdict(list)
        for f in relevant:
            if f.kind in kinds:
                by_kind[f.kind].append(f)
        for kind, items in sorted(by_kind.items(), key=lambda kv: _order(kv[1][0])):
            first = items[0]
            title = {
                "cuda_oom": "CUDA out of memory", "oom_killed": "container killed: out of memory",
                "kernel_oom_kill": "host out of memory: kernel OOM killer",
                "cuda_illegal_access": "CUDA illegal memory access", "nan_loss": "loss became NaN/Inf",
            }[kind]
            where = "".join([
                f" on {first.host}" if first.host else "",
                f" rank {first.rank}" if first.rank is not None else "",
            ])
            causes.append(Cause(rank=0, kind=kind, title=title + where, time=_dt(first.time), host=first.host,
                                gpu=first.gpu, explanation=f"first seen at {_stamp(first.time)}",
                                evidence=[_evidence(f) for f in items[:20]]))

    # 5. generic failure.
    generic = [f for f in relevant if f.kind in GENERIC_KINDS]
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
        causes.append(Cause(
            rank=0, kind="child_failed", title=title,
            time=_dt(lead_generic.time if lead_generic else failed_at),
            host=lead_generic.host if lead_generic else None, gpu=None,
            explanation="generic failure: no more specific cause was found" if len(causes) == 0
            else "the failure itself, after the causes above",
            evidence=[_evidence(f) for f in generic[:20]] or [
                Evidence(time=_dt(failed_at), source="job", kind="exit_code", detail=title)],
        ))

    ranked = [c.model_copy(update={"rank": i + 1}) for i, c in enumerate(causes)]
    return Diagnosis(failed_at=_dt(failed_at), causes=ranked, symptoms=symptoms,
                     missing_sources=sorted(set(missing_sources)))
