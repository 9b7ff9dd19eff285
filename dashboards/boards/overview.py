"""Cluster overview (uid ``jobsight-overview``): how many nodes, GPUs and jobs, what is firing, and
GPU / CPU / fabric load per host and per job."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.panels import (
    Board,
    Q,
    base_dashboard,
    stat_panel,
    table_panel,
    timeseries_panel,
    xid_events_in_range,
)

UID = "jobsight-overview"
JOB_LINK = (
    "Job dashboard",
    "/d/jobsight-job/jobsight-job?var-job_id=${__data.fields.job_id}&${__url_time_range}",
)
NODE_LINK = (
    "Node dashboard",
    "/d/jobsight-node/jobsight-node?var-Hostname=${__data.fields.Hostname}&${__url_time_range}",
)
JOB_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL * on (Hostname, gpu) group_left (job_id) jobsight_gpu_job_info"


def build() -> Board:
    dashboard = (
        base_dashboard(
            UID, "jobsight / Cluster overview", "The whole cluster: nodes, GPUs, jobs, alerts, load."
        )
        .with_row(db.Row("Now"))
        .with_panel(
            stat_panel(
                "Nodes up",
                Q('count(max by (Hostname) (up{Hostname!=""}) == 1) or vector(0)'),
                description="Hosts with at least one exporter answering.",
            )
        )
        .with_panel(
            stat_panel(
                "Nodes down",
                Q('count(max by (Hostname) (up{Hostname!=""}) == 0) or vector(0)'),
                thresholds=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(stat_panel("GPUs", Q("count(jobsight_gpu_up)")))
        .with_panel(
            stat_panel(
                "GPUs lost",
                Q("count(jobsight_gpu_up == 0) or vector(0)"),
                thresholds=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            stat_panel("Jobs on GPUs", Q("count(count by (job_id) (jobsight_gpu_job_info)) or vector(0)"))
        )
        .with_panel(
            stat_panel(
                "Alerts firing",
                Q('count(ALERTS{alertstate="firing"}) or vector(0)'),
                thresholds=[(None, "green"), (1, "#EAB839")],
            )
        )
        .with_panel(
            stat_panel(
                "GPU utilisation (avg)",
                Q("avg(DCGM_FI_DEV_GPU_UTIL)"),
                unit="percent",
                thresholds=[(None, "red"), (10, "#EAB839"), (50, "green")],
            )
        )
        .with_panel(stat_panel("GPU power (total)", Q("sum(DCGM_FI_DEV_POWER_USAGE)"), unit="watt"))
        .with_panel(
            stat_panel(
                "GPU memory used",
                Q("sum(DCGM_FI_DEV_FB_USED) / sum(DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)"),
                unit="percentunit",
            )
        )
        .with_panel(
            stat_panel(
                "Fabric traffic",
                Q(
                    "sum(rate(node_infiniband_port_data_received_bytes_total[$__rate_interval]))"
                    " + sum(rate(node_infiniband_port_data_transmitted_bytes_total[$__rate_interval]))"
                ),
                unit="Bps",
            )
        )
        .with_panel(
            stat_panel(
                "XIDs in range",
                Q(xid_events_in_range()),
                thresholds=[(None, "green"), (1, "red")],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "Failed jobs (24 h)",
                Q('count(jobsight_job_status{status="failed"} == 1) or vector(0)'),
                thresholds=[(None, "green"), (1, "#EAB839")],
            )
        )
        .with_panel(
            table_panel(
                "Firing alerts",
                [Q('ALERTS{alertstate="firing"}')],
                description="Every firing alert with its labels; runbooks: docs/runbooks/<alertname>.md.",
                links=[NODE_LINK],
            )
        )
        .with_panel(
            table_panel(
                "Jobs by GPU utilisation (now)",
                [Q(f"avg by (job_id) ({JOB_GPU_UTIL})")],
                description="Average utilisation of each job's GPUs now; click a row for the job dashboard.",
                links=[JOB_LINK],
            )
        )
        .with_row(db.Row("Load per host"))
        .with_panel(
            timeseries_panel(
                "GPU utilisation by host",
                [Q("avg by (Hostname) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}}")],
                unit="percent",
                min_value=0,
                max_value=100,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU power by host",
                [Q("sum by (Hostname) (DCGM_FI_DEV_POWER_USAGE)", "{{Hostname}}")],
                unit="watt",
            )
        )
        .with_panel(
            timeseries_panel(
                "CPU utilisation by host",
                [
                    Q(
                        '1 - avg by (Hostname) (rate(node_cpu_seconds_total{mode="idle"}[$__rate_interval]))',
                        "{{Hostname}}",
                    )
                ],
                unit="percentunit",
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            timeseries_panel(
                "Memory used by host",
                [Q("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "{{Hostname}}")],
                unit="percentunit",
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            timeseries_panel(
                "Fabric traffic by host",
                [
                    Q(
                        "sum by (Hostname) "
                        "(rate(node_infiniband_port_data_received_bytes_total[$__rate_interval]))",
                        "{{Hostname}} receive",
                    ),
                    Q(
                        "sum by (Hostname) "
                        "(rate(node_infiniband_port_data_transmitted_bytes_total[$__rate_interval]))",
                        "{{Hostname}} transmit",
                    ),
                ],
                unit="Bps",
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU utilisation by job",
                [Q(f"avg by (job_id) ({JOB_GPU_UTIL})", "{{job_id}}")],
                unit="percent",
                min_value=0,
                max_value=100,
            )
        )
    )
    return Board(dashboard, {})
