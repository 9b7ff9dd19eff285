"""Which hosts and GPUs a job held over a window, resolved once, so that every later query selects
only those series (``Hostname=~"h1|h2"``) instead of every GPU of the cluster joined to the job.

A query over the cluster's series costs what the cluster is (12x slower on 2,048 GPUs than on 64
for the same 8-GPU job, docs/benchmarks/api_scale.md); the same query with the job's hosts in its
selectors costs what the job is. The resolution reads the label index (``/api/v1/series``), not
samples, so a month-long job on thousands of GPUs resolves as cheaply as a short one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from api.prometheus import PrometheusClient, any_of, matcher

# One host matcher holds at most this many hosts; larger jobs run one query per batch (Prometheus
# and VictoriaMetrics compile the alternation into a set lookup, but a megabyte-long query string
# is still parsed and logged for every request).
MAX_HOSTS_PER_QUERY = 128
# Stale info series are still in the index for the lookback after the job's last sample.
INFO_LOOKBACK_SECONDS = 300.0


@dataclass(frozen=True)
class JobScope:
    """The job's GPUs as ``(Hostname, gpu)`` label pairs and its hosts, sorted."""

    job_id: str
    gpus: tuple[tuple[str, str], ...] = ()
    hosts: tuple[str, ...] = ()
    uuids: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.hosts

    def gpu_set(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.gpus)

    def host_batches(self, max_hosts: int | None = None) -> list[tuple[str, ...]]:
        """The hosts in batches of at most ``max_hosts`` and never more than
        :data:`MAX_HOSTS_PER_QUERY` (read at call time)."""
        size = max(1, min(max_hosts or MAX_HOSTS_PER_QUERY, MAX_HOSTS_PER_QUERY))
        return [self.hosts[i:i + size] for i in range(0, len(self.hosts), size)]

    def gpus_on(self, hosts: Iterable[str]) -> int:
        wanted = set(hosts)
        return sum(1 for host, _ in self.gpus if host in wanted)


def host_matcher(hosts: Sequence[str]) -> str:
    """``Hostname="h"`` or ``Hostname=~"h1|h2"`` (values escaped for the regex and the string)."""
    return any_of("Hostname", hosts)


def info_selector(job_id: str, hosts: Sequence[str] | None = None) -> str:
    parts = [matcher("job_id", job_id)]
    if hosts:
        parts.append(host_matcher(hosts))
    return f"jobsight_gpu_job_info{{{', '.join(parts)}}}"


def resolve(prometheus: PrometheusClient, job_id: str, start: float, end: float,
            registered_gpus: Iterable[dict[str, Any]] = (), registered_nodes: Iterable[str] = ()) -> JobScope:
    """The GPUs ``jobsight_gpu_job_info`` says the job held at any time in ``[start, end]``, united
    with what the registry says (a scheduler may know hosts before the exporters publish them)."""
    found = prometheus.series(info_selector(job_id), start - INFO_LOOKBACK_SECONDS, end)
    gpus: set[tuple[str, str]] = set()
    uuids: dict[tuple[str, str], str] = {}
    for labels in found:
        host, gpu = labels.get("Hostname"), labels.get("gpu")
        # The series API matches by the selector; a store that ignores a matcher must not widen it.
        if not host or gpu is None or labels.get("job_id") != job_id:
            continue
        gpus.add((host, gpu))
        if labels.get("UUID"):
            uuids[(host, gpu)] = labels["UUID"]
    for ref in registered_gpus:
        gpus.add((str(ref["host"]), str(ref["gpu"])))
        if ref.get("uuid"):
            uuids.setdefault((str(ref["host"]), str(ref["gpu"])), str(ref["uuid"]))
    hosts = {host for host, _ in gpus} | {str(node) for node in registered_nodes}
    return JobScope(job_id=job_id, gpus=tuple(sorted(gpus, key=_gpu_order)), hosts=tuple(sorted(hosts)),
                    uuids=uuids)


def _gpu_order(pair: tuple[str, str]) -> tuple[str, int, str]:
    host, gpu = pair
    return (host, int(gpu) if gpu.isdigit() else -1, gpu)
