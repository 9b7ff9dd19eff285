"""Job dashboard (uid ``jobsight-job``, variable ``job_id``): why the job failed (top row), its GPUs,
its nodes and its events, with the job's alerts, XIDs and log events as annotations. The API links
here as ``<grafana>/d/jobsight-job/jobsight-job?var-job_id=<id>&from=<ms>&to=<ms>``.

Every query is bounded by the job: two hidden variables list the job's hosts and GPUs from the
maximum over the dashboard's time range of its ``jobsight_gpu_job_info`` (and process) series,
and every panel selects ``Hostname=~"$job_hosts", UUID=~"$job_gpus"``. So a query reads only the
job's series, however large the cluster, and a GPU that was lost, or a job that ended, stays on the
dashboard after the exporter dropped its info series: no join with the info metric at query time.
The stat panels are computed over ``$__range``, so they show a finished job, not the present."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.panels import (
    CLUSTER,
    Board,
    Q,
    base_dashboard,
    new_events,
    prometheus_annotation,
    query_variable,
    series_link,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "jobsight-job"
JOB = f'{CLUSTER}, job_id="$job_id"'
HOSTS = f'{CLUSTER}, Hostname=~"$job_hosts"'
GPUS = f'{HOSTS}, UUID=~"$job_gpus"'
GPU_LEGEND = "{{Hostname}} GPU {{gpu}}"
JOB_INFO = f"jobsight_gpu_job_info{{{JOB}}}"
NO_JOB_ID = '""'
# The job's own series over the dashboard's range: GPU info (exporter) and processes (node exporter),
# so that a job that died before CUDA started still has its hosts.
JOB_SERIES = f'{{__name__=~"jobsight_gpu_job_info|jobsight_job_processes", {JOB}}}'
# Grafana's built-in annotation store (annotations added through its HTTP API).
GRAFANA_ANNOTATIONS = dm.DataSourceRef(type_val="grafana", uid="-- Grafana --")
NODE_LINK = (
    "Node dashboard",
    "/d/jobsight-node/jobsight-node?var-Hostname=${__data.fields.Hostname}&${__url_time_range}",
)
GPU_LINK = (
    "GPU dashboard",
    "/d/jobsight-gpu/jobsight-gpu?var-Hostname=${__data.fields.Hostname}"
    "&var-gpu=${__data.fields.gpu}&${__url_time_range}",
)
# The jobsight API's address, for the job page and its logs (`jobsight up` serves it here).
DEFAULT_API_URL = "http://127.0.0.1:8000"
NO_GPM = (
    "No DCGM_FI_PROF_* series: NVML GPM exists only on Hopper and newer GPUs (none on A100, L40S); "
    "use GPU utilisation there."
)
NO_JOB = "The job has no GPU or process series in this time range (widen the range, or check the job id)."


def _events(selector: str, window: str) -> str:
    return new_events(f"jobsight_log_events_total{{{selector}}}", window)


def build() -> Board:
    dashboard = (
        base_dashboard(
            UID,
            "jobsight / Job",
            "One training job: why it failed, its GPUs, nodes, fabric traffic, alerts and events.",
        )
        .with_variable(
            query_variable(
                "job_id",
                'label_values({__name__=~"jobsight_gpu_job_info|jobsight_job_status|jobsight_job_processes",'
                f" {CLUSTER}}}, job_id)",
                label="Job",
                multi=False,
                include_all=False,
            )
        )
        .with_variable(
            query_variable(
                "job_hosts",
                f"query_result(max by (Hostname) (max_over_time({JOB_SERIES}[$__range])))",
                label="Job's hosts",
                regex='/Hostname="([^"]+)"/',
                all_value=None,
                hidden=True,
                default_all=True,
            )
        )
        .with_variable(
            query_variable(
                "job_gpus",
                f"query_result(max by (UUID) (max_over_time(jobsight_gpu_job_info{{{JOB}}}[$__range])))",
                label="Job's GPUs",
                regex='/UUID="([^"]+)"/',
                all_value=None,
                hidden=True,
                default_all=True,
            )
        )
        .with_variable(
            db.ConstantVariable("api_url").label("jobsight API").value(DEFAULT_API_URL)
        )
        .link(
            db.DashboardLink("Job page")
            .type(dm.DashboardLinkType.LINK)
            .url("${api_url}/jobs/${job_id}")
            .target_blank(True)
        )
        .link(
            db.DashboardLink("Job logs")
            .type(dm.DashboardLinkType.LINK)
            .url("${api_url}/v1/jobs/${job_id}/logs")
            .target_blank(True)
        )
        .link(
            db.DashboardLink("Job summary (diagnosis)")
            .type(dm.DashboardLinkType.LINK)
            .url("${api_url}/v1/jobs/${job_id}/summary")
            .target_blank(True)
        )
        .annotation(prometheus_annotation("Job alerts", f'ALERTS{{{JOB}, alertstate="firing"}}', "red"))
        .annotation(
            prometheus_annotation(
                "Alerts on the job's GPUs and nodes",
                f'ALERTS{{alertstate="firing", {HOSTS}, job_id=""}}',
                "orange",
            )
        )
        .annotation(
            prometheus_annotation(
                "XIDs",
                # The series' value is when the XID was seen (s); Grafana places the annotation there.
                "max by (Hostname, gpu, xid) "
                f"(jobsight_gpu_xid_last_seen_timestamp_seconds{{{GPUS}}}) * 1000",
                "dark-red",
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
        .with_row(db.Row("Why it failed"))
        .with_panel(
            table_panel(
                "Status",
                [Q(f"jobsight_job_status{{{JOB}}}")],
                description="As registered in the jobsight API, at the end of the range (its /metrics "
                "keeps a finished job 24 h). The diagnosis - the first cause with its evidence - is on "
                "the job page and in the job summary (links above).",
                width=6,
                height=5,
                no_value="The job is not registered with the jobsight API (or its /metrics is not scraped).",
            )
        )
        .with_panel(
            table_panel(
                "XIDs",
                [
                    Q(
                        "max by (Hostname, gpu, xid) "
                        f"(max_over_time(jobsight_gpu_xid_last_seen_timestamp_seconds{{{GPUS}}}[$__range]))"
                        " * 1000 > (time() - $__range_s) * 1000"
                    )
                ],
                unit="dateTimeAsIso",
                description="Critical XIDs on the job's GPUs in the time range: code and when last seen "
                "(79: fallen off the bus; 48/63/64/94/95: memory; see docs/runbooks/GPUXidError.md).",
                width=6,
                height=5,
                links=[GPU_LINK, NODE_LINK],
                no_value="No XID on the job's GPUs in this time range.",
            )
        )
        .with_panel(
            stat_panel(
                "GPUs lost",
                Q(f"count(min by (Hostname, UUID) (min_over_time(jobsight_gpu_up{{{GPUS}}}[$__range])) == 0)"
                  " or vector(0)"),
                thresholds=[(None, "green"), (1, "red")],
                description="The job's GPUs that stopped answering NVML at some point in the range.",
                width=3,
                height=5,
            )
        )
        .with_panel(
            stat_panel(
                "Nodes down",
                Q(f"count(min by (Hostname) (min_over_time(up{{{HOSTS}}}[$__range])) == 0) or vector(0)"),
                thresholds=[(None, "green"), (1, "red")],
                description="The job's hosts with an exporter that failed a scrape in the range.",
                width=3,
                height=5,
            )
        )
        .with_panel(
            stat_panel(
                "OOM kills",
                Q(f"sum({new_events(f'node_vmstat_oom_kill{{{HOSTS}}}', '$__range')}) or vector(0)"),
                thresholds=[(None, "green"), (1, "red")],
                decimals=0,
                description="Kernel OOM kills on the job's hosts in the range (node_vmstat_oom_kill).",
                width=3,
                height=5,
            )
        )
        .with_panel(
            stat_panel(
                "IB link downs",
                Q(
                    f"sum({new_events(f'node_infiniband_link_downed_total{{{HOSTS}}}', '$__range')})"
                    " or vector(0)"
                ),
                thresholds=[(None, "green"), (1, "red")],
                decimals=0,
                description="InfiniBand/RoCE link-down events on the job's hosts in the range.",
                width=3,
                height=5,
            )
        )
        .with_panel(
            table_panel(
                "Events in range by kind",
                [
                    Q(
                        f"sum by (kind) ({_events(JOB, '$__range')})"
                        f" or sum by (kind) ({_events(HOSTS + ', job_id=' + NO_JOB_ID, '$__range')})"
                    )
                ],
                description="Log and kernel events in the range, counted from their first occurrence: "
                "the job's own (job_id), and, for kinds the job has none of, those on its hosts with no "
                "job (the kernel log where no job map names the job).",
                width=12,
                height=5,
                no_value="No log events for the job or its hosts in this time range.",
            )
        )
        .with_panel(
            table_panel(
                "The job's GPUs",
                [Q(f"max by (Hostname, gpu, UUID) (max_over_time({JOB_INFO}[$__range]))")],
                description="Every GPU the job held in the range; click for the GPU or node dashboard.",
                width=12,
                height=5,
                links=[GPU_LINK, NODE_LINK],
                no_value=NO_JOB,
            )
        )
        .with_row(db.Row("Job"))
        .with_panel(
            stat_panel(
                "GPUs",
                Q(f"count(max by (UUID) (max_over_time(jobsight_gpu_job_info{{{JOB}}}[$__range])))"),
                description="GPUs the job held at any time in the range.",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            stat_panel(
                "Nodes",
                Q(f"count(max by (Hostname) (max_over_time({JOB_SERIES}[$__range])))"),
                description="Hosts with the job's GPUs or processes at any time in the range.",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            stat_panel(
                "GPU utilisation (avg)",
                Q(f"avg(avg_over_time(DCGM_FI_DEV_GPU_UTIL{{{GPUS}}}[$__range]))"),
                unit="percent",
                thresholds=[(None, "red"), (10, "#EAB839"), (50, "green")],
                description="Average over the job's GPUs and the time range.",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            stat_panel(
                "GPU power (avg total)",
                Q(f"sum(avg_over_time(DCGM_FI_DEV_POWER_USAGE{{{GPUS}}}[$__range]))"),
                unit="watt",
                description="Sum over the job's GPUs of each GPU's average draw in the range.",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            stat_panel(
                "GPU energy",
                Q(
                    f"sum({new_events(f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{GPUS}}}', '$__range')})"
                    " / 3.6e9"
                ),
                unit="kwatth",
                description="Energy the job's GPUs used in the range (energy counter, mJ).",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            stat_panel(
                "GPU memory (peak)",
                Q(f"max(max_over_time(DCGM_FI_DEV_FB_USED{{{GPUS}}}[$__range]))"),
                unit="mbytes",
                description="The highest framebuffer use of any of the job's GPUs in the range (MiB).",
                no_value=NO_JOB,
            )
        )
        .with_row(db.Row("GPUs"))
        .with_panel(
            timeseries_panel(
                "GPU utilisation",
                [Q(f"DCGM_FI_DEV_GPU_UTIL{{{GPUS}}}", GPU_LEGEND)],
                unit="percent",
                min_value=0,
                max_value=100,
                description="Share of time a kernel ran, per GPU; a GPU spinning in NCCL shows 100 % too. "
                "Click a line for the GPU's dashboard.",
                no_value=NO_JOB,
                links=[series_link("GPU dashboard", "jobsight-gpu", Hostname="Hostname", gpu="gpu")],
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU utilisation spread (min / median / max)",
                [
                    Q(f"min(DCGM_FI_DEV_GPU_UTIL{{{GPUS}}})", "min"),
                    Q(f"quantile(0.5, DCGM_FI_DEV_GPU_UTIL{{{GPUS}}})", "median"),
                    Q(f"max(DCGM_FI_DEV_GPU_UTIL{{{GPUS}}})", "max"),
                ],
                unit="percent",
                min_value=0,
                max_value=100,
                description="Three lines however many GPUs: a min far below the median is a straggler "
                "or a stuck rank.",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU memory used",
                [Q(f"DCGM_FI_DEV_FB_USED{{{GPUS}}}", GPU_LEGEND)],
                unit="mbytes",
                description="Framebuffer memory used on each of the job's GPUs (MiB), all processes.",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU power",
                [Q(f"DCGM_FI_DEV_POWER_USAGE{{{GPUS}}}", GPU_LEGEND)],
                unit="watt",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            timeseries_panel(
                "Tensor core activity",
                [Q(f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{GPUS}}}", GPU_LEGEND)],
                unit="percentunit",
                min_value=0,
                max_value=1,
                description="Share of cycles the tensor pipes were busy: real training work.",
                no_value=NO_GPM,
            )
        )
        .with_panel(
            timeseries_panel(
                "SM and DRAM activity",
                [
                    Q(f"avg(DCGM_FI_PROF_SM_ACTIVE{{{GPUS}}})", "SM active (avg)"),
                    Q(f"avg(DCGM_FI_PROF_DRAM_ACTIVE{{{GPUS}}})", "DRAM active (avg)"),
                ],
                unit="percentunit",
                min_value=0,
                max_value=1,
                no_value=NO_GPM,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU temperature",
                [Q(f"DCGM_FI_DEV_GPU_TEMP{{{GPUS}}}", GPU_LEGEND)],
                unit="celsius",
                no_value=NO_JOB,
            )
        )
        .with_panel(
            timeseries_panel(
                "NVLink throughput (job total)",
                [
                    Q(
                        f"sum(rate(jobsight_gpu_nvlink_transmitted_bytes_total{{{GPUS}}}[$__rate_interval]))",
                        "transmit",
                    ),
                    Q(
                        f"sum(rate(jobsight_gpu_nvlink_received_bytes_total{{{GPUS}}}[$__rate_interval]))",
                        "receive",
                    ),
                ],
                unit="Bps",
                no_value="No NVLink counters: PCIe GPUs have no NVLink.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Job's GPU memory (its processes)",
                [Q(f"jobsight_gpu_job_memory_used_bytes{{{JOB}}}", GPU_LEGEND)],
                unit="bytes",
                description="GPU memory held by the job's own processes (NVML per process), in bytes.",
                no_value="No per-process GPU memory: the job's processes are gone or not visible.",
            )
        )
        .with_row(db.Row("Nodes"))
        .with_panel(
            timeseries_panel(
                "RDMA receive on the job's nodes",
                [
                    Q(
                        "sum by (Hostname) "
                        f"(rate(node_infiniband_port_data_received_bytes_total{{{HOSTS}}}[$__rate_interval]))",
                        "{{Hostname}}",
                    )
                ],
                unit="Bps",
                description="All InfiniBand/RoCE ports of each host the job ran on.",
                no_value="No RDMA ports on the job's hosts.",
            )
        )
        .with_panel(
            timeseries_panel(
                "RDMA transmit on the job's nodes",
                [
                    Q(
                        "sum by (Hostname) "
                        f"(rate(node_infiniband_port_data_transmitted_bytes_total{{{HOSTS}}}[$__rate_interval]))",
                        "{{Hostname}}",
                    )
                ],
                unit="Bps",
                no_value="No RDMA ports on the job's hosts.",
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
                description="CPU cores used by the job's processes on each host; click for the node.",
                links=[series_link("Node dashboard", "jobsight-node", Hostname="Hostname")],
                no_value="No per-job accounting (node exporter's jobs collector off, or no cgroup).",
            )
        )
        .with_panel(
            timeseries_panel(
                "Resident memory of the job's processes",
                [Q(f"sum by (Hostname) (jobsight_job_memory_rss_bytes{{{JOB}}})", "{{Hostname}}")],
                unit="bytes",
                no_value="No per-job accounting (node exporter's jobs collector off, or no cgroup).",
            )
        )
        .with_row(db.Row("Events"))
        .with_panel(
            timeseries_panel(
                "Log events by kind",
                [Q(f"sum by (kind) ({_events(JOB, '$__interval')})", "{{kind}}")],
                description="New events per step, the first of each kind included: nccl_timeout, "
                "cuda_oom, gpu_xid, ... from the job's logs and the kernel log.",
                width=24,
                interval="1m",
                bars=True,
                no_value="No log events for the job in this time range.",
            )
        )
    )
    annotation_fields: dict[str, dict[str, object]] = {
        "Job alerts": {"titleFormat": "{{alertname}}", "tagKeys": "alertname,severity", "step": "15s"},
        "Alerts on the job's GPUs and nodes": {
            "titleFormat": "{{alertname}} on {{Hostname}}",
            "tagKeys": "alertname,severity,Hostname,gpu",
            "step": "15s",
        },
        "XIDs": {
            "titleFormat": "XID {{xid}} on {{Hostname}} GPU {{gpu}}",
            "tagKeys": "xid,Hostname,gpu",
            "step": "1m",
            "useValueForTime": True,
        },
        "Log events": {"titleFormat": "{{kind}}", "tagKeys": "kind", "step": "1m"},
    }
    return Board(dashboard, annotation_fields)
