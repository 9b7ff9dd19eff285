"""Smaller parts: job-map caching with an injected clock, the XID stream failing, time parsing."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from exporters.gpu.attribution import JobAttributor
from exporters.gpu.model import GpuIdentity, ProcessUsage, XidEvent
from exporters.gpu.nvml import NvmlBackend
from exporters.gpu.sampler import Sampler
from exporters.gpu.scenario import TimePoint, XidFault, parse_scenario
from exporters.gpu.xid import XidLedger
from jobsight.identity import JobMapDir, ProcessJobResolver
from tests.exporters.gpu.fake_nvml import FakeNvml, two_gpus
from tests.support import FIXTURES

GPU0 = GpuIdentity(0, "GPU-aaaaaaaa-0000-0000-0000-000000000000", "00000000:18:00.0", "H100")
GPU1 = GpuIdentity(1, "GPU-55555555-6666-7777-8888-999999999999", "00000000:2A:00.0", "H100")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_job_map_is_reread_after_its_ttl(tmp_path: Path) -> None:
    jobmap = tmp_path / "jobs"
    jobmap.mkdir()
    clock = Clock()
    attributor = JobAttributor(JobMapDir(jobmap), ProcessJobResolver(FIXTURES / "gpu" / "proc"), clock,
                               map_ttl_s=5.0)
    assert attributor.attribute(GPU0, []).jobs == ()
    (jobmap / "0").write_text("4711 1000\n")
    clock.now += 4
    assert attributor.attribute(GPU0, []).jobs == ()  # still the cached read
    clock.now += 1
    assert attributor.attribute(GPU0, []).jobs == ("4711",)
    (jobmap / "0").unlink()  # the epilog removed it: the job is over
    clock.now += 5
    assert attributor.attribute(GPU0, []).jobs == ()


def test_processes_of_two_jobs_share_a_gpu() -> None:
    # trust_environment: the fixture's PID 2101 names its job only in JOBSIGHT_JOB_ID.
    attributor = JobAttributor(None, ProcessJobResolver(FIXTURES / "gpu" / "proc", trust_environment=True),
                               Clock())
    jobs = attributor.attribute(GPU1, [ProcessUsage(2101, 3), ProcessUsage(2102, 4), ProcessUsage(2101, 5),
                                       ProcessUsage(99999, 7), ProcessUsage(1, 1, job_id="bad id")])
    assert jobs.jobs == ("4711", "train-42")
    assert jobs.memory_bytes == {"train-42": 8, "4711": 4}


def test_job_map_fixture_uuid_file_wins_over_index_file() -> None:
    attributor = JobAttributor(JobMapDir(FIXTURES / "gpu" / "jobmap"), ProcessJobResolver("/nonexistent"),
                               Clock(), map_ttl_s=0)
    assert attributor.attribute(GPU1, []).jobs == ("9002",)
    assert attributor.attribute(GpuIdentity(1, "", "", ""), []).jobs == ("9001",)
    assert attributor.map_errors >= 1  # the invalid id in file "3"


class FailingEvents(NvmlBackend):
    def wait_xid_events(self, index: int, timeout_s: float) -> list[XidEvent]:
        raise RuntimeError("event set broke")


def test_a_failing_xid_stream_is_counted_not_fatal(tmp_path: Path) -> None:
    backend = FailingEvents(nvml=FakeNvml(two_gpus()))
    backend.open()
    attributor = JobAttributor(None, ProcessJobResolver(tmp_path), Clock())
    sampler = Sampler(backend, attributor, XidLedger(), interval_s=0.01)
    assert sampler.poll_xids_once(0, 0) == 0
    assert sampler.poll_xids_once(0, 0) == 0
    assert sampler.views()[0].errors == {"xid_events": 2}
    sampler.collect_once(0)
    assert sampler.views()[0].up


@given(st.floats(min_value=0, max_value=10 * 365 * 86400, allow_nan=False))
def test_relative_times_round_trip(offset: float) -> None:
    fault = XidFault(gpu=0, xid=79, at=TimePoint(offset_s=offset))
    again = parse_scenario({"gpus": 1, "faults": [fault.model_dump(mode="json")]}, "t").faults[0]
    assert again.at == TimePoint(offset_s=offset)


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_absolute_times_round_trip(epoch: int) -> None:
    fault = XidFault(gpu=0, xid=79, at=TimePoint(epoch_s=float(epoch)))
    again = parse_scenario({"gpus": 1, "faults": [fault.model_dump(mode="json")]}, "t").faults[0]
    assert again.at == TimePoint(epoch_s=float(epoch))



def test_a_map_file_listing_two_jobs_publishes_both(tmp_path: Path) -> None:
    # dcgm-exporter's format allows several job ids per GPU file (jobs sharing a GPU): all of them
    # hold it, and each process's memory goes to the job its own identity names.
    jobmap = tmp_path / "jobs"
    jobmap.mkdir()
    (jobmap / "1").write_text("train-42\n4711\n")
    attributor = JobAttributor(JobMapDir(jobmap),
                               ProcessJobResolver(FIXTURES / "gpu" / "proc", trust_environment=True), Clock())
    jobs = attributor.attribute(GPU1, [ProcessUsage(2101, 3), ProcessUsage(2102, 4), ProcessUsage(99999, 7)])
    assert jobs.jobs == ("train-42", "4711")
    assert jobs.memory_bytes == {"train-42": 3, "4711": 4}
    (jobmap / "1").write_text("train-42\n")
    attributor_one = JobAttributor(JobMapDir(jobmap), ProcessJobResolver("/nonexistent"), Clock())
    one = attributor_one.attribute(GPU1, [ProcessUsage(2101, 3), ProcessUsage(99999, 7)])
    assert one.jobs == ("train-42",) and one.memory_bytes == {"train-42": 10}
