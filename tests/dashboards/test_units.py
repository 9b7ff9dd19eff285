"""Every panel that plots a documented metric shows it in the unit docs/metrics gives it: one row
per panel, the metric it plots and what the query does to it; the expected Grafana unit follows
from the documented unit (docs/metrics/gpu.md's unit column; elsewhere the base unit the metric's
name ends in, as the metric conventions require)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import pytest

from dashboards.render import build_all
from tests.support import REPO_ROOT

METRICS_DOCS = REPO_ROOT / "docs" / "metrics"

# (documented unit, what the query does) -> Grafana unit id
GRAFANA_UNIT = {
    ("percent 0-100", ""): "percent",
    ("ratio 0-1", ""): "percentunit",
    ("MiB", ""): "mbytes",  # binary: Grafana's "decmbytes" is 10^6 bytes, 4.9 % off
    ("W", ""): "watt",
    ("Celsius", ""): "celsius",
    ("MHz", "* 1000000"): "hertz",
    ("mJ", "rate / 1000"): "watt",
    ("mJ", "increase / 3.6e9"): "kwatth",
    ("ns", "rate / 1e9"): "percentunit",
    ("bytes", ""): "bytes",
    ("bytes", "rate"): "Bps",
    ("bytes/s", ""): "Bps",
    ("seconds", "rate"): "percentunit",
    ("Unix time, s", "* 1000"): "dateTimeAsIso",
}

# (dashboard, panel title, metric, what the query does)
PANELS = [
    ("jobsight-gpu", "GPU Temperature", "DCGM_FI_DEV_GPU_TEMP", ""),
    ("jobsight-gpu", "GPU Avg. Temp", "DCGM_FI_DEV_GPU_TEMP", ""),
    ("jobsight-gpu", "GPU Power Usage", "DCGM_FI_DEV_POWER_USAGE", ""),
    ("jobsight-gpu", "GPU Power Total", "DCGM_FI_DEV_POWER_USAGE", ""),
    ("jobsight-gpu", "GPU SM Clocks", "DCGM_FI_DEV_SM_CLOCK", "* 1000000"),
    ("jobsight-gpu", "GPU Utilization", "DCGM_FI_DEV_GPU_UTIL", ""),
    ("jobsight-gpu", "GPU Framebuffer Mem Used", "DCGM_FI_DEV_FB_USED", ""),
    ("jobsight-gpu", "Tensor Core Utilization", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", ""),
    ("jobsight-gpu", "Max temperature", "DCGM_FI_DEV_GPU_TEMP", ""),
    ("jobsight-gpu", "Power and thermal violation", "DCGM_FI_DEV_POWER_VIOLATION", "rate / 1e9"),
    ("jobsight-gpu", "Energy (average power)", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "rate / 1000"),
    ("jobsight-gpu", "SM and DRAM activity", "DCGM_FI_PROF_SM_ACTIVE", ""),
    ("jobsight-gpu", "NVLink throughput", "jobsight_gpu_nvlink_transmitted_bytes_total", "rate"),
    ("jobsight-gpu", "PCIe throughput", "DCGM_FI_PROF_PCIE_TX_BYTES", ""),
    ("jobsight-gpu", "HBM temperature", "DCGM_FI_DEV_MEMORY_TEMP", ""),
    ("jobsight-job", "GPU utilisation (avg)", "DCGM_FI_DEV_GPU_UTIL", ""),
    ("jobsight-job", "GPU power (avg total)", "DCGM_FI_DEV_POWER_USAGE", ""),
    ("jobsight-job", "GPU energy", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "increase / 3.6e9"),
    ("jobsight-job", "GPU memory (peak)", "DCGM_FI_DEV_FB_USED", ""),
    ("jobsight-job", "GPU utilisation", "DCGM_FI_DEV_GPU_UTIL", ""),
    ("jobsight-job", "GPU utilisation spread (min / median / max)", "DCGM_FI_DEV_GPU_UTIL", ""),
    ("jobsight-job", "GPU memory used", "DCGM_FI_DEV_FB_USED", ""),
    ("jobsight-job", "GPU power", "DCGM_FI_DEV_POWER_USAGE", ""),
    ("jobsight-job", "Tensor core activity", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", ""),
    ("jobsight-job", "SM and DRAM activity", "DCGM_FI_PROF_DRAM_ACTIVE", ""),
    ("jobsight-job", "GPU temperature", "DCGM_FI_DEV_GPU_TEMP", ""),
    ("jobsight-job", "NVLink throughput (job total)", "jobsight_gpu_nvlink_received_bytes_total", "rate"),
    ("jobsight-job", "Job's GPU memory (its processes)", "jobsight_gpu_job_memory_used_bytes", ""),
    ("jobsight-job", "XIDs", "jobsight_gpu_xid_last_seen_timestamp_seconds", "* 1000"),
    (
        "jobsight-job",
        "RDMA receive on the job's nodes",
        "node_infiniband_port_data_received_bytes_total",
        "rate",
    ),
    ("jobsight-job", "Resident memory of the job's processes", "jobsight_job_memory_rss_bytes", ""),
    ("jobsight-overview", "GPU utilisation (avg)", "DCGM_FI_DEV_GPU_UTIL", ""),
    ("jobsight-overview", "GPU power (total)", "DCGM_FI_DEV_POWER_USAGE", ""),
    ("jobsight-node", "Memory", "node_memory_MemTotal_bytes", ""),
    ("jobsight-node", "Memory pressure (PSI some)", "node_pressure_memory_waiting_seconds_total", "rate"),
    ("jobsight-node", "Pressure (PSI some): CPU and I/O", "node_pressure_cpu_waiting_seconds_total", "rate"),
    ("jobsight-node", "Disk I/O", "node_disk_read_bytes_total", "rate"),
    ("jobsight-node", "Network traffic", "node_network_receive_bytes_total", "rate"),
    ("jobsight-node", "Swap used", "node_memory_SwapTotal_bytes", ""),
    ("jobsight-node", "Resident memory by job", "jobsight_job_memory_rss_bytes", ""),
    ("jobsight-rdma", "Receive", "node_infiniband_port_data_received_bytes_total", "rate"),
    ("jobsight-rdma", "Link rate", "node_infiniband_rate_bytes_per_second", ""),
]


@cache
def documented_units() -> dict[str, str]:
    """metric -> unit, from the tables of docs/metrics/*.md that have a unit column."""
    units: dict[str, str] = {}
    for path in sorted(METRICS_DOCS.glob("*.md")):
        columns: list[str] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("|"):
                columns = []
                continue
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not columns:
                columns = cells
                continue
            match = re.fullmatch(r"`([A-Za-z_:][\w:]*)`", cells[0])
            if match and "unit" in columns and len(cells) == len(columns):
                units[match.group(1)] = cells[columns.index("unit")]
    return units


def documented_unit(metric: str) -> str:
    """The unit docs/metrics gives ``metric``, else the base unit its name ends in."""
    if metric in documented_units():
        return documented_units()[metric]
    for suffix, unit in (
        ("_bytes_per_second", "bytes/s"),
        ("_bytes_total", "bytes"),
        ("_bytes", "bytes"),
        ("_seconds_total", "seconds"),
    ):
        if metric.endswith(suffix):
            return unit
    raise AssertionError(f"no unit documented for {metric}")


def _panel(uid: str, title: str) -> dict[str, Any]:
    models = _models()
    panels = [p for top in models[uid]["panels"] for p in (top, *(top.get("panels") or []))]
    found: list[dict[str, Any]] = [p for p in panels if p.get("title") == title and p["type"] != "row"]
    assert len(found) == 1, f"{uid}: no single panel titled {title!r}"
    return found[0]


@cache
def _models() -> dict[str, dict[str, Any]]:
    return build_all()


def test_the_docs_give_the_gpu_units_the_table_relies_on() -> None:
    units = documented_units()
    assert units["DCGM_FI_DEV_FB_USED"] == "MiB"
    assert units["DCGM_FI_DEV_GPU_UTIL"] == "percent 0-100"
    assert units["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"] == "ratio 0-1"
    assert units["jobsight_gpu_xid_last_seen_timestamp_seconds"] == "Unix time, s"


@pytest.mark.parametrize(("uid", "title", "metric", "op"), PANELS, ids=[f"{u}/{t}" for u, t, _, _ in PANELS])
def test_panel_unit_matches_the_documented_unit(uid: str, title: str, metric: str, op: str) -> None:
    panel = _panel(uid, title)
    assert any(metric in target["expr"] for target in panel["targets"]), (title, metric)
    expected = GRAFANA_UNIT[(documented_unit(metric), op)]
    assert panel["fieldConfig"]["defaults"].get("unit") == expected


def test_no_panel_shows_mib_as_si_megabytes() -> None:
    for uid, model in _models().items():
        for top in model["panels"]:
            for panel in (top, *(top.get("panels") or [])):
                if panel["type"] != "row" and any(
                    "DCGM_FI_DEV_FB_USED" in t["expr"] for t in panel["targets"]
                ):
                    assert panel["fieldConfig"]["defaults"].get("unit") in {"mbytes", "percentunit"}, (
                        uid,
                        panel["title"],
                    )
