"""`jobsight agent --kubelet.pod-resources-socket`: the GPUs a PyTorchJob's pods hold carry its job
id (`<namespace>:<name>`) and dcgm-exporter's namespace/pod/container labels in
jobsight_gpu_job_info; a kube-system pod's GPU is no job's. The kubelet is a real gRPC server on a
unix socket, the API server the in-test one, the agent a real process (simulated GPUs)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.schedulers.kubernetes.fakekube import PODS, FakeKube
from tests.schedulers.kubernetes.kubelet import FakeKubelet
from tests.schedulers.kubernetes.objects import kube_proxy, pytorch_worker
from tests.support import Proc, free_port, jobsight_command, wait_for_http, wait_until

GPU = "nvidia.com/gpu"


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    short = Path(f"/tmp/jsa-{tmp_path.name[-12:]}")  # a unix socket path stays under ~108 bytes
    short.mkdir(exist_ok=True)
    yield short / "kubelet.sock"
    for child in short.iterdir():
        child.unlink()
    short.rmdir()


def samples(text: str, name: str) -> list[dict[str, str]]:
    return [
        dict(re.findall(r'(\w+)="([^"]*)"', line))
        for line in text.splitlines()
        if line.startswith(name + "{")
    ]


def test_gpu_job_info_names_the_training_job_and_its_pods(socket_path: Path, tmp_path: Path) -> None:
    with FakeKube(set()) as kube, FakeKubelet(socket_path) as kubelet:
        for index in (0, 1):
            kube.put(PODS, pytorch_worker("llama", index, node="gpu-node1"))
        kube.put(PODS, kube_proxy())
        kube.put(PODS, pytorch_worker("llama", 9, node="gpu-node1", gpus=0))  # a pod with no GPU
        port = free_port()
        agent = Proc(
            jobsight_command("agent", "--simulate", "4", "--hostname", "gpu-node1", "--no-collector.rdma",
                             "--no-collector.node", "--no-collector.otlp",
                             "--job-map-dir", str(tmp_path / "jobs"),
                             "--kubelet.pod-resources-socket", str(socket_path),
                             "--kubelet.pod-alias-dir", str(tmp_path / "pods"),
                             "--kubernetes.api-url", kube.url,
                             "--web.listen-address", f"127.0.0.1:{port}"),
            tmp_path / "agent.log",
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            text = wait_for_http(url, timeout=60, proc=agent).text
            uuids = {s["gpu"]: s["UUID"] for s in samples(text, "DCGM_FI_DEV_GPU_UTIL")}
            assert len(uuids) == 4
            kubelet.set([
                ("team-a", "llama-worker-0", "pytorch", GPU, [uuids["0"], uuids["1"]]),
                ("team-a", "llama-worker-1", "pytorch", GPU, [uuids["2"]]),
                ("kube-system", "kube-proxy-gpu-node1", "kube-proxy", GPU, [uuids["3"]]),
            ])  # fmt: skip

            def job_info() -> list[dict[str, str]] | None:
                # The simulated GPUs also run simulated jobs' processes: a GPU no job's pod holds
                # keeps those (the processes decide there, as on a node without Kubernetes).
                found = samples(httpx.get(url, timeout=5).text, "jobsight_gpu_job_info")
                ours = [s for s in found if s.get("namespace")]
                return ours if len(ours) == 3 else None

            found = wait_until(
                job_info, timeout=60, message="three GPUs of the PyTorchJob in jobsight_gpu_job_info"
            )
            by_gpu = {s["gpu"]: s for s in found}
            assert {s["job_id"] for s in found} == {"team-a:llama"}  # one job, not a pod UID
            assert by_gpu["0"]["pod"] == "llama-worker-0" and by_gpu["2"]["pod"] == "llama-worker-1"
            assert all(s["namespace"] == "team-a" and s["container"] == "pytorch" for s in found)
            assert "3" not in by_gpu  # kube-system holds it: no job
            # The log collector's half: /var/log/pods/<ns>_<pod>_<uid>/ → the pod's job.
            from jobsight.identity import JobAliasDir, PathJobMatcher

            uid = kube.objects[PODS][("team-a", "llama-worker-1")]["metadata"]["uid"]
            matcher = PathJobMatcher(
                [r"/var/log/pods/[^/_]+_[^/_]+_(?P<pod_uid>[0-9a-f-]{36})/"], JobAliasDir(tmp_path / "pods")
            )
            ref = matcher.job_of(f"/var/log/pods/team-a_llama-worker-1_{uid}/pytorch/0.log")
            assert ref is not None and ref.job_id == "team-a:llama"
            # A pod of the job that holds no GPU: from the pods bound to the node (--hostname).
            no_gpu = kube.objects[PODS][("team-a", "llama-worker-9")]["metadata"]["uid"]
            ref = matcher.job_of(f"/var/log/pods/team-a_llama-worker-9_{no_gpu}/pytorch/0.log")
            assert ref is not None and ref.job_id == "team-a:llama"
            kubelet.set([])  # the job ended: its GPUs are released

            def released() -> bool:
                found = samples(httpx.get(url, timeout=5).text, "jobsight_gpu_job_info")
                return not [s for s in found if s["job_id"] == "team-a:llama" or s.get("namespace")]

            wait_until(released, timeout=60, message="the released GPUs")
        finally:
            agent.stop()
