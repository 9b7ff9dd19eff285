"""The documented catalog of per-job metrics. Tenants name an entry; only this module writes
PromQL, with the job id and the job's hosts escaped into the matchers that select the job.

Every selector names the job's hosts (``Hostname=~"h1|h2"``, resolved beforehand by
:mod:`api.scope`), so a query reads the series of the job's nodes only, whatever the size of the
cluster. GPU entries then join to ``jobsight_gpu_job_info{job_id, Hostname}`` at every step, which
keeps only the GPUs the job held at that time (a host shared with another job shows only ours);
node entries join on ``Hostname`` to the nodes where the job holds a GPU; ``job_*`` entries read
the node exporter's per-job series; ``train_*`` entries (scope ``rank``) read the job's own step
telemetry (``jobsight.training`` -> the agent's OTLP receiver, docs/training.md), one series per
rank, selected by the job's id as well as its hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from api.prometheus import duration, matcher
from api.scope import host_matcher, info_selector

NO_DATA = "no samples for this GPU in the window"
NO_TENSOR_PIPES = ("not available on this GPU: DCGM_FI_PROF_PIPE_TENSOR_ACTIVE comes from NVML GPM, "
                   "which only Hopper and newer GPUs have (or the GPU sent no samples in the window)")


@dataclass(frozen=True)
class CatalogMetric:
    name: str
    unit: str
    scope: Literal["gpu", "node", "rank"]
    description: str
    # (job id, the hosts of one batch, rate window seconds) -> PromQL; values are escaped inside.
    build: Callable[[str, Sequence[str], float], str]
    # Why a GPU of the job has no series for this entry (GPU entries only).
    unavailable_reason: str = NO_DATA


def gpu_join(job_id: str, hosts: Sequence[str]) -> str:
    """``* on(Hostname, gpu) group_left(job_id) <info>``: keeps only the job's GPUs."""
    info = info_selector(job_id, hosts)
    return f"on(Hostname, gpu) group_left(job_id) max by (Hostname, gpu, job_id) ({info})"


def node_join(job_id: str, hosts: Sequence[str]) -> str:
    return f"on(Hostname) group_left(job_id) max by (Hostname, job_id) ({info_selector(job_id, hosts)})"


def _gpu(metric: str, scale: float = 1.0) -> Callable[[str, Sequence[str], float], str]:
    def build(job_id: str, hosts: Sequence[str], _window: float) -> str:
        expr = f"{metric}{{{host_matcher(hosts)}}}"
        scaled = f"({expr}) * {scale!r}" if scale != 1.0 else expr
        return f"max by (Hostname, gpu) ({scaled} * {gpu_join(job_id, hosts)})"
    return build


def _node_rate(counter: str) -> Callable[[str, Sequence[str], float], str]:
    def build(job_id: str, hosts: Sequence[str], window: float) -> str:
        per_host = f"sum by (Hostname) (rate({counter}{{{host_matcher(hosts)}}}[{duration(window)}]))"
        return f"max by (Hostname) ({per_host} * {node_join(job_id, hosts)})"
    return build


def _node_cpu(job_id: str, hosts: Sequence[str], window: float) -> str:
    idle = f'node_cpu_seconds_total{{mode="idle", {host_matcher(hosts)}}}'
    busy = f"1 - avg by (Hostname) (rate({idle}[{duration(window)}]))"
    return f"max by (Hostname) (({busy}) * {node_join(job_id, hosts)})"


def _job_cpu(job_id: str, hosts: Sequence[str], window: float) -> str:
    selector = f"jobsight_job_cpu_seconds_total{{{matcher('job_id', job_id)}, {host_matcher(hosts)}}}"
    return f"sum by (Hostname) (rate({selector}[{duration(window)}]))"


def _job_memory(job_id: str, hosts: Sequence[str], _window: float) -> str:
    selector = f"jobsight_job_memory_rss_bytes{{{matcher('job_id', job_id)}, {host_matcher(hosts)}}}"
    return f"sum by (Hostname) ({selector})"


def _train_step(job_id: str, hosts: Sequence[str], window: float) -> str:
    """Each rank's mean step time over the rate window; a rank that made no step in the window has
    no point there (a gap, not a zero), so a stopped rank's line ends where it stopped."""
    selector = f"{{{matcher('job_id', job_id)}, {host_matcher(hosts)}}}"
    span = duration(window)
    return (f"max by (Hostname, rank) (rate(jobsight_train_step_seconds_sum{selector}[{span}]) "
            f"/ (rate(jobsight_train_step_seconds_count{selector}[{span}]) > 0))")


CATALOG: dict[str, CatalogMetric] = {
    metric.name: metric
    for metric in [
        CatalogMetric("gpu_util", "percent", "gpu", "GPU utilisation 0-100 (DCGM_FI_DEV_GPU_UTIL)",
                      _gpu("DCGM_FI_DEV_GPU_UTIL")),
        CatalogMetric("gpu_memory_used", "bytes", "gpu", "framebuffer memory used (DCGM_FI_DEV_FB_USED)",
                      _gpu("DCGM_FI_DEV_FB_USED", 1048576.0)),
        CatalogMetric("gpu_power", "watts", "gpu", "power draw (DCGM_FI_DEV_POWER_USAGE)",
                      _gpu("DCGM_FI_DEV_POWER_USAGE")),
        CatalogMetric("gpu_temperature", "celsius", "gpu", "GPU temperature (DCGM_FI_DEV_GPU_TEMP)",
                      _gpu("DCGM_FI_DEV_GPU_TEMP")),
        CatalogMetric("gpu_sm_clock", "hertz", "gpu", "SM clock (DCGM_FI_DEV_SM_CLOCK, MHz scaled to Hz)",
                      _gpu("DCGM_FI_DEV_SM_CLOCK", 1e6)),
        CatalogMetric("gpu_tensor_active", "ratio", "gpu",
                      "fraction of cycles the tensor pipes were active (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, "
                      "from NVML GPM: Hopper and newer GPUs only; not available on this GPU for A100, A30, "
                      "A10, L4, L40S and older, which have no series: such GPUs are listed under "
                      "'unavailable')",
                      _gpu("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), unavailable_reason=NO_TENSOR_PIPES),
        CatalogMetric("rdma_rx_bytes", "bytes_per_second", "node",
                      "RDMA bytes received per second, all ports of each of the job's nodes",
                      _node_rate("node_infiniband_port_data_received_bytes_total")),
        CatalogMetric("rdma_tx_bytes", "bytes_per_second", "node",
                      "RDMA bytes transmitted per second, all ports of each of the job's nodes",
                      _node_rate("node_infiniband_port_data_transmitted_bytes_total")),
        CatalogMetric("node_cpu", "ratio", "node", "busy fraction of all CPUs of each of the job's nodes",
                      _node_cpu),
        CatalogMetric("job_cpu", "cores", "node", "CPU cores used by the job's processes on each node",
                      _job_cpu),
        CatalogMetric("job_memory", "bytes", "node", "resident memory of the job's processes on each node",
                      _job_memory),
        CatalogMetric("train_step_seconds", "seconds", "rank",
                      "mean time between consecutive steps of each rank, as the job reports it through "
                      "jobsight.training (jobsight_train_step_seconds); no series for a job that reports "
                      "no steps, no point where a rank made no step",
                      _train_step),
    ]
}


def rate_window(step: float, scrape_interval: float = 15.0) -> float:
    """Like Grafana's $__rate_interval: at least four scrapes, and never shorter than a step."""
    return max(step + scrape_interval, 4 * scrape_interval)
