"""Issue 12's acceptance, end to end with the real parts that run here: a PyTorchJob with 4 worker
pods on 2 nodes holding 8 GPUs. Two `jobsight agent` processes (simulated GPUs, each with its own
kubelet: a gRPC server on a unix socket), a real Prometheus scraping them, the real API, the
watcher, and the in-test Kubernetes API server. Expected: jobsight_gpu_job_info carries one job
id (team-a:llama) with namespace/pod/container; the API has one job with 8 GPUs; a worker
OOM-killed (exit 137) and the PyTorchJob's Failed condition end it, and the one notification says
"out of memory"."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schedulers.kubernetes.gpulookup import PrometheusGpus
from tests.schedulers.kubernetes.fakekube import PODS, FakeKube
from tests.schedulers.kubernetes.kubelet import FakeKubelet
from tests.schedulers.kubernetes.objects import (
    CREATED,
    FAILED,
    RUNNING,
    pytorch_worker,
    pytorchjob,
    terminated,
)
from tests.schedulers.kubernetes.test_watch import (  # noqa: F401 - the api fixture
    JOB,
    PYTORCH_PATH,
    Api,
    api,
    start_watcher,
    stop_watcher,
)
from tests.support import Proc, free_port, jobsight_command, require_binary, wait_for_http, wait_until

GPU = "nvidia.com/gpu"
NODES = ("gpu-node1", "gpu-node2")


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[dict[str, Path]]:
    short = Path(f"/tmp/jsx-{tmp_path.name[-12:]}")  # unix socket paths stay under ~108 bytes
    short.mkdir(exist_ok=True)
    yield {node: short / f"{node}.sock" for node in NODES}
    for child in short.iterdir():
        child.unlink()
    short.rmdir()


def test_a_pytorchjob_on_two_nodes_end_to_end(api: Api, sockets: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    with (
        FakeKube({PYTORCH_PATH}) as kube,
        FakeKubelet(sockets[NODES[0]]) as k1,
        FakeKubelet(sockets[NODES[1]]) as k2,
    ):
        kubelets = {NODES[0]: k1, NODES[1]: k2}
        kube.put(PYTORCH_PATH, pytorchjob("llama", CREATED, RUNNING))
        for i in range(4):
            kube.put(PODS, pytorch_worker("llama", i, node=NODES[i // 2]))
        procs: list[Proc] = []
        try:
            ports = {}
            for node in NODES:
                ports[node] = free_port()
                procs.append(Proc(
                    jobsight_command("agent", "--simulate", "4", "--hostname", node, "--no-collector.rdma",
                                     "--no-collector.node", "--no-collector.otlp",
                                     "--job-map-dir", str(tmp_path / node / "jobs"),
                                     "--kubelet.pod-resources-socket", str(sockets[node]),
                                     "--kubelet.pod-alias-dir", str(tmp_path / node / "pods"),
                                     "--kubernetes.api-url", kube.url,
                                     "--web.listen-address", f"127.0.0.1:{ports[node]}"),
                    tmp_path / f"agent-{node}.log"))  # fmt: skip
            for n, node in enumerate(NODES):
                text = wait_for_http(
                    f"http://127.0.0.1:{ports[node]}/metrics", timeout=60, proc=procs[n]
                ).text
                uuids = dict(re.findall(r'DCGM_FI_DEV_GPU_UTIL\{[^}]*gpu="(\d)"[^}]*UUID="([^"]+)"', text))
                if len(uuids) != 4:  # label order: UUID may come after gpu or not
                    uuids = {g: u for u, g in re.findall(r'UUID="([^"]+)"[^}]*gpu="(\d)"', text)} or uuids
                assert len(uuids) == 4, text[:2000]
                first = 2 * n
                kubelets[node].set([
                    ("team-a", f"llama-worker-{first}", "pytorch", GPU, [uuids["0"], uuids["1"]]),
                    ("team-a", f"llama-worker-{first + 1}", "pytorch", GPU, [uuids["2"], uuids["3"]]),
                ])  # fmt: skip
            config = tmp_path / "prometheus.yml"
            config.write_text(json.dumps({"scrape_configs": [{
                "job_name": "jobsight-agent", "scrape_interval": "1s", "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports.values()]}],
            }]}))  # fmt: skip
            port = free_port()
            args = [f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
            prometheus = Proc([require_binary("prometheus"), *args], tmp_path / "prometheus.log")
            procs.append(prometheus)
            base = f"http://127.0.0.1:{port}"
            wait_for_http(f"{base}/-/ready", timeout=120, proc=prometheus)

            def info() -> list[dict[str, Any]] | None:
                result: list[dict[str, Any]] = httpx.get(
                    f"{base}/api/v1/query", params={"query": "jobsight_gpu_job_info"}, timeout=5
                ).json()["data"]["result"]
                return result if len(result) == 8 else None

            series = wait_until(info, timeout=90, interval=0.5, message="8 GPUs in jobsight_gpu_job_info")
            assert {s["metric"]["job_id"] for s in series} == {JOB}
            assert {(s["metric"]["Hostname"], s["metric"]["pod"]) for s in series} == {
                (NODES[i // 2], f"llama-worker-{i}") for i in range(4)
            }
            assert all(
                s["metric"]["namespace"] == "team-a" and s["metric"]["container"] == "pytorch" for s in series
            )

            lookup = PrometheusGpus(base)
            watcher, _, thread = start_watcher(kube, api, gpus=lookup)
            try:
                job = wait_until(lambda: (j := api.job(JOB)) and len(j["gpus"]) == 8 and j, timeout=60,
                                 message="the job with its 8 GPUs in the API")  # fmt: skip
                assert api.job_ids() == [JOB] and job["status"] == "running"
                assert job["nodes"] == list(NODES)
                kube.put(PODS, pytorch_worker("llama", 3, node=NODES[1], phase="Failed",
                                              containers=[terminated(137, "OOMKilled")]))  # fmt: skip
                kube.put(PYTORCH_PATH, pytorchjob("llama", CREATED, RUNNING, FAILED))
                job = api.wait(JOB, "failed")
                assert job["exit_code"] == 137 and len(job["gpus"]) == 8
                titles = wait_until(api.notifications, message="the failure notification")
                assert len(titles) == 1 and "out of memory" in titles[0]
            finally:
                stop_watcher(watcher, thread, kube)
                lookup.close()
        finally:
            for proc in reversed(procs):
                proc.stop()
