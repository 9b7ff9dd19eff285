"""The simulated backend: plausible values that move, determinism, and every fault kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exporters.gpu import fields as f
from exporters.gpu.model import XidEvent
from exporters.gpu.scenario import (
    AnyFault,
    EccFault,
    FieldUnsupportedFault,
    FixedScenario,
    GpuLostFault,
    JobAssignment,
    Scenario,
    ScenarioFile,
    ThrottleFault,
    TimePoint,
    Utilization,
    XidFault,
    default_scenario,
    write_scenario,
)
from exporters.gpu.simulated import SimulatedBackend
from jobsight.errors import DeviceLost
from tests.support import FIXTURES


class StepClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def backend_for(scenario: Scenario, clock: StepClock) -> SimulatedBackend:
    return SimulatedBackend(FixedScenario(scenario), clock=clock, hostname="node1")


def at(seconds: float) -> TimePoint:
    return TimePoint(offset_s=seconds)


def test_plausible_h100_values_for_every_field() -> None:
    clock = StepClock()
    backend = backend_for(default_scenario(8), clock)
    assert len(backend.devices()) == 8
    assert backend.info().backend == "simulated"
    for index in range(8):
        values = backend.read(index).values
        assert set(values) == {spec.name for spec in f.FIELDS}
        assert 0 <= values[f.GPU_UTIL] <= 100
        assert 70 <= values[f.POWER_USAGE] <= 700
        assert values[f.MEMORY_TOTAL_BYTES] == 80 * 2**30
        fb_sum = values[f.FB_USED] + values[f.FB_FREE] + values[f.FB_RESERVED]
        assert fb_sum == pytest.approx(80 * 1024, abs=1)
        assert all(0 <= values[name] <= 1 for name in f.PROFILING_FIELDS if "BYTES" not in name)


def test_uuids_and_bus_ids_are_unique_and_stable_per_host() -> None:
    a = SimulatedBackend(FixedScenario(default_scenario(8)), clock=StepClock(), hostname="node1").devices()
    b = SimulatedBackend(FixedScenario(default_scenario(8)), clock=StepClock(), hostname="node1").devices()
    c = SimulatedBackend(FixedScenario(default_scenario(8)), clock=StepClock(), hostname="node2").devices()
    assert a == b
    assert len({i.uuid for i in a}) == 8 and len({i.pci_bus_id for i in a}) == 8
    assert not {i.uuid for i in a} & {i.uuid for i in c}


def test_values_move_over_time_and_are_deterministic() -> None:
    def series() -> list[tuple[float, float]]:
        clock = StepClock()
        backend = backend_for(default_scenario(4), clock)
        out = []
        for _ in range(6):
            values = backend.read(1).values
            out.append((values[f.GPU_UTIL], values[f.TOTAL_ENERGY]))
            clock.now += 15
        return out

    first, second = series(), series()
    assert first == second
    assert len({util for util, _ in first}) > 1
    energies = [energy for _, energy in first]
    assert energies == sorted(energies) and energies[-1] > energies[0]


def test_jobs_come_with_processes_and_memory() -> None:
    clock = StepClock()
    scenario = Scenario(gpus=2, jobs=[JobAssignment(job_id="4711", gpus=[0], memory_gib=30, until=at(60))])
    backend = backend_for(scenario, clock)
    procs = backend.read(0).processes
    assert [(p.job_id, p.used_bytes) for p in procs] == [("4711", 30 * 2**30)]
    assert backend.read(1).processes == ()
    assert backend.read(1).values[f.GPU_UTIL] == 0  # no job, no pattern naming it: idle
    clock.now += 61
    assert backend.read(0).processes == ()


def test_utilization_patterns() -> None:
    clock = StepClock()
    scenario = Scenario(gpus=2, utilization=[
        Utilization(gpus=[0], pattern="constant", value=42),
        Utilization(gpus=[1], pattern="square", min=10, max=90, period=60),
    ])
    backend = backend_for(scenario, clock)
    seen = set()
    for _ in range(8):
        assert backend.read(0).values[f.GPU_UTIL] == 42
        seen.add(backend.read(1).values[f.GPU_UTIL])
        clock.now += 10
    assert seen == {10, 90}


def test_gpu_lost_and_back() -> None:
    clock = StepClock()
    backend = backend_for(Scenario(gpus=2, faults=[GpuLostFault(gpu=1, at=at(10), until=at(20))]), clock)
    backend.read(1)
    clock.now += 10
    with pytest.raises(DeviceLost):
        backend.read(1)
    backend.read(0)
    clock.now += 10
    assert f.GPU_UTIL in backend.read(1).values


def test_field_unsupported_window() -> None:
    clock = StepClock()
    fault = FieldUnsupportedFault(gpu=0, field=f.PROF_SM_ACTIVE, until=at(30))
    backend = backend_for(Scenario(gpus=2, faults=[fault]), clock)
    assert f.PROF_SM_ACTIVE not in backend.read(0).values
    assert f.PROF_SM_ACTIVE in backend.read(1).values
    clock.now += 30
    assert f.PROF_SM_ACTIVE in backend.read(0).values


def test_ecc_errors_add_up_from_their_time() -> None:
    clock = StepClock()
    faults: list[AnyFault] = [EccFault(gpu=0, at=at(5), sbe=3), EccFault(gpu=0, at=at(10), sbe=1, dbe=2)]
    backend = backend_for(Scenario(gpus=1, faults=faults), clock)
    assert backend.read(0).values[f.ECC_SBE_VOL] == 0
    clock.now += 5
    assert backend.read(0).values[f.ECC_SBE_VOL] == 3
    clock.now += 5
    values = backend.read(0).values
    assert (values[f.ECC_SBE_VOL], values[f.ECC_DBE_VOL], values[f.ECC_DBE_AGG]) == (4, 2, 2)
    assert values[f.UNCORRECTABLE_REMAPPED_ROWS] == 2


def test_throttle_sets_bits_and_counts_violation_time() -> None:
    clock = StepClock()
    fault = ThrottleFault(gpu=0, reasons=["hw_thermal_slowdown", "sw_power_cap"], until=at(10))
    backend = backend_for(Scenario(gpus=1, faults=[fault]), clock)
    first = backend.read(0).values
    assert int(first[f.CLOCKS_EVENT_REASONS]) & 0x44 == 0x44
    clock.now += 4
    second = backend.read(0).values
    assert second[f.THERMAL_VIOLATION] - first[f.THERMAL_VIOLATION] == 4e9
    assert second[f.POWER_VIOLATION] - first[f.POWER_VIOLATION] == 4e9
    clock.now += 10
    assert int(backend.read(0).values[f.CLOCKS_EVENT_REASONS]) & 0x44 == 0


def test_xids_fire_once_at_their_time() -> None:
    clock = StepClock()
    faults: list[AnyFault] = [XidFault(gpu=1, xid=79), XidFault(gpu=0, xid=48, at=at(30), count=2)]
    backend = backend_for(Scenario(gpus=2, faults=faults), clock)
    assert backend.wait_xid_events(0, 0) == []  # each GPU's stream has only its own XIDs
    assert backend.wait_xid_events(1, 0) == [XidEvent(1, 79)]
    assert backend.wait_xid_events(1, 0) == []
    clock.now += 30
    assert backend.wait_xid_events(0, 0) == [XidEvent(0, 48), XidEvent(0, 48)]
    assert backend.wait_xid_events(0, 0) == []


def test_xid_injected_by_rewriting_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node2.yaml"
    shutil.copy(FIXTURES / "gpu" / "scenarios" / "lost-gpu.yaml", path)
    source = ScenarioFile(path)
    backend = SimulatedBackend(source, clock=StepClock())
    assert backend.wait_xid_events(5, 0) == [XidEvent(5, 79)]
    write_scenario(path, source.current().with_faults(XidFault(gpu=3, xid=79)))
    assert backend.wait_xid_events(3, 0) == [XidEvent(3, 79)]
    # Rewriting the file with the same faults does not fire them again...
    write_scenario(path, source.current().model_copy())
    assert backend.wait_xid_events(3, 0) == []
    # ...a second identical XID needs its own id.
    write_scenario(path, source.current().with_faults(XidFault(gpu=3, xid=79, id="second")))
    assert backend.wait_xid_events(3, 0) == [XidEvent(3, 79)]


def test_wait_blocks_briefly_and_close_wakes_it() -> None:
    backend = backend_for(Scenario(gpus=1), StepClock())
    backend.close()
    assert backend.wait_xid_events(0, 30.0) == []  # returns at once once closed
