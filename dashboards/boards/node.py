"""Node dashboard (uid ``jobsight-node``, variable ``Hostname``): CPU, memory, load, filesystems,
disk I/O, network, pressure, swap, OOM kills, per-job process accounting, the node's GPUs and the
exporters' own health - what node-exporter-full users look for. It opens on one host (the first);
All is ``.+``, not an alternation of every host."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.panels import (
    CLUSTER,
    Board,
    Q,
    base_dashboard,
    query_variable,
    series_link,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "jobsight-node"
H = f'{CLUSTER}, Hostname=~"$Hostname"'
FS = f'{H}, fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs"'


def _rate(metric: str) -> str:
    return f"rate({metric}{{{H}}}[$__rate_interval])"


def build() -> Board:
    dashboard = (
        base_dashboard(
            UID, "jobsight / Node", "One host: CPU, memory, disks, pressure, jobs on it, its GPUs."
        )
        .with_variable(
            query_variable("Hostname", f'label_values(up{{{CLUSTER}, Hostname!=""}}, Hostname)', label="Host")
        )
        .with_row(db.Row("Overview"))
        .with_panel(
            stat_panel(
                "Exporters up",
                Q(f"sum(up{{{H}}})"),
                description="Scrape targets of the host that answer.",
            )
        )
        .with_panel(
            stat_panel(
                "CPU utilisation",
                Q(f'1 - avg(rate(node_cpu_seconds_total{{{H}, mode="idle"}}[$__rate_interval]))'),
                unit="percentunit",
                thresholds=[(None, "green"), (0.9, "#EAB839")],
            )
        )
        .with_panel(
            stat_panel(
                "Memory used",
                Q(f"1 - sum(node_memory_MemAvailable_bytes{{{H}}}) / sum(node_memory_MemTotal_bytes{{{H}}})"),
                unit="percentunit",
                thresholds=[(None, "green"), (0.9, "#EAB839"), (0.95, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "OOM kills in range",
                Q(f"sum(increase(node_vmstat_oom_kill{{{H}}}[$__range]))"),
                thresholds=[(None, "green"), (1, "red")],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "Jobs on the host",
                Q(f"count(count by (job_id) (jobsight_job_processes{{{H}}}))"),
                description="Jobs with at least one process on the host.",
            )
        )
        .with_panel(stat_panel("GPUs", Q(f"count(jobsight_gpu_up{{{H}}})")))
        .with_row(db.Row("Resources"))
        .with_panel(
            timeseries_panel(
                "CPU by mode",
                [
                    Q(
                        f'sum by (Hostname, mode) (rate(node_cpu_seconds_total{{{H}, mode!="idle"}}'
                        "[$__rate_interval]))"
                        " / on (Hostname) group_left () "
                        f'count by (Hostname) (node_cpu_seconds_total{{{H}, mode="idle"}})',
                        "{{Hostname}} {{mode}}",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            timeseries_panel(
                "Memory",
                [
                    Q(
                        f"node_memory_MemTotal_bytes{{{H}}} - node_memory_MemAvailable_bytes{{{H}}}",
                        "{{Hostname}} used",
                    ),
                    Q(f"node_memory_MemTotal_bytes{{{H}}}", "{{Hostname}} total"),
                ],
                unit="bytes",
            )
        )
        .with_panel(
            timeseries_panel(
                "Filesystem space available",
                [
                    Q(
                        f"node_filesystem_avail_bytes{{{FS}}} / (node_filesystem_size_bytes{{{FS}}} > 0)",
                        "{{Hostname}} {{mountpoint}}",
                    )
                ],
                unit="percentunit",
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            timeseries_panel(
                "Memory pressure (PSI some)",
                [
                    Q(
                        f"rate(node_pressure_memory_waiting_seconds_total{{{H}}}[$__rate_interval])",
                        "{{Hostname}}",
                    )
                ],
                unit="percentunit",
                description="Share of time some task waited for memory.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Load average",
                [
                    Q(f"node_load1{{{H}}}", "{{Hostname}} 1m"),
                    Q(f"node_load5{{{H}}}", "{{Hostname}} 5m"),
                    Q(f"node_load15{{{H}}}", "{{Hostname}} 15m"),
                ],
                description="Runnable and uninterruptible tasks; compare with the number of CPUs.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Pressure (PSI some): CPU and I/O",
                [
                    Q(_rate("node_pressure_cpu_waiting_seconds_total"), "{{Hostname}} CPU"),
                    Q(_rate("node_pressure_io_waiting_seconds_total"), "{{Hostname}} I/O"),
                ],
                unit="percentunit",
                description="Share of time some task waited for a CPU / for I/O (a data loader starving).",
                no_value="No PSI: the kernel was booted without psi=1.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Disk I/O",
                [
                    Q(
                        f"sum by (Hostname, device) ({_rate('node_disk_read_bytes_total')})",
                        "{{Hostname}} {{device}} read",
                    ),
                    Q(
                        f"sum by (Hostname, device) ({_rate('node_disk_written_bytes_total')})",
                        "{{Hostname}} {{device}} write",
                    ),
                ],
                unit="Bps",
            )
        )
        .with_panel(
            timeseries_panel(
                "Network traffic",
                [
                    Q(
                        f'rate(node_network_receive_bytes_total{{{H}, device!="lo"}}[$__rate_interval])',
                        "{{Hostname}} {{device}} receive",
                    ),
                    Q(
                        f'rate(node_network_transmit_bytes_total{{{H}, device!="lo"}}[$__rate_interval])',
                        "{{Hostname}} {{device}} transmit",
                    ),
                ],
                unit="Bps",
                description="Ethernet and IPoIB interfaces (RDMA traffic is on the RDMA dashboard).",
            )
        )
        .with_panel(
            timeseries_panel(
                "Swap used",
                [
                    Q(
                        f"node_memory_SwapTotal_bytes{{{H}}} - node_memory_SwapFree_bytes{{{H}}}",
                        "{{Hostname}}",
                    )
                ],
                unit="bytes",
                description="Swap in use: a training host that swaps stalls its GPUs.",
                no_value="No swap configured.",
            )
        )
        .with_row(db.Row("Jobs on the host"))
        .with_panel(
            timeseries_panel(
                "CPU by job",
                [
                    Q(
                        f"sum by (job_id) (rate(jobsight_job_cpu_seconds_total{{{H}}}[$__rate_interval]))",
                        "{{job_id}}",
                    )
                ],
                description="CPU cores used by each job's processes; click a line for the job's dashboard.",
                links=[series_link("Job dashboard", "jobsight-job", job_id="job_id")],
            )
        )
        .with_panel(
            timeseries_panel(
                "Resident memory by job",
                [Q(f"sum by (job_id) (jobsight_job_memory_rss_bytes{{{H}}})", "{{job_id}}")],
                unit="bytes",
            )
        )
        .with_panel(
            timeseries_panel(
                "I/O by job",
                [
                    Q(
                        f"sum by (job_id) (rate(jobsight_job_io_read_bytes_total{{{H}}}[$__rate_interval]))",
                        "{{job_id}} read",
                    ),
                    Q(
                        f"sum by (job_id) (rate(jobsight_job_io_write_bytes_total{{{H}}}[$__rate_interval]))",
                        "{{job_id}} write",
                    ),
                ],
                unit="Bps",
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU utilisation",
                [Q(f"DCGM_FI_DEV_GPU_UTIL{{{H}}}", "{{Hostname}} GPU {{gpu}}")],
                unit="percent",
                min_value=0,
                max_value=100,
                no_value="No GPUs on the host (or its GPU exporter is not scraped).",
                links=[series_link("GPU dashboard", "jobsight-gpu", Hostname="Hostname", gpu="gpu")],
            )
        )
        .with_row(db.Row("Exporters"))
        .with_panel(
            table_panel(
                "Collector success",
                [Q(f'{{__name__=~"jobsight_scrape_collector_success|node_scrape_collector_success", {H}}}')],
                description="1 = the collector's last scrape succeeded.",
                width=12,
            )
        )
        .with_panel(
            timeseries_panel(
                "Collector duration",
                [
                    Q(
                        f'{{__name__=~"jobsight_scrape_collector_duration_seconds|node_scrape_collector_duration_seconds",'
                        f" {H}}}",
                        "{{instance}} {{collector}}",
                    )
                ],
                unit="s",
            )
        )
    )
    return Board(dashboard, {})
