"""The watcher against an in-test Kubernetes API server (list/watch, chunked events, resource
versions, 410 Gone, dropped connections) and the real jobsight API (a subprocess on SQLite): the
API ends up with the right jobs and states, each state delivered once, one failure notification."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as kube_client

from schedulers.kubernetes.gpulookup import PrometheusGpus
from schedulers.kubernetes.jobsapi import JobsApi
from schedulers.kubernetes.owners import PodJobResolver
from schedulers.kubernetes.tracker import KNOWN_JOB_KINDS, JobKind, JobTracker, TrackerSettings
from schedulers.kubernetes.watch import Delivery, KubeSource, Watcher
from tests.schedulers.kubernetes.fakekube import PODS, FakeKube, kubeconfig, resource_path
from tests.schedulers.kubernetes.objects import (
    CREATED,
    FAILED,
    RUNNING,
    batch_job,
    batch_job_pod,
    kube_proxy,
    pytorch_worker,
    pytorchjob,
    terminated,
)
from tests.support import (
    Proc,
    RecordingHTTPServer,
    Reply,
    free_port,
    jobsight_command,
    require_binary,
    wait_for_http,
    wait_until,
)

SCHEDULER_TOKEN = "kube-scheduler-token-0123456789ab"
ADMIN_TOKEN = "kube-admin-token-0123456789abcdef"
JOB = "team-a:llama"


def kind(plural: str, group: str) -> JobKind:
    return next(k for k in KNOWN_JOB_KINDS if k.plural == plural and k.group == group)


PYTORCH = kind("pytorchjobs", "kubeflow.org")
BATCH = kind("jobs", "batch")
JOBSET = kind("jobsets", "jobset.x-k8s.io")  # not installed in the fake cluster
PYTORCH_PATH = resource_path(PYTORCH.group, PYTORCH.version, PYTORCH.plural)
BATCH_PATH = resource_path(BATCH.group, BATCH.version, BATCH.plural)


@dataclass
class Api:
    url: str
    outbox: Path

    def job(self, job_id: str) -> dict[str, Any] | None:
        r = httpx.get(
            f"{self.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )
        return r.json() if r.status_code == 200 else None

    def job_ids(self) -> list[str]:
        r = httpx.get(f"{self.url}/v1/jobs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
        return sorted(j["job_id"] for j in r.json()["jobs"])

    def wait(self, job_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
        found: dict[str, Any] = wait_until(
            lambda: (j := self.job(job_id)) and j["status"] == status and j,
            timeout=timeout,
            interval=0.1,
            message=f"{job_id} {status} in the API",
        )
        return found

    def notifications(self) -> list[str]:
        if not self.outbox.exists():
            return []
        return [json.loads(line)["title"] for line in self.outbox.read_text().splitlines() if line.strip()]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    port = free_port()
    outbox = tmp_path / "outbox.jsonl"
    config = tmp_path / "api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store_url": f"sqlite:///{tmp_path / 'api.db'}",
                "prometheus_url": f"http://127.0.0.1:{free_port()}",  # no Prometheus: summaries degrade
                "log_store": str(tmp_path / "logstore"),
                "tokens": [
                    {"token": SCHEDULER_TOKEN, "tenant": "kubernetes", "role": "scheduler"},
                    {"token": ADMIN_TOKEN, "tenant": "ops", "role": "admin"},
                ],
                "notify": {"team-a": [f"file://{outbox}"]},
            }
        )
    )
    proc = Proc(
        jobsight_command("api", "--config", str(config), "--listen", f"127.0.0.1:{port}"),
        tmp_path / "api.log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=120, proc=proc)  # slow on a busy machine
        yield Api(f"http://127.0.0.1:{port}", outbox)
    finally:
        proc.stop()


class RecordingJobsApi(JobsApi):
    """The real client, remembering what it delivered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.puts: list[tuple[str, str]] = []

    def put(self, job_id: str, body: dict[str, Any]) -> None:
        super().put(job_id, body)
        self.puts.append((job_id, str(body["status"])))


def start_watcher(
    kube: FakeKube, api: Api, gpus: PrometheusGpus | None = None
) -> tuple[Watcher, RecordingJobsApi, threading.Thread]:
    config = kube_client.Configuration()
    config.host = kube.url
    jobs_api = RecordingJobsApi(api.url, SCHEDULER_TOKEN)
    watcher = Watcher(
        KubeSource(kube_client.ApiClient(config), page_size=2, watch_seconds=5, read_timeout=10),
        JobTracker(PodJobResolver(), TrackerSettings()),
        Delivery(jobs_api, backoff=0.05, max_backoff=0.5, settle=1.0),
        (PYTORCH, BATCH, JOBSET),
        tick=0.05,
        backoff=0.05,
        gpus=gpus,
        gpu_refresh=0.5,
    )
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    return watcher, jobs_api, thread


def stop_watcher(watcher: Watcher, thread: threading.Thread, kube: FakeKube) -> None:
    watcher.stop.set()
    kube.drop_watches()  # wake the watch threads blocked on a quiet stream
    thread.join(timeout=15)
    assert not thread.is_alive()


def pod_lists(kube: FakeKube) -> int:
    return len([r for r in kube.requests() if r.path == PODS and not r.watch and "continue" not in r.query])


def test_a_pytorchjob_through_dropped_watches_and_410_gone(api: Api) -> None:
    with FakeKube({PYTORCH_PATH, BATCH_PATH}) as kube:
        kube.put(PYTORCH_PATH, pytorchjob("llama", CREATED, RUNNING))
        for i in range(4):
            kube.put(PODS, pytorch_worker("llama", i, node=f"gpu-node{1 + i // 2}"))
        kube.put(PODS, kube_proxy())
        kube.put(BATCH_PATH, batch_job("nightly-report"))
        kube.put(PODS, batch_job_pod("nightly-report"))  # no GPU: not a training job
        watcher, jobs_api, thread = start_watcher(kube, api)
        try:
            job = api.wait(JOB, "running")
            assert job["tenant"] == "team-a" and job["nodes"] == ["gpu-node1", "gpu-node2"]
            assert job["labels"]["gpus_requested"] == "8" and job["scheduler"] == "kubernetes"
            assert api.job_ids() == [JOB]  # no kube-system pod, no GPU-less batch Job

            # The connection drops; an elastic restart of worker 1 happens meanwhile: same job.
            lists_before = pod_lists(kube)
            kube.drop_watches()
            kube.put(
                PODS,
                pytorch_worker(
                    "llama", 1, node="gpu-node1", containers=[terminated(1, "Error", last=True, restarts=1)]
                ),
            )
            wait_until(
                lambda: any(
                    r.watch and int(r.query.get("resourceVersion", 0)) >= kube.rv
                    for r in kube.requests()
                    if r.path == PODS
                ),
                message="the pod watch resumed past the restart",
            )
            assert pod_lists(kube) == lists_before  # resumed from its version: no new list

            # The API server restarts; while it is away a pod is deleted, another OOM-killed, the job
            # fails, and its history is compacted: resuming gets 410 Gone, then a fresh list.
            kube.hold_watches()
            kube.drop_watches()
            kube.delete(PODS, "team-a", "llama-worker-2")
            kube.put(
                PODS,
                pytorch_worker(
                    "llama", 3, node="gpu-node2", phase="Failed", containers=[terminated(137, "OOMKilled")]
                ),
            )
            kube.put(PYTORCH_PATH, pytorchjob("llama", CREATED, RUNNING, FAILED))
            kube.compact()
            kube.hold_watches(False)
            job = api.wait(JOB, "failed")
            assert job["exit_code"] == 137
            assert job["reason"].startswith(
                "out of memory: container pytorch of pod llama-worker-3 was OOMKilled"
            )
            assert pod_lists(kube) > lists_before
            titles = wait_until(api.notifications, message="the failure notification")
            assert len(titles) == 1 and titles[0].startswith(f"jobsight: job {JOB} failed")
            assert "out of memory" in titles[0]
        finally:
            stop_watcher(watcher, thread, kube)
        assert jobs_api.puts == [(JOB, "running"), (JOB, "failed")]

        # A restarted watcher (nothing in memory) lists everything again and sends nothing new.
        watcher2, jobs_api2, thread2 = start_watcher(kube, api)
        try:
            wait_until(lambda: watcher2.ready, message="the second watcher's first lists")
            wait_until(
                lambda: not watcher2.delivery.pending and not watcher2.tracker.dirty, message="settled"
            )
            assert jobs_api2.puts == []
            assert len(api.notifications()) == 1
        finally:
            stop_watcher(watcher2, thread2, kube)


def test_jobsight_kube_watch_command(api: Api, tmp_path: Path) -> None:
    """The CLI as the chart runs it: kubeconfig, token file; a batch Job that uses a GPU and exits
    with BackoffLimitExceeded."""
    with FakeKube({BATCH_PATH}) as kube:
        kube.put(BATCH_PATH, batch_job("train", 1))
        kube.put(PODS, batch_job_pod("train", gpus=1))
        config = tmp_path / "kubeconfig"
        config.write_text(kubeconfig(kube.url))
        token = tmp_path / "token"
        token.write_text(SCHEDULER_TOKEN + "\n")
        proc = Proc(
            jobsight_command(
                "kube", "watch", "--kubeconfig", str(config), "--api.url", api.url,
                "--api.token-file", str(token), "--tenant", "team-a=research",
            ),
            tmp_path / "watch.log",
        )  # fmt: skip
        try:
            job = api.wait("team-a:train", "running")
            assert job["tenant"] == "research"
            kube.put(
                PODS,
                batch_job_pod(
                    "train", gpus=1, phase="Failed", containers=[terminated(3, "Error", name="pytorch")]
                ),
            )
            kube.put(BATCH_PATH, batch_job("train", 1, failed_reason="BackoffLimitExceeded"))
            job = api.wait("team-a:train", "failed")
            assert job["exit_code"] == 3 and "BackoffLimitExceeded" in job["reason"]
            assert "exited with code 3" in job["reason"]
        finally:
            code = proc.stop()
        assert code == 0, proc.log_path.read_text(errors="replace")


def _gpu_info(host: str, first: int) -> str:
    return "".join(
        f'jobsight_gpu_job_info{{Hostname="{host}",gpu="{i}",UUID="GPU-{host}-{i}",job_id="{JOB}",'
        f'namespace="team-a",pod="llama-worker-{first // 2 + i // 2}",container="pytorch"}} 1\n'
        for i in range(4)
    )


def test_the_job_record_names_its_gpus_from_prometheus(api: Api, tmp_path: Path) -> None:
    """Acceptance: a PyTorchJob with 4 workers on 2 nodes holding 8 GPUs is one job in the API with
    8 GPUs (host, index, UUID), read from the agents' jobsight_gpu_job_info in a real Prometheus."""
    exposition = (
        "# TYPE jobsight_gpu_job_info gauge\n" + _gpu_info("gpu-node1", 0) + _gpu_info("gpu-node2", 4)
    )
    agents = RecordingHTTPServer(lambda request: Reply(200, exposition.encode(), "text/plain; version=0.0.4"))
    with agents, FakeKube({PYTORCH_PATH}) as kube:
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({"scrape_configs": [{
            "job_name": "agent", "scrape_interval": "1s", "honor_labels": True,
            "static_configs": [{"targets": [agents.url.removeprefix("http://")]}],
        }]}))  # fmt: skip
        port = free_port()
        args = [f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
        prometheus = Proc([require_binary("prometheus"), *args], tmp_path / "prometheus.log")
        try:
            wait_for_http(f"http://127.0.0.1:{port}/-/ready", timeout=120, proc=prometheus)
            lookup = PrometheusGpus(f"http://127.0.0.1:{port}")
            wait_until(
                lambda: len(lookup.gpus(JOB)) == 8, timeout=60, message="the agents' GPUs in Prometheus"
            )
            kube.put(PYTORCH_PATH, pytorchjob("llama", CREATED, RUNNING))
            for i in range(4):
                kube.put(PODS, pytorch_worker("llama", i, node=f"gpu-node{1 + i // 2}"))
            watcher, _, thread = start_watcher(kube, api, gpus=lookup)
            try:
                job = wait_until(lambda: (j := api.job(JOB)) and len(j["gpus"]) == 8 and j, message="8 GPUs")
                assert api.job_ids() == [JOB]
                assert {(g["host"], g["gpu"]) for g in job["gpus"]} == {
                    (f"gpu-node{n}", i) for n in (1, 2) for i in range(4)
                }
                assert job["gpus"][0]["uuid"] == "GPU-gpu-node1-0"
            finally:
                stop_watcher(watcher, thread, kube)
                lookup.close()
        finally:
            prometheus.stop()
