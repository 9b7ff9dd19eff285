"""Scenario parsing, clear errors, the Python API, and reload on change."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporters.gpu.scenario import (
    EccFault,
    GpuLostFault,
    GpuSet,
    Scenario,
    ScenarioFile,
    TimePoint,
    XidFault,
    default_scenario,
    load_scenario,
    parse_scenario,
    write_scenario,
)
from jobsight.errors import ConfigError
from tests.support import FIXTURES

SCENARIOS = FIXTURES / "gpu" / "scenarios"


def test_full_scenario_parses() -> None:
    scenario = load_scenario(SCENARIOS / "full.yaml")
    assert scenario.hostname == "node2"
    assert scenario.gpu_count == 4
    assert isinstance(scenario.gpus, GpuSet) and scenario.gpus.power_limit_w == 700
    job = scenario.jobs[0]
    assert job.start == TimePoint(offset_s=0.0) and job.until == TimePoint(offset_s=3600.0)
    assert scenario.jobs[1].start == TimePoint(offset_s=600.0)
    kinds = [fault.kind for fault in scenario.faults]
    assert kinds == ["xid", "ecc", "gpu_lost", "field_unsupported", "throttle"]
    throttle_at = scenario.faults[4].at
    assert throttle_at is not None
    assert throttle_at.epoch_s == datetime(2026, 11, 29, 6, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad-field.yaml", r"faults\.0\.field_unsupported\.field: .*unknown field 'DCGM_FI_DEV_NOT_A_FIELD'"),
        ("bad-gpu-index.yaml", r"jobs\.0\.gpus: GPU 2 does not exist \(the scenario has 2 GPUs, 0-1\)"),
        ("bad-yaml.yaml", r"not valid YAML"),
        ("bad-kind.yaml", r"faults\.0: .*'meteor'"),
    ],
)
def test_bad_scenarios_name_the_file_and_the_problem(name: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_scenario(SCENARIOS / name)
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"gpus": 0}, "gpus"),
        ({"gpus": 2, "jobs": [{"job_id": 'x"}', "gpus": [0]}]}, "jobs.0.job_id"),
        ({"gpus": 2, "faults": [{"kind": "xid", "gpu": 0, "xid": 79, "at": "soon"}]}, "neither a duration"),
        ({"gpus": 2, "faults": [{"kind": "xid", "gpu": 0, "xid": 79, "at": -5}]}, "must not be negative"),
        ({"gpus": 2, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"gpus": 2, "utilization": [{"pattern": "constant"}]}, "needs 'value'"),
        ({"gpus": 2, "faults": [{"kind": "throttle", "gpu": 0, "reasons": ["lazy"]}]}, "unknown reasons"),
    ],
)
def test_field_errors_are_precise(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match="test: ") as info:
        parse_scenario(data, "test")
    assert expected in str(info.value)


def test_python_api_round_trips_through_yaml(tmp_path: Path) -> None:
    scenario = default_scenario(8, hostname="node2").with_faults(
        XidFault(gpu=3, xid=79), GpuLostFault(gpu=3, at=TimePoint(offset_s=5), until=TimePoint(offset_s=65)),
        EccFault(gpu=1, dbe=2, at=TimePoint(epoch_s=1_800_000_000.0)),
    )
    path = tmp_path / "node2.yaml"
    write_scenario(path, scenario)
    again = load_scenario(path)
    assert again == scenario
    assert not [p for p in tmp_path.iterdir() if p.name != "node2.yaml"]  # no temp file left


def test_with_faults_validates() -> None:
    with pytest.raises(ConfigError, match=r"scenario: .*faults\.0\.gpu: GPU 8 does not exist"):
        default_scenario(8).with_faults(XidFault(gpu=8, xid=79))


def test_default_scenario_assigns_a_job_per_four_gpus() -> None:
    scenario = default_scenario(8)
    assert [(job.job_id, job.gpus) for job in scenario.jobs] == [
        ("sim-1000", [0, 1, 2, 3]), ("sim-1001", [4, 5, 6, 7])
    ]
    with pytest.raises(ConfigError, match="1-64"):
        default_scenario(0)


def _touch_later(path: Path) -> None:
    """Make sure the rewrite is seen even on a coarse-mtime file system."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_scenario_file_reloads_on_change_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    shutil.copy(SCENARIOS / "lost-gpu.yaml", path)
    source = ScenarioFile(path)
    assert len(source.current().faults) == 2

    write_scenario(path, source.current().with_faults(XidFault(gpu=3, xid=48)))
    assert len(source.current().faults) == 3
    assert source.reloads == 1

    path.write_text("gpus: 8\nfaults: [{kind: xid, gpu: 99, xid: 79}]\n")
    _touch_later(path)
    assert len(source.current().faults) == 3  # bad edit: last good scenario stays
    assert source.reload_errors == 1 and source.last_error is not None
    assert "GPU 99 does not exist" in source.last_error

    path.write_text("gpus: 4\n")
    _touch_later(path)
    assert source.current().gpu_count == 8
    assert source.last_error is not None and "needs a restart" in source.last_error

    write_scenario(path, Scenario(gpus=8))
    assert source.current().faults == [] and source.last_error is None


def test_scenario_file_bad_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ScenarioFile(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        ScenarioFile(SCENARIOS / "bad-gpu-index.yaml")


def test_shipped_demo_scenarios_parse() -> None:
    demo = Path(__file__).resolve().parents[3] / "exporters" / "gpu" / "scenarios"
    node1, node2 = load_scenario(demo / "node1.yaml"), load_scenario(demo / "node2.yaml")
    assert (node1.hostname, node1.gpu_count, node2.hostname, node2.gpu_count) == ("node1", 8, "node2", 8)
    assert {job.job_id for job in node2.jobs} == {"4711", "4712"}
