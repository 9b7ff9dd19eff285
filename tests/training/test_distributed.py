"""A real 4-rank torch.distributed job on the CPU (gloo, torchrun) reporting through
jobsight.training to a real OTLP receiver, scraped by a real Prometheus that evaluates the real
JobHung and JobSlowRank rules.

The rules are loaded from alerts/rules/training.yaml with their waiting times shortened (the
5-minute floor of JobHung to 6 s, every ``for`` to 0 s), so that the test waits seconds rather
than minutes; the expressions are the shipped ones. promtool's cases (alerts/tests/training_test.yaml)
check the real times.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from collectors.otlp.collector import TrainingCollector
from collectors.otlp.server import OtlpReceiver
from collectors.otlp.store import TrainingStore
from jobsight.serving import CollectorSet, ListenAddress, MetricsServer
from tests.support import REPO_ROOT, Proc, free_port, require_binary, wait_for_http, wait_until

pytest.importorskip("torch", reason="PyTorch's CPU build: pip install -e '.[torch-test]'")

WORKER = Path(__file__).with_name("ddp_worker.py")
RULES = REPO_ROOT / "alerts" / "rules" / "training.yaml"
HOST = "trainhost"


def fast_rules(text: str) -> str:
    """The shipped rules with JobHung's 5-minute floor at 6 s and no ``for`` waits."""
    replaced = text.replace("\n              300\n", "\n              6\n").replace("+ 300)", "+ 6)")
    replaced = replaced.replace("for: 1m", "for: 0s").replace("for: 10m", "for: 0s")
    assert replaced.count("for: 0s") == 2 and "300" not in replaced, "training.yaml changed shape"
    return replaced


@dataclass
class Stack:
    receiver: OtlpReceiver
    prometheus: str

    def alerts(self, name: str, job_id: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.prometheus}/api/v1/alerts", timeout=10).json()
        return [
            alert
            for alert in body["data"]["alerts"]
            if alert["labels"]["alertname"] == name
            and alert["labels"].get("job_id") == job_id
            and alert["state"] == "firing"
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        return list(body["data"]["result"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("train-stack")
    store = TrainingStore()
    receiver = OtlpReceiver(store, ListenAddress("127.0.0.1", 0)).start()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorSet({"otlp": TrainingCollector(store, HOST, receiver.request_counts)}))
    metrics = MetricsServer(registry, ListenAddress("127.0.0.1", 0)).start()
    (tmp / "training.yaml").write_text(fast_rules(RULES.read_text()))
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{tmp / 'training.yaml'}']\n"
        "scrape_configs:\n  - job_name: agent\n    static_configs:\n"
        f"      - targets: ['{metrics.address}']\n"
    )
    port = free_port()
    prometheus = Proc(
        [
            require_binary("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp / "prometheus.log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/-/ready", timeout=120, proc=prometheus)
        yield Stack(receiver, f"http://127.0.0.1:{port}")
    finally:
        prometheus.stop()
        metrics.stop()
        receiver.stop()


def run_job(tmp_path: Path, stack: Stack, job_id: str, *worker_args: str) -> tuple[Proc, Path]:
    stop = tmp_path / "stop"
    env = {
        **os.environ,
        "JOBSIGHT_JOB_ID": job_id,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.receiver.url.removesuffix("/v1/metrics"),
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        str(WORKER),
        "--stop-file",
        str(stop),
        *worker_args,
    ]
    return Proc(argv, tmp_path / f"{job_id}.log", env=env, cwd=REPO_ROOT), stop


def test_a_rank_stuck_before_the_all_reduce_fires_job_hung_naming_it(tmp_path: Path, stack: Stack) -> None:
    job, stop = run_job(tmp_path, stack, "ddp-hang", "--hang-rank", "2", "--hang-after", "30")
    try:
        # All four ranks report steps first.
        wait_until(
            lambda: len(stack.query('jobsight_train_steps_total{job_id="ddp-hang"} > 0')) == 4,
            timeout=120,
            interval=0.5,
            message=f"4 ranks stepping\n{job.output()}",
        )
        firing = wait_until(
            lambda: stack.alerts("JobHung", "ddp-hang"),
            timeout=120,
            interval=0.5,
            message=f"JobHung to fire\n{job.output()}",
        )
        description = firing[0]["annotations"]["description"]
        # Rank 2 is named as the one not waiting where the others wait (they are in "sync").
        culprits = description.split("Ranks not where the others wait (usually the culprits):")[1]
        culprits = culprits.split("Oldest last steps:")[0]
        assert "rank 2 on trainhost in phase compute" in culprits, description
        for other in ("rank 0 ", "rank 1 ", "rank 3 "):
            assert other not in culprits, description
        # The steps stopped at the hang: rank 2 made 30, the others waited in the 31st all-reduce.
        steps = {
            r["metric"]["rank"]: float(r["value"][1])
            for r in stack.query('jobsight_train_steps_total{job_id="ddp-hang"}')
        }
        assert steps == {"0": 30.0, "1": 30.0, "2": 30.0, "3": 30.0}
        phases = {
            r["metric"]["rank"]: r["metric"]["phase"]
            for r in stack.query('jobsight_train_phase_entered_timestamp_seconds{job_id="ddp-hang"}')
        }
        assert phases == {"0": "sync", "1": "sync", "2": "compute", "3": "sync"}
    finally:
        stop.write_text("stop\n")
        job.stop(timeout=10)


def test_a_slowed_rank_fires_job_slow_rank_with_its_host_and_gpu(tmp_path: Path, stack: Stack) -> None:
    job, stop = run_job(tmp_path, stack, "ddp-slow", "--slow-rank", "1", "--slow-seconds", "0.1")
    try:
        firing = wait_until(
            lambda: stack.alerts("JobSlowRank", "ddp-slow"),
            timeout=120,
            interval=0.5,
            message=f"JobSlowRank to fire\n{job.output()}",
        )
        labels = [alert["labels"] for alert in firing]
        assert [(lab["rank"], lab["Hostname"], lab["gpu"]) for lab in labels] == [("1", HOST, "1")]
        # The step times of a synchronous job are alike: the compute phase is what tells.
        step_times = stack.query(
            'rate(jobsight_train_step_seconds_sum{job_id="ddp-slow"}[1m])'
            ' / rate(jobsight_train_step_seconds_count{job_id="ddp-slow"}[1m])'
        )
        values = sorted(float(r["value"][1]) for r in step_times)
        assert len(values) == 4 and values[-1] < 1.3 * values[0]
        assert not stack.alerts("JobHung", "ddp-slow")
    finally:
        stop.write_text("stop\n")
        assert job.popen.wait(timeout=60) == 0, job.output()
        job.stop()
