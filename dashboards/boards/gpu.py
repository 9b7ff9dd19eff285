"""GPU dashboard (uid ``jobsight-gpu``, variables ``Hostname`` and ``gpu``). The first eight panels
are those of NVIDIA's DCGM exporter dashboard (grafana.com 12239), with the same queries selected by
``Hostname`` instead of ``instance``; two are corrected: framebuffer memory is MiB (``mbytes``, not
12239's SI ``decmbytes``), and "GPU Power Total" is measured against the GPUs' power limits by
model, not 12239's fixed 2,400 W. It opens on one host (All is ``.+``, not a host alternation)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.panels import (
    CLUSTER,
    Board,
    Q,
    base_dashboard,
    gauge_panel,
    power_limit_w,
    query_variable,
    stat_panel,
    table_panel,
    timeseries_panel,
    xid_events_in_range,
)

UID = "jobsight-gpu"
SEL = f'{CLUSTER}, Hostname=~"$Hostname", gpu=~"$gpu"'
LEGEND = "{{Hostname}} GPU {{gpu}}"
NO_GPM = (
    "No DCGM_FI_PROF_* series: they come from NVML GPM, which only Hopper and newer GPUs have "
    "(none on A100, A30, L40S, V100, T4), and not on the exporter's first read."
)
JOB_LINK = (
    "Job dashboard",
    "/d/jobsight-job/jobsight-job?var-job_id=${__data.fields.job_id}&${__url_time_range}",
)
NODE_LINK = (
    "Node dashboard",
    "/d/jobsight-node/jobsight-node?var-Hostname=${__data.fields.Hostname}&${__url_time_range}",
)
# (title, bit, meaning): the clock-event reasons that slow a training job down.
CLOCK_BITS = (
    ("SW power cap", 0x4, "power draw reached the power limit"),
    ("HW slowdown", 0x8, "hardware slowdown (power brake or thermal, HW)"),
    ("SW thermal", 0x20, "temperature above the software thermal limit"),
    ("HW thermal", 0x40, "hardware thermal slowdown"),
    ("HW power brake", 0x80, "external power brake (e.g. the PSU)"),
)


def _bit(bit: int) -> str:
    return f"floor(DCGM_FI_DEV_CLOCKS_EVENT_REASONS{{{SEL}}} / {bit}) % 2"


def build() -> Board:
    dashboard = (
        base_dashboard(
            UID, "jobsight / GPU", "Per-GPU health and activity (DCGM exporter dashboard 12239 queries)."
        )
        .with_variable(
            query_variable(
                "Hostname",
                f"label_values(DCGM_FI_DEV_GPU_TEMP{{{CLUSTER}}}, Hostname)",
                label="Host",
            )
        )
        .with_variable(
            query_variable(
                "gpu",
                f'label_values(DCGM_FI_DEV_GPU_TEMP{{{CLUSTER}, Hostname=~"$Hostname"}}, gpu)',
                label="GPU",
                default_all=True,
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
                max_value=5600,
                # percent of the selected GPUs' summed power limit (query B)
                thresholds=[(None, "green"), (80, "#EAB839"), (95, "red")],
                max_query=Q(power_limit_w(SEL), "power limit"),
                description="Total draw of the selected GPUs; the maximum is their summed board power "
                "limit by model (700 W for an H100 SXM), yellow from 80 %, red from 95 %.",
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
                description="Share of time a kernel ran (NVML): 100 % for a GPU spinning in NCCL too; "
                "SM and tensor activity below say how much work was done.",
                no_value="No utilisation: on a MIG-enabled GPU NVML has none (see the GPU's instances).",
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU Framebuffer Mem Used",
                [Q(f"DCGM_FI_DEV_FB_USED{{{SEL}}}", LEGEND)],
                unit="mbytes",
                description="DCGM_FI_DEV_FB_USED is in MiB (shown as binary MB, unlike 12239's SI unit).",
            )
        )
        .with_panel(
            timeseries_panel(
                "Tensor Core Utilization",
                [Q(f"DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{{SEL}}}", LEGEND)],
                unit="percentunit",
                min_value=0,
                max_value=1,
                no_value=NO_GPM,
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
                description="GPUs that stopped answering NVML (XID 79, fallen off the bus): reset or drain.",
            )
        )
        .with_panel(
            stat_panel(
                "XIDs in range",
                Q(xid_events_in_range(SEL)),
                thresholds=[(None, "green"), (1, "red")],
                decimals=0,
                description="Critical XID events in the time range, the first of each code included.",
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
                links=[JOB_LINK, NODE_LINK],
                description="jobsight_gpu_job_info: one row per job holding a GPU (two jobs may share one).",
                no_value="No job holds the selected GPUs now.",
            )
        )
        .with_panel(
            timeseries_panel(
                "XID errors (count since exporter start)",
                [Q(f"jobsight_gpu_xid_errors_total{{{SEL}}}", "{{Hostname}} GPU {{gpu}} XID {{xid}}")],
                description="Cumulative XID events per GPU and code; a step is an event. A series appears "
                "with the first XID of its code (see docs/runbooks/GPUXidError.md).",
                no_value="No XID on the selected GPUs since their exporters started.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Clock event reasons",
                [Q(_bit(bit), f"{LEGEND} {name}") for name, bit, _ in CLOCK_BITS],
                min_value=0,
                max_value=1,
                description="1 while the reason holds back the SM clock (bits of "
                "DCGM_FI_DEV_CLOCKS_EVENT_REASONS): "
                + "; ".join(f"{name} (0x{bit:x}): {meaning}" for name, bit, meaning in CLOCK_BITS)
                + ".",
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
                description="Volatile double-bit ECC errors (since the last reset) and row-remap failure "
                "(1: the GPU needs replacing). Absent where ECC is off or the GPU predates Ampere.",
                no_value="No ECC/row-remap series: ECC mode off, or a GPU before Ampere.",
            )
        )
        .with_row(db.Row("Activity and interconnect"))
        .with_panel(
            timeseries_panel(
                "SM and DRAM activity",
                [
                    Q(f"DCGM_FI_PROF_SM_ACTIVE{{{SEL}}}", LEGEND + " SM"),
                    Q(f"DCGM_FI_PROF_DRAM_ACTIVE{{{SEL}}}", LEGEND + " DRAM"),
                ],
                unit="percentunit",
                min_value=0,
                max_value=1,
                description="Share of cycles an SM had a warp / the memory interface moved data (NVML GPM).",
                no_value=NO_GPM,
            )
        )
        .with_panel(
            timeseries_panel(
                "NVLink throughput",
                [
                    Q(
                        f"rate(jobsight_gpu_nvlink_transmitted_bytes_total{{{SEL}}}[$__rate_interval])",
                        LEGEND + " transmit",
                    ),
                    Q(
                        f"rate(jobsight_gpu_nvlink_received_bytes_total{{{SEL}}}[$__rate_interval])",
                        LEGEND + " receive",
                    ),
                ],
                unit="Bps",
                description="All NVLink links of the GPU (NVML throughput counters).",
                no_value="No NVLink counters: a PCIe GPU (no NVLink), or a driver without the fields.",
            )
        )
        .with_panel(
            timeseries_panel(
                "PCIe throughput",
                [
                    Q(f"DCGM_FI_PROF_PCIE_TX_BYTES{{{SEL}}}", LEGEND + " transmit"),
                    Q(f"DCGM_FI_PROF_PCIE_RX_BYTES{{{SEL}}}", LEGEND + " receive"),
                ],
                unit="Bps",
                no_value=NO_GPM,
            )
        )
        .with_panel(
            timeseries_panel(
                "PCIe replays",
                [Q(f"increase(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{SEL}}}[$__interval])", LEGEND)],
                interval="1m",
                bars=True,
                description="PCIe retries per step: a steady rate means a marginal link or riser.",
            )
        )
        .with_panel(
            timeseries_panel(
                "HBM temperature",
                [Q(f"DCGM_FI_DEV_MEMORY_TEMP{{{SEL}}}", LEGEND)],
                unit="celsius",
                description="Memory (HBM) temperature; HBM throttles near 95 °C.",
                no_value="No memory temperature: GDDR parts (L4, L40S, A10) do not report it.",
            )
        )
    )
    return Board(dashboard, {})
