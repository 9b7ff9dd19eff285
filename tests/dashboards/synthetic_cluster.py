"""A synthetic two-node GPU cluster served over HTTP in the metric names and labels of the
conventions (dcgm-exporter, node_exporter, jobsight_*), so that a real Prometheus can scrape it and
every dashboard query can be run against real data. Counters grow with the wall clock, so rate()
and increase() see movement between scrapes.

node1: GPUs 0-3 run job 4711, GPUs 4-7 run job 4712; GPU 4 is shared with job 4713 (two info series
for one GPU) and GPU 7 is allocated but idle. node2: GPUs 0-3 run job 4711; GPU 3 is lost after an
XID 79, which the kernel log also reported without a job. Job 4711 is registered as failed."""

from __future__ import annotations

import time
from collections.abc import Iterator

from tests.support import RecordedRequest, RecordingHTTPServer, Reply

HOSTS = {"node1": 8, "node2": 4}


def _jobs(host: str, gpu: int) -> list[str]:
    if host == "node1" and gpu == 4:
        return ["4712", "4713"]
    return ["4712"] if host == "node1" and gpu >= 4 else ["4711"]


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def exposition(host: str, now: float, start: float) -> str:
    t = now - start
    lines: list[str] = []

    def family(name: str, kind: str, samples: Iterator[tuple[dict[str, object], float]]) -> None:
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{_labels(**labels)} {value}" for labels, value in samples)

    gpus = range(HOSTS[host])

    def gpu_labels(gpu: int) -> dict[str, object]:
        return {
            "gpu": gpu,
            "UUID": f"GPU-{host}-{gpu}",
            "pci_bus_id": f"00000000:{gpu + 1:02x}:00.0",
            "device": f"nvidia{gpu}",
            "modelName": "NVIDIA H100 80GB HBM3",
            "Hostname": host,
        }

    def per_gpu(value: float) -> Iterator[tuple[dict[str, object], float]]:
        return ((gpu_labels(g), value + g) for g in gpus)

    lost = {3} if host == "node2" else set()
    live = [g for g in gpus if g not in lost]
    gauges = {
        "DCGM_FI_DEV_GPU_UTIL": 80.0,
        "DCGM_FI_DEV_FB_USED": 40000.0,
        "DCGM_FI_DEV_FB_FREE": 41000.0,
        "DCGM_FI_DEV_POWER_USAGE": 500.0,
        "DCGM_FI_DEV_GPU_TEMP": 60.0,
        "DCGM_FI_DEV_SM_CLOCK": 1980.0,
        "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0.0,
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": 4.0,
        "DCGM_FI_DEV_XID_ERRORS": 0.0,
    }
    gauges["DCGM_FI_DEV_MEMORY_TEMP"] = 70.0
    idle = {7} if host == "node1" else set()
    for name, value in gauges.items():
        if name == "DCGM_FI_DEV_GPU_UTIL":
            family(name, "gauge", ((gpu_labels(g), 0.0 if g in idle else value + g) for g in live))
        else:
            family(name, "gauge", ((gpu_labels(g), value + g) for g in live))
    for name, value in {
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": 0.5,
        "DCGM_FI_PROF_SM_ACTIVE": 0.7,
        "DCGM_FI_PROF_DRAM_ACTIVE": 0.4,
        "DCGM_FI_PROF_PCIE_TX_BYTES": 2e9,
        "DCGM_FI_PROF_PCIE_RX_BYTES": 2e9,
    }.items():
        family(name, "gauge", ((gpu_labels(g), value) for g in live))
    for name, per_s in {
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 500000.0,
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 0.0,
        "DCGM_FI_DEV_POWER_VIOLATION": 1e6,
        "DCGM_FI_DEV_THERMAL_VIOLATION": 1e5,
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 1.0,
        "jobsight_gpu_nvlink_transmitted_bytes_total": 1e10,
        "jobsight_gpu_nvlink_received_bytes_total": 1e10,
    }.items():
        family(name, "counter", ((gpu_labels(g), 1000 + per_s * t) for g in live))
    family("jobsight_gpu_up", "gauge", ((gpu_labels(g), 0 if g in lost else 1) for g in gpus))
    family("jobsight_gpu_xid_errors_total", "counter", (({**gpu_labels(g), "xid": 79}, 1) for g in lost))
    family(
        "jobsight_gpu_xid_last_seen_timestamp_seconds",
        "gauge",
        (({**gpu_labels(g), "xid": 79}, start) for g in lost),
    )
    family(
        "jobsight_gpu_job_info",
        "gauge",
        (
            ({"Hostname": host, "gpu": g, "UUID": f"GPU-{host}-{g}", "job_id": j}, 1)
            for g in gpus
            for j in _jobs(host, g)
        ),
    )
    family(
        "jobsight_gpu_job_memory_used_bytes",
        "gauge",
        (
            ({"Hostname": host, "gpu": g, "UUID": f"GPU-{host}-{g}", "job_id": j}, 3.9e10)
            for g in live
            for j in _jobs(host, g)
        ),
    )

    cpu_modes = {"idle": 0.3, "user": 0.6, "system": 0.1}
    family(
        "node_cpu_seconds_total",
        "counter",
        (({"cpu": c, "mode": m}, 1000 + share * t) for c in range(2) for m, share in cpu_modes.items()),
    )
    family("node_memory_MemTotal_bytes", "gauge", iter([({}, 2.0e12)]))
    family("node_memory_MemAvailable_bytes", "gauge", iter([({}, 1.2e12)]))
    fs: dict[str, object] = {"device": "/dev/nvme0n1p1", "mountpoint": "/", "fstype": "ext4"}
    family("node_filesystem_size_bytes", "gauge", iter([(fs, 1e12)]))
    family("node_filesystem_avail_bytes", "gauge", iter([(fs, 4e11)]))
    family("node_pressure_memory_waiting_seconds_total", "counter", iter([({}, 10 + 0.01 * t)]))
    family("node_pressure_cpu_waiting_seconds_total", "counter", iter([({}, 10 + 0.02 * t)]))
    family("node_pressure_io_waiting_seconds_total", "counter", iter([({}, 10 + 0.03 * t)]))
    for name, value in {"node_load1": 3.0, "node_load5": 2.5, "node_load15": 2.0}.items():
        family(name, "gauge", iter([({}, value)]))
    family("node_memory_SwapTotal_bytes", "gauge", iter([({}, 8e9)]))
    family("node_memory_SwapFree_bytes", "gauge", iter([({}, 6e9)]))
    disk: dict[str, object] = {"device": "nvme0n1"}
    family("node_disk_read_bytes_total", "counter", iter([(disk, 1e9 + 1e8 * t)]))
    family("node_disk_written_bytes_total", "counter", iter([(disk, 1e9 + 5e7 * t)]))
    for name in ("node_network_receive_bytes_total", "node_network_transmit_bytes_total"):
        family(name, "counter", (({"device": d}, 1e9 + 1e7 * t) for d in ("eth0", "lo")))
    family("node_vmstat_oom_kill", "counter", iter([({}, 0)]))
    jobs = sorted({j for g in gpus for j in _jobs(host, g)})
    family("jobsight_job_cpu_seconds_total", "counter", (({"job_id": j}, 50 + 1.5 * t) for j in jobs))
    family("jobsight_job_memory_rss_bytes", "gauge", (({"job_id": j}, 6.4e10) for j in jobs))
    family("jobsight_job_io_read_bytes_total", "counter", (({"job_id": j}, 1e9 + 1e7 * t) for j in jobs))
    family("jobsight_job_io_write_bytes_total", "counter", (({"job_id": j}, 1e8 + 1e6 * t) for j in jobs))
    family("jobsight_job_processes", "gauge", (({"job_id": j}, 9) for j in jobs))

    ports = [{"device": f"mlx5_{i}", "port": 1} for i in range(2)]
    for name, value in {
        "node_infiniband_state_id": 4,
        "node_infiniband_physical_state_id": 5,
        "node_infiniband_rate_bytes_per_second": 5e10,
    }.items():
        family(name, "gauge", ((p, value) for p in ports))
    for name, per_s in {
        "node_infiniband_port_data_received_bytes_total": 2e9,
        "node_infiniband_port_data_transmitted_bytes_total": 2e9,
        "node_infiniband_link_downed_total": 0,
        "node_infiniband_symbol_error_total": 0,
        "node_infiniband_local_ack_timeout_errors_total": 0,
        "node_infiniband_packet_sequence_errors_total": 0,
        "node_infiniband_out_of_sequence_packets_received_total": 0,
        "node_infiniband_np_ecn_marked_roce_packets_received_total": 10,
        "node_infiniband_rp_cnp_packets_handled_total": 10,
        "node_infiniband_rp_cnp_ignored_packets_received_total": 0,
        "node_infiniband_out_of_buffer_drops_total": 0,
        "node_infiniband_port_transmit_wait_total": 100,
    }.items():
        family(name, "counter", ((p, 100 + per_s * t) for p in ports))
    family(
        "jobsight_rdma_port_info",
        "gauge",
        (({**p, "link_layer": "InfiniBand", "netdev": f"ib{i}"}, 1) for i, p in enumerate(ports)),
    )

    family("jobsight_scrape_collector_success", "gauge", (({"collector": c}, 1) for c in ("gpu", "rdma")))
    family(
        "jobsight_scrape_collector_duration_seconds",
        "gauge",
        (({"collector": c}, 0.01) for c in ("gpu", "rdma")),
    )
    family("node_scrape_collector_success", "gauge", (({"collector": c}, 1) for c in ("cpu", "meminfo")))
    family(
        "node_scrape_collector_duration_seconds",
        "gauge",
        (({"collector": c}, 0.002) for c in ("cpu", "meminfo")),
    )
    events: list[tuple[dict[str, object], float]] = [
        ({"kind": k, "job_id": j}, 1 + int(t)) for j in jobs for k in ("nccl_timeout", "gpu_xid")
    ]
    if lost:  # the kernel log's XID, with no job map to name its job
        events.append(({"kind": "gpu_xid", "job_id": ""}, 1))
    family("jobsight_log_events_total", "counter", iter(events))
    if host == "node1":
        family(
            "jobsight_job_status",
            "gauge",
            iter(
                [
                    ({"job_id": "4711", "tenant": "acme", "status": "failed"}, 1),
                    ({"job_id": "4712", "tenant": "acme", "status": "running"}, 1),
                ]
            ),
        )
    return "\n".join(lines) + "\n"


class SyntheticCluster(RecordingHTTPServer):
    """Serves ``/metrics/<host>`` on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self._start = time.time()
        super().__init__(self._metrics, methods=("GET",), record=False)

    def _metrics(self, request: RecordedRequest) -> Reply:
        host = request.path.rsplit("/", 1)[-1]
        if host not in HOSTS:
            return Reply(404)
        body = exposition(host, time.time(), self._start).encode()
        return Reply(body=body, content_type="text/plain; version=0.0.4")
