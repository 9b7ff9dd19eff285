"""Per-job summary over the job's lifetime (jobstats/DCGM-job-stats style) and the findings that
feed the failure diagnosis. Prometheus queries run in parallel on a bounded pool; each one is an
instant query over the job window ``[D]`` evaluated at the job's end, except three range queries
that find *when* XIDs, ECC errors and lost GPUs first appeared."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from api.diagnosis import Finding
from api.logsource import LogSource
from api.models import GpuSummary, NodeSummary, OverallSummary, XidEvent
from api.prometheus import PrometheusClient, RangeSeries, Sample, duration, matcher
from api.scope import JobScope, host_matcher
from api.store import Alert
from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.logstore import LogRecord
from jobsight.trust import TRUSTED_SOURCES, may_report

IDLE_UTIL_PERCENT = 5.0
STRAGGLER_RATIO = 0.5
STRAGGLER_MIN_MEDIAN = 10.0
# Range queries that time faults name GPUs one by one; beyond this many the rest go untimed.
MAX_TIMED_GPUS = 64
# Events of the job's hosts that carry no job (kernel lines): hardware faults, and kernel OOM kills,
# which the diagnosis only reports as context unless the record names the job.
HOST_EVENT_KINDS = ("gpu_xid", "gpu_fallen_off_bus", "ecc_error", "ib_link_down", "ib_port_error",
                    "nvlink_error", "nvswitch_sxid", "kernel_oom_kill")
MAX_EVENTS = 1000
# Samples one query may read: a fifth of Prometheus' default --query.max-samples (50 M), so the
# queries of one summary running side by side stay clear of it too.
MAX_SAMPLES_PER_QUERY = 10_000_000
RAW_SCRAPE_SECONDS = 15.0
GPU_STATS_PER_QUERY = 11
# The rollups of alerts/rules/rollups.yaml: (how the window combines them, the recorded series).
ROLLUP_STEP_SECONDS = 300.0
ROLLUPS = {
    "util_mean": ("avg_over_time", "gpu:DCGM_FI_DEV_GPU_UTIL:avg5m"),
    "util_max": ("max_over_time", "gpu:DCGM_FI_DEV_GPU_UTIL:max5m"),
    "idle": ("avg_over_time", "gpu:DCGM_FI_DEV_GPU_UTIL:idle_ratio5m"),
    "mem_max": ("max_over_time", "gpu:DCGM_FI_DEV_FB_USED:max5m"),
    "power_mean": ("avg_over_time", "gpu:DCGM_FI_DEV_POWER_USAGE:avg5m"),
    "power_max": ("max_over_time", "gpu:DCGM_FI_DEV_POWER_USAGE:max5m"),
    "energy": ("sum_over_time", "gpu:DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION:increase5m"),
    "power_violation": ("sum_over_time", "gpu:DCGM_FI_DEV_POWER_VIOLATION:increase5m"),
    "thermal_violation": ("sum_over_time", "gpu:DCGM_FI_DEV_THERMAL_VIOLATION:increase5m"),
    "ecc": ("sum_over_time", "gpu:DCGM_FI_DEV_ECC_DBE_VOL_TOTAL:increase5m"),
    "up_min": ("min_over_time", "gpu:jobsight_gpu_up:min5m"),
}
NODE_ROLLUPS = {
    "rx": "Hostname:node_infiniband_port_data_received_bytes:increase5m",
    "tx": "Hostname:node_infiniband_port_data_transmitted_bytes:increase5m",
    "link_downed": "Hostname:node_infiniband_link_downed:increase5m",
    "symbol_errors": "Hostname:node_infiniband_symbol_error:increase5m",
}

ALERT_KINDS = {
    "GPUXidError": "gpu_xid", "GPULost": "gpu_lost", "GPUMissing": "gpu_lost",
    "GPUEccDoubleBitError": "ecc_error", "RDMALinkDowned": "ib_link_down",
    "RDMAPhysicalLinkDown": "ib_link_down", "RDMAPortNotActive": "ib_link_down",
    # A host-wide count: it names no victim, so it is context for the diagnosis, never the job's cause.
    "NodeOOMKill": "host_oom_kill",
}


@dataclass
class PromFacts:
    gpus: list[GpuSummary] = field(default_factory=list)
    nodes: list[NodeSummary] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    pci_to_gpu: dict[tuple[str, tuple[int, int, int]], int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rollup_step: float | None = None


_PCI_RE = re.compile(r"(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.[0-7])?\s*$")


def pci_key(text: str) -> tuple[int, int, int] | None:
    """``PCI:0000:cb:00`` (kernel) and ``00000000:CB:00.0`` (NVML) name the same device."""
    match = _PCI_RE.search(text.strip().removeprefix("PCI:").removeprefix("pci:"))
    if not match:
        return None
    domain, bus, device = match.groups()
    return (int(domain or "0", 16), int(bus, 16), int(device, 16))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def first_increase(series: RangeSeries, start: float, step: float) -> float | None:
    """When a counter first went up inside the window (a series born late counts as going up)."""
    previous: float | None = None
    for t, value in series.points:
        if previous is None:
            if t > start + 1.5 * step and value > 0:
                return t
        elif value > previous:
            return t
        previous = value
    return None


def counter_growth(series: RangeSeries, start: float, step: float) -> float:
    """How much a counter grew in the window. Unlike ``increase()``, a series born inside the
    window counts its first value: an exporter creates an XID counter at 1 when the first XID
    happens, and ``increase()`` would report 0 for it."""
    if not series.points:
        return 0.0
    first_t, first_v = series.points[0]
    growth = first_v if first_t > start + 1.5 * step else 0.0
    for (_, a), (_, b) in zip(series.points, series.points[1:], strict=False):
        # A drop is a counter reset (exporter restart): the new value is all growth.
        growth += b - a if b >= a else b
    return growth


class JobFacts:
    """Gathers what the summary and the diagnosis need; ``executor`` runs queries in parallel."""

    def __init__(self, prometheus: PrometheusClient, logs: LogSource, executor: Executor,
                 clock: Callable[[], float] = time.time, rollup_after: float = 0.0) -> None:
        self._prom = prometheus
        self._logs = logs
        self._executor = executor
        self._clock = clock
        self._rollup_after = rollup_after

    # -- Prometheus -----------------------------------------------------------------------

    def prometheus_facts(self, scope: JobScope, start: float, end: float) -> PromFacts:
        """Figures of the job's GPUs and nodes over ``[start, end]``: raw samples, or the 5-minute
        rollups of ``alerts/rules/rollups.yaml`` for windows longer than ``rollup_after`` (where
        those series exist). Every selector names the job's hosts; a large job runs one query per
        batch of hosts, sized so that no query reads more than :data:`MAX_SAMPLES_PER_QUERY`."""
        if scope.empty:
            return PromFacts()
        use_rollups = self._rollup_after > 0 and end - start > self._rollup_after
        facts: PromFacts | None = None
        if use_rollups:
            facts = self._facts(scope, start, end, rollups=True)
            if facts is None:
                facts = self._facts(scope, start, end, rollups=False)
                assert facts is not None
                facts.warnings.append(
                    "the rollup series of alerts/rules/rollups.yaml are missing for this window: the "
                    "summary read raw samples (slow for long jobs; load the rules, docs/scale.md)")
        else:
            facts = self._facts(scope, start, end, rollups=False)
        assert facts is not None
        return facts

    def _facts(self, scope: JobScope, start: float, end: float, *, rollups: bool) -> PromFacts | None:
        span = max(end - start, 60.0)
        window = duration(span)
        step = max(15.0, span / 720)
        job = matcher("job_id", scope.job_id)
        wanted_gpus = scope.gpu_set()
        # Samples one GPU series contributes to one statistic, and statistics per query.
        per_series = span / (ROLLUP_STEP_SECONDS if rollups else RAW_SCRAPE_SECONDS)
        gpus_per_batch = max(1, int(MAX_SAMPLES_PER_QUERY / (per_series * GPU_STATS_PER_QUERY)))
        per_host = max(1, max(scope.gpus_on([h]) for h in scope.hosts))
        batches = scope.host_batches(max(1, gpus_per_batch // per_host))

        def tagged(parts: dict[str, str]) -> str:
            """One query for several statistics: each part gets a ``stat`` label, so Prometheus
            evaluates the selection once per query instead of once per statistic."""
            return " or ".join(f'label_replace({expr}, "stat", "{name}", "", "")'
                               for name, expr in parts.items())

        def gpu_stats(hosts: Sequence[str]) -> dict[str, str]:
            on = host_matcher(hosts)
            if rollups:
                return {name: f"{fn}({record}{{{on}}}[{window}])" for name, (fn, record) in ROLLUPS.items()}
            return {
                "util_mean": f"avg_over_time(DCGM_FI_DEV_GPU_UTIL{{{on}}}[{window}])",
                "util_max": f"max_over_time(DCGM_FI_DEV_GPU_UTIL{{{on}}}[{window}])",
                "mem_max": f"max_over_time(DCGM_FI_DEV_FB_USED{{{on}}}[{window}])",
                "energy": f"increase(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{on}}}[{window}])",
                "power_mean": f"avg_over_time(DCGM_FI_DEV_POWER_USAGE{{{on}}}[{window}])",
                "power_max": f"max_over_time(DCGM_FI_DEV_POWER_USAGE{{{on}}}[{window}])",
                "power_violation": f"increase(DCGM_FI_DEV_POWER_VIOLATION{{{on}}}[{window}])",
                "thermal_violation": f"increase(DCGM_FI_DEV_THERMAL_VIOLATION{{{on}}}[{window}])",
                "idle": f"avg_over_time((DCGM_FI_DEV_GPU_UTIL{{{on}}} < bool {IDLE_UTIL_PERCENT:g})"
                        f"[{window}:{duration(step)}])",
                "ecc": f"increase(DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{on}}}[{window}])",
                "up_min": f"min_over_time(jobsight_gpu_up{{{on}}}[{window}])",
            }

        def node_stats(hosts: Sequence[str]) -> dict[str, str]:
            on = host_matcher(hosts)
            if rollups:
                return {name: f"sum by (Hostname) (sum_over_time({record}{{{on}}}[{window}]))"
                        for name, record in NODE_ROLLUPS.items()}
            return {
                name: f"sum by (Hostname) (increase({counter}{{{on}}}[{window}]))"
                for name, counter in (("rx", "node_infiniband_port_data_received_bytes_total"),
                                      ("tx", "node_infiniband_port_data_transmitted_bytes_total"),
                                      ("link_downed", "node_infiniband_link_downed_total"),
                                      ("symbol_errors", "node_infiniband_symbol_error_total"))
            }

        def job_stats(hosts: Sequence[str]) -> dict[str, str]:
            on = f"{job}, {host_matcher(hosts)}"
            if rollups:
                return {
                    "job_cpu": f"sum by (Hostname) (sum_over_time("
                               f"job_id_Hostname:jobsight_job_cpu_seconds:increase5m{{{on}}}[{window}]))",
                    "job_mem": f"sum by (Hostname) (max_over_time("
                               f"job_id_Hostname:jobsight_job_memory_rss_bytes:max5m{{{on}}}[{window}]))",
                }
            return {
                "job_cpu": f"sum by (Hostname) "
                           f"(increase(jobsight_job_cpu_seconds_total{{{on}}}[{window}]))",
                "job_mem": f"sum by (Hostname) "
                           f"(max_over_time(jobsight_job_memory_rss_bytes{{{on}}}[{window}]))",
            }

        def xid_any(hosts: Sequence[str]) -> str:
            # XID counters exist only for GPUs that had one: raw samples stay cheap at any length.
            return (f"max by (Hostname, gpu, xid) "
                    f"(max_over_time(jobsight_gpu_xid_errors_total{{{host_matcher(hosts)}}}[{window}]))")

        futures: list[tuple[str, Future[Any]]] = []
        for hosts in batches:
            futures += [
                ("gpu_stats", self._executor.submit(
                    self._prom.query, f"max by (Hostname, gpu, stat) ({tagged(gpu_stats(hosts))})", end)),
                ("node_stats", self._executor.submit(
                    self._prom.query, f"max by (Hostname, stat) ({tagged(node_stats(hosts))})", end)),
                ("job_stats", self._executor.submit(self._prom.query, tagged(job_stats(hosts)), end)),
                ("xid_any", self._executor.submit(self._prom.query, xid_any(hosts), end)),
                # PCI addresses from the label index: no samples read.
                ("pci", self._executor.submit(
                    self._prom.series, f"jobsight_gpu_info{{{host_matcher(hosts)}}}", start, end)),
            ]
        results: dict[str, list[Any]] = {
            name: [] for name in ("xid_any", "pci", *gpu_stats(["h"]), *node_stats(["h"]), *job_stats(["h"]))
        }
        for kind, future in futures:
            answer = future.result()
            if kind in ("xid_any", "pci"):
                results[kind].extend(answer)
                continue
            for sample in answer:
                stat = sample.labels.pop("stat", None)
                if stat is not None:
                    results[stat].append(sample)
        if wanted_gpus:
            # The hosts' other GPUs belong to other jobs.
            def ours(labels: dict[str, str]) -> bool:
                return (labels.get("Hostname", ""), labels.get("gpu", "")) in wanted_gpus

            for name in ("xid_any", *gpu_stats(["h"])):
                results[name] = [x for x in results[name] if ours(x.labels)]
            results["pci"] = [labels for labels in results["pci"] if ours(labels)]
        if rollups and wanted_gpus and not results["util_mean"] and not results["power_mean"]:
            return None  # the rules are not loaded (or were not yet for this window)

        # When did things happen? Range queries only for the GPUs where the instant answers show
        # an XID, an ECC error or a lost GPU, selected by exact matchers (no join per step): a
        # healthy job costs none of them.
        def devices(samples: list[Sample], when: Callable[[Sample], bool]) -> list[tuple[str, str]]:
            return sorted({(x.labels["Hostname"], x.labels["gpu"]) for x in samples
                           if "Hostname" in x.labels and "gpu" in x.labels and when(x)})[:MAX_TIMED_GPUS]

        def selector(metric: str, gpus: list[tuple[str, str]]) -> str:
            return " or ".join(f"{metric}{{{matcher('Hostname', h)}, {matcher('gpu', g)}}}" for h, g in gpus)

        wanted = {
            "xid_t": ("max by (Hostname, gpu, xid)", "jobsight_gpu_xid_errors_total",
                      devices(results["xid_any"], lambda x: x.value > 0)),
            "ecc_t": ("max by (Hostname, gpu)", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                      devices(results["ecc"], lambda x: x.value > 0)),
            "up_t": ("min by (Hostname, gpu)", "jobsight_gpu_up",
                     devices(results["up_min"], lambda x: x.value == 0)),
        }
        # Event times need a fine step: with the statistics' step (15 s or more) the XID of a
        # short job can fall after the last point of its window and be missed. These are a few
        # series selected exactly, so up to ~1000 points each cost little.
        timed_step = max(1.0, (end - start) / 1000)
        range_start = start - timed_step
        ranged = {
            name: self._executor.submit(self._prom.query_range, f"{agg} ({selector(metric, gpus)})",
                                        range_start, end, timed_step)
            for name, (agg, metric, gpus) in wanted.items() if gpus
        }
        for name in wanted:
            results[name] = ranged[name].result() if name in ranged else []
        facts = self._assemble(results, range_start, timed_step)
        for pair, uuid in scope.uuids.items():
            index = _int(pair[1])
            for g in facts.gpus:
                if g.host == pair[0] and g.gpu == index and g.uuid is None:
                    g.uuid = uuid
        have = {(g.host, g.gpu) for g in facts.gpus}
        for host, gpu in scope.gpus:
            index = _int(gpu)
            if index is not None and (host, index) not in have:
                # A GPU of the job with no samples at all is still one of its GPUs.
                facts.gpus.append(GpuSummary(host=host, gpu=index, uuid=scope.uuids.get((host, gpu))))
        facts.gpus.sort(key=lambda g: (g.host, g.gpu))
        facts.rollup_step = ROLLUP_STEP_SECONDS if rollups else None
        return facts

    def _assemble(self, r: dict[str, Any], start: float, step: float) -> PromFacts:
        facts = PromFacts()
        gpus: dict[tuple[str, int], GpuSummary] = {}

        def gpu_of(sample: Sample) -> GpuSummary | None:
            host, index = sample.labels.get("Hostname"), _int(sample.labels.get("gpu"))
            if host is None or index is None:
                return None
            return gpus.setdefault((host, index), GpuSummary(host=host, gpu=index))

        for labels in r["pci"]:
            key = pci_key(labels.get("pci_bus_id", ""))
            index = _int(labels.get("gpu"))
            if key is not None and index is not None and "Hostname" in labels:
                facts.pci_to_gpu[(labels["Hostname"], key)] = index
        simple = {
            "util_mean": ("util_mean", 1.0), "util_max": ("util_max", 1.0),
            "mem_max": ("memory_max_bytes", 1048576.0), "energy": ("energy_joules", 1e-3),
            "power_mean": ("power_mean_watts", 1.0), "power_max": ("power_max_watts", 1.0),
            "idle": ("idle_fraction", 1.0), "ecc": ("ecc_dbe_errors", 1.0),
        }
        for name, (attr, scale) in simple.items():
            for s in r[name]:
                g = gpu_of(s)
                if g is not None:
                    setattr(g, attr, s.value * scale)
        for name in ("power_violation", "thermal_violation"):
            for s in r[name]:
                g = gpu_of(s)
                if g is not None:
                    g.throttled_seconds = (g.throttled_seconds or 0.0) + s.value / 1e9
        for series in r["xid_t"]:
            xid = _int(series.labels.get("xid"))
            g = gpu_of(Sample(series.labels, 0.0))
            count = counter_growth(series, start, step)
            if g is None or xid is None or count <= 0:
                continue
            first = first_increase(series, start, step)
            g.xids.append(XidEvent(xid=xid, count=round(count, 3), first_seen=_dt(first)))
            facts.findings.append(Finding(
                time=first, source="prometheus", kind="gpu_xid", host=g.host, gpu=g.gpu, xid=xid,
                detail=f"jobsight_gpu_xid_errors_total{{xid=\"{xid}\"}} rose by {count:g} "
                       f"on {g.host} GPU {g.gpu}",
            ))
        for series in r["ecc_t"]:
            host, index = series.labels.get("Hostname"), _int(series.labels.get("gpu"))
            when = first_increase(series, start, step)
            if host is not None and index is not None and when is not None:
                facts.findings.append(Finding(
                    time=when, source="prometheus", kind="ecc_error", host=host, gpu=index,
                    detail=f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL rose on {host} GPU {index}",
                ))
        for series in r["up_t"]:
            host, index = series.labels.get("Hostname"), _int(series.labels.get("gpu"))
            down = next((t for t, v in series.points if v == 0), None)
            if host is None or index is None or down is None:
                continue
            gpus.setdefault((host, index), GpuSummary(host=host, gpu=index)).lost = True
            facts.findings.append(Finding(
                time=down, source="prometheus", kind="gpu_lost", host=host, gpu=index,
                detail=f"jobsight_gpu_up == 0 for {host} GPU {index}",
            ))
        facts.gpus = sorted(gpus.values(), key=lambda g: (g.host, g.gpu))
        nodes: dict[str, NodeSummary] = {}
        node_fields = {"rx": "rdma_rx_bytes", "tx": "rdma_tx_bytes", "link_downed": "rdma_link_downed",
                       "symbol_errors": "rdma_symbol_errors", "job_cpu": "job_cpu_seconds",
                       "job_mem": "job_memory_max_bytes"}
        for name, attr in node_fields.items():
            for s in r[name]:
                host = s.labels.get("Hostname")
                if host:
                    setattr(nodes.setdefault(host, NodeSummary(host=host)), attr, s.value)
        facts.nodes = sorted(nodes.values(), key=lambda n: n.host)
        return facts

    # -- logs -----------------------------------------------------------------------------

    def log_events(self, job_id: str, hosts: set[str], start: float, end: float) -> list[LogRecord]:
        """The job's own events, plus hardware/kernel events of its hosts that carry no job."""
        grace = 120.0
        since, until = start - grace, end + grace
        events = list(self._logs.search(job_id=job_id, events_only=True, since=since, until=until,
                                        limit=MAX_EVENTS).records)
        # The kernel lines of the job's hosts only: asked cluster-wide, the first MAX_EVENTS of
        # other hosts' faults would crowd out this job's on a large cluster.
        for kind in HOST_EVENT_KINDS if hosts else ():
            page = self._logs.search(kind=kind, since=since, until=until, limit=MAX_EVENTS,
                                     hosts=sorted(hosts))
            # Only the kernel's own lines: a job-less hardware line from a user-writable source would
            # otherwise land on every failed job of the host (jobsight/trust.py).
            events.extend(r for r in page.records
                          if r.host in hosts and not r.job_id and r.source in TRUSTED_SOURCES)
        seen: set[str] = set()
        unique = []
        for record in sorted(events, key=lambda r: (r.timestamp, r.host, r.offset)):
            key = record.record_id or f"{record.host}:{record.path}:{record.offset}"
            if key not in seen:
                seen.add(key)
                unique.append(record)
        return unique


def _dt(ts: float | None) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC) if ts is not None else None


def findings_from_events(events: list[LogRecord],
                         pci_to_gpu: dict[tuple[str, tuple[int, int, int]], int]) -> list[Finding]:
    out = []
    for e in events:
        if not e.event_kind or not may_report(e.event_kind, e.source):
            continue
        fields = dict(e.event_fields)
        gpu = _int(fields.get("gpu"))
        pci = fields.get("pci")
        if gpu is None and pci:
            key = pci_key(pci)
            if key is not None:
                gpu = pci_to_gpu.get((e.host, key))
        xid = _int(fields.get("xid"))
        out.append(Finding(
            time=e.timestamp, source="log", kind=e.event_kind, host=e.host or None, gpu=gpu, rank=e.rank,
            xid=xid, pci=pci, detail=e.message[:500],
            # job_id: the collector stamped the record with the job whose process it was (kernel OOM
            # kills count against a job only then).
            extra={**fields, "job_id": e.job_id or ""},
        ))
    return out


def findings_from_alerts(alerts: list[Alert]) -> list[Finding]:
    out = []
    for a in alerts:
        kind = ALERT_KINDS.get(a.alertname or "")
        if kind is None:
            continue
        labels = a.labels
        summary = a.annotations.get("summary") or a.alertname or "alert"
        out.append(Finding(
            time=a.starts_at, source="alert", kind=kind, host=labels.get("Hostname"),
            gpu=_int(labels.get("gpu")), xid=_int(labels.get("xid")),
            detail=f"alert {a.alertname} ({a.status}): {summary}",
            extra={k: v for k, v in labels.items() if k in ("device", "port")},
        ))
    return out


def overall(gpus: list[GpuSummary]) -> tuple[OverallSummary, list[GpuSummary]]:
    """Job-wide figures and the stragglers (GPUs well below the job's median utilisation)."""

    def values(attr: str) -> list[float]:
        return [v for g in gpus if (v := getattr(g, attr)) is not None]

    utils = values("util_mean")
    median = statistics.median(utils) if utils else None
    stragglers = []
    if median is not None and median >= STRAGGLER_MIN_MEDIAN and len(utils) >= 2:
        for g in gpus:
            if g.util_mean is not None and g.util_mean < STRAGGLER_RATIO * median:
                g.straggler = True
                stragglers.append(g)

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    result = OverallSummary(
        gpus=len(gpus), util_mean=mean(utils), util_max=max(values("util_max"), default=None),
        util_median=median, memory_max_bytes=max(values("memory_max_bytes"), default=None),
        energy_joules=sum(values("energy_joules")) if values("energy_joules") else None,
        power_mean_watts=mean(values("power_mean_watts")),
        power_max_watts=max(values("power_max_watts"), default=None),
        throttled_seconds=sum(values("throttled_seconds")) if values("throttled_seconds") else None,
        idle_fraction=mean(values("idle_fraction")),
        xid_count=sum(x.count for g in gpus for x in g.xids),
        ecc_dbe_errors=sum(values("ecc_dbe_errors")),
    )
    return result, stragglers


def require_window(start: float, end: float) -> None:
    if end <= start:
        raise InvalidInput("end must be after start")


__all__ = ["DependencyUnavailable", "JobFacts", "findings_from_alerts", "findings_from_events", "overall"]
