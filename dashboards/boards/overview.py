"""Cluster overview (uid ``jobsight-overview``): how many nodes, GPUs and jobs, what is firing, and
GPU / CPU / fabric load per host and per job - built to stay cheap and readable at 2,000 GPUs:
graphs read the per-host and per-job series of the recording rules (alerts/rules/recording.yaml)
and show the extremes (bottomk/topk, min/median/max) instead of a line per host.

Job joins put ``jobsight_gpu_job_info`` on the many side, so two jobs sharing a GPU are fine."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.panels import (
    CLUSTER,
    Board,
    Q,
    base_dashboard,
    series_link,
    stat_panel,
    table_panel,
    timeseries_panel,
    xid_events_in_range,
)

UID = "jobsight-overview"
C = f"{{{CLUSTER}}}"
JOB_LINK = (
    "Job dashboard",
    "/d/jobsight-job/jobsight-job?var-job_id=${__data.fields.job_id}&${__url_time_range}",
)
NODE_LINK = (
    "Node dashboard",
    "/d/jobsight-node/jobsight-node?var-Hostname=${__data.fields.Hostname}&${__url_time_range}",
)
# Info on the many side: one result per (job, GPU), even where two jobs share a GPU (and once per
# GPU where the info carries more labels, such as a pod).
JOB_GPU_UTIL = (
    f"max by (Hostname, gpu, job_id) (jobsight_gpu_job_info{C}) * on (Hostname, gpu) group_left ()"
    f" max by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL{C})"
)
NO_RULES = (
    "No recorded series: load alerts/rules/recording.yaml into Prometheus (jobsight up and the rules "
    "shipped with jobsight do)."
)
TOP = 10


def build() -> Board:
    dashboard = (
        base_dashboard(
            UID, "jobsight / Cluster overview", "The whole cluster: nodes, GPUs, jobs, alerts, load."
        )
        .with_row(db.Row("Now"))
        .with_panel(
            stat_panel(
                "Nodes up",
                Q(f'count(max by (Hostname) (up{{{CLUSTER}, Hostname!=""}}) == 1) or vector(0)'),
                description="Hosts with at least one exporter answering.",
            )
        )
        .with_panel(
            stat_panel(
                "Nodes down",
                Q(f'count(max by (Hostname) (up{{{CLUSTER}, Hostname!=""}}) == 0) or vector(0)'),
                thresholds=[(None, "green"), (1, "red")],
                description="Hosts none of whose exporters answer.",
            )
        )
        .with_panel(
            stat_panel("GPUs", Q(f"count(jobsight_gpu_up{C})"), description="GPUs known to the exporters.")
        )
        .with_panel(
            stat_panel(
                "GPUs lost",
                Q(f"count(jobsight_gpu_up{C} == 0) or vector(0)"),
                thresholds=[(None, "green"), (1, "red")],
                description="GPUs that stopped answering NVML (XID 79 and the like).",
            )
        )
        .with_panel(
            stat_panel(
                "Jobs on GPUs",
                Q(f"count(count by (job_id) (jobsight_gpu_job_info{C})) or vector(0)"),
                description="Jobs holding at least one GPU now.",
            )
        )
        .with_panel(
            stat_panel(
                "Alerts firing",
                Q(f'count(ALERTS{{{CLUSTER}, alertstate="firing"}}) or vector(0)'),
                thresholds=[(None, "green"), (1, "#EAB839")],
            )
        )
        .with_panel(
            stat_panel(
                "GPU utilisation (avg)",
                Q(f"avg(DCGM_FI_DEV_GPU_UTIL{C})"),
                unit="percent",
                thresholds=[(None, "red"), (10, "#EAB839"), (50, "green")],
            )
        )
        .with_panel(stat_panel("GPU power (total)", Q(f"sum(DCGM_FI_DEV_POWER_USAGE{C})"), unit="watt"))
        .with_panel(
            stat_panel(
                "GPU memory used",
                Q(f"sum(DCGM_FI_DEV_FB_USED{C}) / sum(DCGM_FI_DEV_FB_USED{C} + DCGM_FI_DEV_FB_FREE{C})"),
                unit="percentunit",
            )
        )
        .with_panel(
            stat_panel(
                "Allocated but idle GPUs",
                Q(f"sum(job_id:jobsight_gpu_allocated_idle:count{C}) or vector(0)"),
                thresholds=[(None, "green"), (1, "#EAB839")],
                description="GPUs held by a job that have not computed (utilisation under 1 %) "
                "for 10 minutes.",
            )
        )
        .with_panel(
            stat_panel(
                "XIDs in range",
                Q(xid_events_in_range(CLUSTER)),
                thresholds=[(None, "green"), (1, "red")],
                decimals=0,
                description="Critical XID events in the time range, the first of each code included.",
            )
        )
        .with_panel(
            stat_panel(
                "Failed jobs (24 h)",
                Q(f'count(jobsight_job_status{{{CLUSTER}, status="failed"}} == 1) or vector(0)'),
                thresholds=[(None, "green"), (1, "#EAB839")],
            )
        )
        .with_panel(
            table_panel(
                "Firing alerts",
                [Q(f'ALERTS{{{CLUSTER}, alertstate="firing"}}')],
                description="Every firing alert with its labels; runbooks: docs/runbooks/<alertname>.md.",
                links=[NODE_LINK],
                no_value="Nothing is firing.",
            )
        )
        .with_panel(
            table_panel(
                "Jobs by GPU utilisation (now)",
                [Q(f"sort(avg by (job_id) ({JOB_GPU_UTIL}))")],
                description="Average utilisation of each job's GPUs now, least busy first; click a row "
                "for the job dashboard.",
                links=[JOB_LINK],
                no_value="No job holds a GPU now.",
            )
        )
        .with_panel(
            table_panel(
                "Idle GPUs per job",
                [
                    Q(
                        f"sort_desc(job_id:jobsight_gpu_allocated_idle:count{C}"
                        f" or job_id:jobsight_gpu_job_info:count{C} * 0)"
                    )
                ],
                description="GPUs each job holds that have not computed (utilisation under 1 %) for 10 "
                "minutes, most first; 0 for a job whose GPUs all work (recording rules).",
                links=[JOB_LINK],
                width=24,
                height=5,
                no_value=NO_RULES,
            )
        )
        .with_row(db.Row("GPU load across the fleet"))
        .with_panel(
            timeseries_panel(
                "GPU utilisation across hosts (min / median / max)",
                [
                    Q(f"min(Hostname:DCGM_FI_DEV_GPU_UTIL:avg{C})", "min"),
                    Q(f"quantile(0.5, Hostname:DCGM_FI_DEV_GPU_UTIL:avg{C})", "median"),
                    Q(f"max(Hostname:DCGM_FI_DEV_GPU_UTIL:avg{C})", "max"),
                ],
                unit="percent",
                min_value=0,
                max_value=100,
                description="Per-host average GPU utilisation, summarised over the fleet.",
                no_value=NO_RULES,
            )
        )
        .with_panel(
            timeseries_panel(
                f"Least busy hosts (bottom {TOP} by GPU utilisation)",
                [Q(f"bottomk({TOP}, Hostname:DCGM_FI_DEV_GPU_UTIL:avg{C})", "{{Hostname}}")],
                unit="percent",
                min_value=0,
                max_value=100,
                description="The hosts whose GPUs do least, per step (the set can change over time); "
                "click a line for the node.",
                no_value=NO_RULES,
                links=[series_link("Node dashboard", "jobsight-node", Hostname="Hostname")],
            )
        )
        .with_panel(
            timeseries_panel(
                f"GPU power by host (top {TOP})",
                [Q(f"topk({TOP}, Hostname:DCGM_FI_DEV_POWER_USAGE:sum{C})", "{{Hostname}}")],
                unit="watt",
                no_value=NO_RULES,
            )
        )
        .with_panel(
            timeseries_panel(
                f"GPU utilisation of the least busy jobs (bottom {TOP})",
                [Q(f"bottomk({TOP}, job_id:DCGM_FI_DEV_GPU_UTIL:avg{C})", "{{job_id}}")],
                unit="percent",
                min_value=0,
                max_value=100,
                no_value=NO_RULES,
                links=[series_link("Job dashboard", "jobsight-job", job_id="job_id")],
            )
        )
        .with_row(db.Row("Nodes and fabric"))
        .with_panel(
            timeseries_panel(
                f"CPU utilisation by host (top {TOP})",
                [Q(f"topk({TOP}, Hostname:node_cpu_utilisation:rate2m{C})", "{{Hostname}}")],
                unit="percentunit",
                min_value=0,
                max_value=1,
                no_value=NO_RULES,
            )
        )
        .with_panel(
            timeseries_panel(
                f"Memory used by host (top {TOP})",
                [Q(f"topk({TOP}, Hostname:node_memory_utilisation:ratio{C})", "{{Hostname}}")],
                unit="percentunit",
                min_value=0,
                max_value=1,
                no_value=NO_RULES,
            )
        )
        .with_panel(
            timeseries_panel(
                "Fabric traffic (cluster total)",
                [
                    Q(f"sum(Hostname:node_infiniband_port_data_received_bytes:rate2m{C})", "receive"),
                    Q(f"sum(Hostname:node_infiniband_port_data_transmitted_bytes:rate2m{C})", "transmit"),
                ],
                unit="Bps",
                no_value=NO_RULES,
            )
        )
        .with_panel(
            timeseries_panel(
                f"Fabric receive by host (top {TOP})",
                [
                    Q(
                        f"topk({TOP}, Hostname:node_infiniband_port_data_received_bytes:rate2m{C})",
                        "{{Hostname}}",
                    )
                ],
                unit="Bps",
                no_value=NO_RULES,
            )
        )
    )
    return Board(dashboard, {})
