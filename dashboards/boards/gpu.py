"""GPU dashboard (uid ``jobsight-gpu``, variables ``Hostname`` and ``gpu``). The first eight panels
are those of NVIDIA's DCGM exporter dashboard (grafana.com 12239), with the same queries, units and
thresholds, selected by ``Hostname`` instead of ``instance``."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.panels import (
    Board,
    Q,
    base_dashboard,
    gauge_panel,
    query_variable,
    stat_panel,
    table_panel,
    timeseries_panel,
    xid_events_in_range,
)

UID = "jobsight-gpu"
SEL = 'Hostname=~"$Hostname", gpu=~"$gpu"'
LEGEND = "{{Hostname}} GPU {{gpu}}"


def build() -> Board:
    dashboard = (
        base_dashboard(
            UID, "jobsight / GPU", "Per-GPU health and activity (DCGM exporter dashboard 12239 queries)."
        )
        .with_variable(
            query_variable("Hostname", "label_values(DCGM_FI_DEV_GPU_TEMP, Hostname)", label="Host")
        )
        .with_variable(
            query_variable(
                "gpu", 'label_values(DCGM_FI_DEV_GPU_TEMP{Hostname=~"$Hostname"}, gpu)', label="GPU"
            )
        )
        .with_row(db.Row("DCGM exporter dashboard (12239)"))
        .with_panel(
            timeseries_panel(
                "GPU Temperature", [Q(f"DCGM_FI_DEV_GPU_TEMP{{{SEL}}}", LEGEND)], unit="celsius", width=18
            )
        )
        .with_panel(
            gauge_panel(
                "GPU Avg. Temp",
                Q(f"avg(DCGM_FI_DEV_GPU_TEMP{{{SEL}}})"),
                unit="celsius",
                min_value=0,
                max_value=100,
                thresholds=[(None, "green"), (83, "#EAB839"), (87, "red")],
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU Power Usage", [Q(f"DCGM_FI_DEV_POWER_USAGE{{{SEL}}}", LEGEND)], unit="watt", width=18
            )
        )
        .with_panel(
            gauge_panel(
                "GPU Power Total",
                Q(f"sum(DCGM_FI_DEV_POWER_USAGE{{{SEL}}})"),
                unit="watt",
                min_value=0,
                max_value=2400,
                thresholds=[(None, "green"), (1800, "#EAB839"), (2200, "red")],
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU SM Clocks", [Q(f"DCGM_FI_DEV_SM_CLOCK{{{SEL}}} * 1000000", LEGEND)], unit="hertz"
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU Utilization",
                [Q(f"DCGM_FI_DEV_GPU_UTIL{{{SEL}}}", LEGEND)],
                unit="percent",
                min_value=0,
                max_value=100,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU Framebuffer Mem Used", [Q(f"DCGM_FI_DEV_FB_USED{{{SEL}}}", LEGEND)], unit="decmbytes"
            )
        )
        .with_panel(
            timeseries_panel(
                "Tensor Core Utilization",
                [Q(f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{SEL}}}", LEGEND)],
                unit="percentunit",
                min_value=0,
                max_value=1,
            )
        )
        .with_row(db.Row("Health"))
        .with_panel(
            stat_panel(
                "GPUs up",
                Q(f"sum(jobsight_gpu_up{{{SEL}}})"),
                description="GPUs the exporter can talk to (jobsight_gpu_up == 1).",
            )
        )
        .with_panel(
            stat_panel(
                "GPUs lost",
                Q(f"count(jobsight_gpu_up{{{SEL}}} == 0) or vector(0)"),
                thresholds=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "XIDs in range",
                Q(xid_events_in_range(SEL)),
                thresholds=[(None, "green"), (1, "red")],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "Max temperature",
                Q(f"max(DCGM_FI_DEV_GPU_TEMP{{{SEL}}})"),
                unit="celsius",
                thresholds=[(None, "green"), (83, "#EAB839"), (87, "red")],
            )
        )
        .with_panel(
            table_panel(
                "Job on each GPU",
                [Q(f"jobsight_gpu_job_info{{{SEL}}}")],
                width=8,
                height=4,
                links=[
                    (
                        "Job dashboard",
                        "/d/jobsight-job/jobsight-job?var-job_id=${__data.fields.job_id}&${__url_time_range}",
                    )
                ],
            )
        )
        .with_panel(
            timeseries_panel(
                "XID errors (count since exporter start)",
                [Q(f"jobsight_gpu_xid_errors_total{{{SEL}}}", "{{Hostname}} GPU {{gpu}} XID {{xid}}")],
                description="Cumulative XID events per GPU and code; a step is an event. A series appears "
                "with the first XID of its code (see docs/runbooks/GPUXidError.md).",
            )
        )
        .with_panel(
            timeseries_panel(
                "Clock event reasons (bitmask)",
                [Q(f"DCGM_FI_DEV_CLOCKS_EVENT_REASONS{{{SEL}}}", LEGEND)],
                description="0x4 SwPowerCap, 0x8 HwSlowdown, 0x40 HwThermalSlowdown, 0x80 HwPowerBrake.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Power and thermal violation",
                [
                    Q(
                        f"rate(DCGM_FI_DEV_POWER_VIOLATION{{{SEL}}}[$__rate_interval]) / 1e9",
                        "{{Hostname}} GPU {{gpu}} power",
                    ),
                    Q(
                        f"rate(DCGM_FI_DEV_THERMAL_VIOLATION{{{SEL}}}[$__rate_interval]) / 1e9",
                        "{{Hostname}} GPU {{gpu}} thermal",
                    ),
                ],
                unit="percentunit",
                description="Fraction of time the GPU was held back by the power or thermal limit.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Energy (average power)",
                [Q(f"rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{SEL}}}[$__rate_interval]) / 1000", LEGEND)],
                unit="watt",
                description="From the energy counter (mJ), so short spikes are not missed.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Uncorrectable ECC errors and row-remap failures",
                [
                    Q(f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{SEL}}}", "{{Hostname}} GPU {{gpu}} DBE"),
                    Q(f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{SEL}}}", "{{Hostname}} GPU {{gpu}} remap failure"),
                ],
            )
        )
    )
    return Board(dashboard, {})
