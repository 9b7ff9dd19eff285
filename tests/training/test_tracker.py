"""jobsight.training on its own: identity and endpoint from the environment, and a tracker that
never raises into training when the agent is down, slow or answering 500 (its speed there is
measured in benchmarks/training_overhead.py, not asserted here)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from jobsight import training
from tests.support import RecordedRequest, RecordingHTTPServer, Reply, free_port, wait_until


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {
                "JOBSIGHT_JOB_ID": "ns:train",
                "SLURM_JOB_ID": "9",
                "RANK": "3",
                "LOCAL_RANK": "1",
                "WORLD_SIZE": "8",
            },
            training.Identity("ns:train", rank=3, local_rank=1, world_size=8, gpu="1"),
        ),
        (
            {
                "SLURM_JOB_ID": "4711",
                "SLURM_PROCID": "5",
                "SLURM_LOCALID": "1",
                "SLURM_NTASKS": "16",
                "CUDA_VISIBLE_DEVICES": "2,3",
            },
            training.Identity("4711", rank=5, local_rank=1, world_size=16, gpu="3"),
        ),
        (
            # Slurm's --gpu-bind=single hands each task one GPU: it is the task's whatever its local id.
            {"SLURM_JOB_ID": "4711", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "CUDA_VISIBLE_DEVICES": "6"},
            training.Identity("4711", rank=5, local_rank=1, world_size=None, gpu="6"),
        ),
        (
            {
                "JOBSIGHT_JOB_ID": "m",
                "OMPI_COMM_WORLD_RANK": "2",
                "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                "OMPI_COMM_WORLD_SIZE": "4",
                "CUDA_VISIBLE_DEVICES": "GPU-1234",
            },
            training.Identity("m", rank=2, local_rank=0, world_size=4, gpu=None),
        ),
        ({}, training.Identity(None, rank=0)),
        ({"JOBSIGHT_JOB_ID": "  ", "RANK": "x"}, training.Identity(None, rank=0)),
    ],
)
def test_identity_comes_from_the_launchers_variables(
    environ: dict[str, str], expected: training.Identity
) -> None:
    assert training.identity_from_env(environ) == expected


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        ({}, "http://127.0.0.1:4318/v1/metrics"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://agent:4318"}, "http://agent:4318/v1/metrics"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://agent:4318/"}, "https://agent:4318/v1/metrics"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://b:2/m",
            },
            "http://b:2/m",
        ),
    ],
)
def test_the_endpoint_follows_opentelemetrys_variables(environ: dict[str, str], url: str) -> None:
    assert training.metrics_endpoint(environ) == url


def test_importing_the_module_imports_no_opentelemetry_and_no_torch() -> None:
    code = (
        "import sys, jobsight.training\n"
        "bad = [m for m in sys.modules if m.startswith(('opentelemetry', 'torch', 'google'))]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_without_a_job_id_the_tracker_records_nothing_and_still_steps() -> None:
    tracker = training.start(environ={})
    assert not tracker.enabled
    tracker.step(samples=1, loss=0.5)
    with tracker.phase("compute"):
        pass
    assert tracker.steps == 1
    assert not tracker.flush()
    tracker.close()


def test_with_the_agent_down_steps_go_on_and_failures_are_counted() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/metrics"  # nothing listens there
    tracker = training.start(job_id="down", endpoint=url, export_interval_s=0.05, export_timeout_s=0.5)
    try:
        for _ in range(200):
            tracker.step(samples=1, loss=1.0)
            with tracker.phase("compute"):
                pass
        wait_until(lambda: tracker.failed_exports >= 2, timeout=30, message="failed exports to be counted")
        assert not tracker.flush(1.0)
        assert tracker.steps == 200
        assert tracker.errors == 0
    finally:
        tracker.close(timeout_s=1.0)


def test_an_agent_answering_500_costs_failures_not_exceptions() -> None:
    with RecordingHTTPServer(
        lambda request: Reply(status=500, body=b"no", content_type="text/plain")
    ) as agent:
        tracker = training.start(
            job_id="err", endpoint=f"{agent.url}/v1/metrics", export_interval_s=3600, export_timeout_s=1.0
        )
        try:
            tracker.step(samples=1)
            tracker.step(samples=1)
            assert not tracker.flush(5.0)
            assert tracker.failed_exports >= 1
            request = agent.snapshot()[0]
            assert request.path == "/v1/metrics"
            assert request.headers["content-type"] == "application/x-protobuf"
        finally:
            tracker.close(timeout_s=1.0)


def test_a_slow_agent_times_out_on_the_export_thread_only() -> None:
    release = threading.Event()

    def hang(request: RecordedRequest) -> Reply:
        release.wait(30)
        return Reply(status=200)

    with RecordingHTTPServer(hang, record=False) as agent:
        tracker = training.start(
            job_id="slow", endpoint=f"{agent.url}/v1/metrics", export_interval_s=0.05, export_timeout_s=0.3
        )
        try:
            # Steps while exports hang on the agent: none raises, all are counted.
            for _ in range(100):
                tracker.step(samples=2)
            wait_until(lambda: tracker.failed_exports >= 1, timeout=30, message="a timed-out export")
            for _ in range(100):
                tracker.step(samples=2)
            assert tracker.steps == 200 and tracker.samples == 400
        finally:
            release.set()
            tracker.close(timeout_s=1.0)


class _Optimizer:
    """The one method of torch.optim.Optimizer the helper uses (the real one is exercised in
    tests/training/test_distributed.py)."""

    def __init__(self) -> None:
        self.hooks: list[object] = []

    def register_step_post_hook(self, hook: object) -> str:
        self.hooks.append(hook)
        return "handle"

    def step(self) -> None:
        for hook in self.hooks:
            hook(self, (), {})  # type: ignore[operator]


def test_watch_optimizer_steps_the_tracker_after_each_optimizer_step() -> None:
    tracker = training.Tracker(training.Identity("j"))
    optimizer = _Optimizer()
    assert tracker.watch_optimizer(optimizer, samples_per_step=32) == "handle"
    for _ in range(3):
        optimizer.step()
    assert tracker.steps == 3 and tracker.samples == 96


def test_step_swallows_a_failing_recorder() -> None:
    def boom(_seconds: float) -> None:
        raise RuntimeError("sdk bug")

    tracker = training.Tracker(training.Identity("j"), record_step_duration=boom)
    tracker.step()
    tracker.step()  # the second step records a duration, which fails
    assert tracker.steps == 2 and tracker.errors == 1


def test_the_loss_is_read_lazily_and_bad_values_are_left_out() -> None:
    tracker = training.Tracker(training.Identity("j"))

    class Tensorish:
        def __float__(self) -> float:
            return 0.25

    tracker.step(loss=Tensorish())
    assert tracker.loss_value() == 0.25
    tracker.step(loss="not a number")
    assert tracker.loss_value() is None
