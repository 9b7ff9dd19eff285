"""Job dashboard (uid ``jobsight-job``, variable ``job_id``): the job's GPUs (utilisation, memory,
power, tensor activity), its nodes' RDMA traffic and processes, with the job's alerts and log events
as annotations. The API links here as
``<grafana>/d/jobsight-job/jobsight-job?var-job_id=<id>&from=<ms>&to=<ms>``.

GPUs join to the job through ``jobsight_gpu_job_info`` on (Hostname, gpu); node series join through
the set of hosts the job has GPUs on."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.panels import (
    Board,
    Q,
    base_dashboard,
    prometheus_annotation,
    query_variable,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "jobsight-job"
JOB = 'job_id="$job_id"'
GPU_JOIN = f"* on (Hostname, gpu) group_left (job_id) jobsight_gpu_job_info{{{JOB}}}"
NODES = f"max by (Hostname, job_id) (jobsight_gpu_job_info{{{JOB}}})"
NODE_JOIN = f"* on (Hostname) group_left (job_id) {NODES}"
GPU_LEGEND = "{{Hostname}} GPU {{gpu}}"
# Grafana's built-in annotation store (annotations added through its HTTP API).
GRAFANA_ANNOTATIONS = dm.DataSourceRef(type_val="grafana", uid="-- Grafana --")


def _gpu(metric: str) -> str:
    return f"{metric} {GPU_JOIN}"


def build() -> Board:
    dashboard = (
        base_dashboard(
            UID, "jobsight / Job", "One training job: its GPUs, nodes, fabric traffic, alerts and events."
        )
        .with_variable(
            query_variable(
                "job_id",
                "label_values(jobsight_gpu_job_info, job_id)",
                label="Job",
                multi=False,
                include_all=False,
            )
        )
        .annotation(prometheus_annotation("Job alerts", f'ALERTS{{{JOB}, alertstate="firing"}}', "red"))
        .annotation(
            prometheus_annotation(
                "Alerts on the job's GPUs and nodes",
                f'ALERTS{{alertstate="firing", Hostname!="", job_id=""}}'
                f" * on (Hostname) group_left (job_id) {NODES}",
                "orange",
            )
        )
        .annotation(
            # Start/end/failure annotations written through jobsight.grafana.annotate_job() (the API does it).
            db.AnnotationQuery()
            .name("Job lifecycle")
            .datasource(GRAFANA_ANNOTATIONS)
            .enable(True)
            .icon_color("blue")
            .target(db.AnnotationTarget().type("tags").tags(["job_id:$job_id"]).match_any(False).limit(100))
        )
        .annotation(
            prometheus_annotation(
                "Log events",
                # A kind's first events create its series at their count, where increase() sees 0:
                # a series that did not exist a minute ago counts as new events too.
                f"(increase(jobsight_log_events_total{{{JOB}}}[1m]) > 0)"
                f" or (jobsight_log_events_total{{{JOB}}}"
                f" unless jobsight_log_events_total{{{JOB}}} offset 1m)",
                "purple",
            )
        )
        .with_row(db.Row("Job"))
        .with_panel(
            table_panel(
                "Status",
                [Q(f"jobsight_job_status{{{JOB}}}")],
                description="As registered in the jobsight API (last 24 h).",
                width=8,
                height=4,
            )
        )
        .with_panel(stat_panel("GPUs", Q(f"count(jobsight_gpu_job_info{{{JOB}}})")))
        .with_panel(stat_panel("Nodes", Q(f"count({NODES})")))
        .with_panel(
            stat_panel(
                "GPU utilisation (avg)",
                Q(f"avg({_gpu('DCGM_FI_DEV_GPU_UTIL')})"),
                unit="percent",
                thresholds=[(None, "red"), (10, "#EAB839"), (50, "green")],
            )
        )
        .with_panel(
            stat_panel("GPU power (total)", Q(f"sum({_gpu('DCGM_FI_DEV_POWER_USAGE')})"), unit="watt")
        )
        .with_row(db.Row("GPUs"))
        .with_panel(
            timeseries_panel(
                "GPU utilisation",
                [Q(_gpu("DCGM_FI_DEV_GPU_UTIL"), GPU_LEGEND)],
                unit="percent",
                min_value=0,
                max_value=100,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU memory used",
                [Q(_gpu("DCGM_FI_DEV_FB_USED"), GPU_LEGEND)],
                unit="decmbytes",
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU power",
                [Q(_gpu("DCGM_FI_DEV_POWER_USAGE"), GPU_LEGEND)],
                unit="watt",
            )
        )
        .with_panel(
            timeseries_panel(
                "Tensor core activity",
                [Q(_gpu("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), GPU_LEGEND)],
                unit="percentunit",
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU temperature",
                [Q(_gpu("DCGM_FI_DEV_GPU_TEMP"), GPU_LEGEND)],
                unit="celsius",
            )
        )
        .with_panel(
            timeseries_panel(
                "Job's GPU memory (its processes)",
                [Q(f"jobsight_gpu_job_memory_used_bytes{{{JOB}}}", GPU_LEGEND)],
                unit="bytes",
            )
        )
        .with_row(db.Row("Nodes"))
        .with_panel(
            timeseries_panel(
                "RDMA receive on the job's nodes",
                [
                    Q(
                        "sum by (Hostname) "
                        "(rate(node_infiniband_port_data_received_bytes_total[$__rate_interval]))"
                        f" {NODE_JOIN}",
                        "{{Hostname}}",
                    )
                ],
                unit="Bps",
            )
        )
        .with_panel(
            timeseries_panel(
                "RDMA transmit on the job's nodes",
                [
                    Q(
                        "sum by (Hostname) "
                        "(rate(node_infiniband_port_data_transmitted_bytes_total[$__rate_interval]))"
                        f" {NODE_JOIN}",
                        "{{Hostname}}",
                    )
                ],
                unit="Bps",
            )
        )
        .with_panel(
            timeseries_panel(
                "CPU of the job's processes",
                [
                    Q(
                        "sum by (Hostname) "
                        f"(rate(jobsight_job_cpu_seconds_total{{{JOB}}}[$__rate_interval]))",
                        "{{Hostname}}",
                    )
                ],
                description="CPU cores used.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Resident memory of the job's processes",
                [Q(f"sum by (Hostname) (jobsight_job_memory_rss_bytes{{{JOB}}})", "{{Hostname}}")],
                unit="bytes",
            )
        )
        .with_row(db.Row("Events"))
        .with_panel(
            timeseries_panel(
                "Log events by kind",
                [
                    Q(
                        f"sum by (kind) (increase(jobsight_log_events_total{{{JOB}}}[$__rate_interval]))",
                        "{{kind}}",
                    )
                ],
                description="nccl_timeout, cuda_oom, gpu_xid, ... from the job's logs and the kernel log.",
                width=24,
            )
        )
    )
    annotation_fields = {
        "Job alerts": {"titleFormat": "{{alertname}}", "tagKeys": "alertname,severity", "step": "15s"},
        "Alerts on the job's GPUs and nodes": {
            "titleFormat": "{{alertname}} on {{Hostname}}",
            "tagKeys": "alertname,severity,Hostname,gpu",
            "step": "15s",
        },
        "Log events": {"titleFormat": "{{kind}}", "tagKeys": "kind", "step": "1m"},
    }
    return Board(dashboard, annotation_fields)
