"""The pod-resources client against a real gRPC server on a unix socket, and GPU → pod → job on a
node of a 4-worker PyTorchJob (pod metadata from the in-test Kubernetes API server)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as kube_client

from jobsight.errors import DependencyUnavailable
from schedulers.kubernetes.gpus import ApiServerPodMetadata, PodGpuAttribution
from schedulers.kubernetes.owners import PodJobResolver
from schedulers.kubernetes.podresources import DeviceAssignment, PodResourcesClient
from tests.schedulers.kubernetes.fakekube import PODS, FakeKube
from tests.schedulers.kubernetes.kubelet import FakeKubelet
from tests.schedulers.kubernetes.objects import kube_proxy, pod, pytorch_worker
from tests.support import REPO_ROOT

GPU = "nvidia.com/gpu"
UUIDS = [f"GPU-0000000{i}-aaaa-bbbb-cccc-00000000000{i}" for i in range(8)]


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    # A unix socket path must stay under ~108 bytes; pytest's tmp paths can be longer.
    short = Path(f"/tmp/jsk-{tmp_path.name[-12:]}")
    short.mkdir(exist_ok=True)
    yield short / "kubelet.sock"
    for child in short.iterdir():
        child.unlink()
    short.rmdir()


@pytest.fixture
def kubelet(socket_path: Path) -> Iterator[FakeKubelet]:
    with FakeKubelet(socket_path) as server:
        yield server


def test_lists_every_device_by_container(kubelet: FakeKubelet, socket_path: Path) -> None:
    kubelet.set(
        [
            ("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[:2]),
            ("team-a", "llama-worker-0", "sidecar", "example.com/fpga", ["fpga0"]),
            ("team-b", "bert-0", "main", "nvidia.com/mig-1g.10gb", ["MIG-1111"]),
        ]
    )
    lister = PodResourcesClient(socket_path)
    try:
        assert sorted(lister.allocations(), key=lambda d: d.device_id) == sorted(
            [
                DeviceAssignment("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[0]),
                DeviceAssignment("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[1]),
                DeviceAssignment("team-a", "llama-worker-0", "sidecar", "example.com/fpga", "fpga0"),
                DeviceAssignment("team-b", "bert-0", "main", "nvidia.com/mig-1g.10gb", "MIG-1111"),
            ],
            key=lambda d: d.device_id,
        )
        assert {d.device_id for d in lister.gpus()} == {UUIDS[0], UUIDS[1], "MIG-1111"}
    finally:
        lister.close()


def test_kubelet_down_is_said_and_a_restarted_kubelet_is_reached_again(socket_path: Path) -> None:
    lister = PodResourcesClient(socket_path, timeout=2.0)
    try:
        with pytest.raises(DependencyUnavailable, match="kubelet pod-resources"):
            lister.allocations()
        with FakeKubelet(socket_path, [("ns", "p", "c", GPU, [UUIDS[0]])]):
            assert [d.device_id for d in lister.gpus()] == [UUIDS[0]]
        socket_path.unlink(missing_ok=True)
        # The kubelet restarts: a new socket at the same path; the same client reconnects.
        with FakeKubelet(socket_path, [("ns", "p2", "c", GPU, [UUIDS[1]])]):
            assert [d.pod for d in lister.gpus()] == ["p2"]
    finally:
        lister.close()


def _api_client(url: str) -> kube_client.ApiClient:
    config = kube_client.Configuration()
    config.host = url
    return kube_client.ApiClient(config)


def test_gpus_of_a_pytorchjob_node_belong_to_the_job(kubelet: FakeKubelet, socket_path: Path) -> None:
    """Node gpu-node1 of a 4-worker, 8-GPU PyTorchJob on 2 nodes: workers 0 and 1 hold 2 GPUs
    each; a kube-system pod and a pod of no job hold the rest."""
    with FakeKube(set()) as kube:
        for index in (0, 1):
            kube.put(PODS, pytorch_worker("llama", index, node="gpu-node1"))
        kube.put(PODS, kube_proxy())
        kube.put(PODS, pod("notebook", gpus=1))
        kubelet.set(
            [
                ("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[0:2]),
                ("team-a", "llama-worker-1", "pytorch", GPU, UUIDS[2:4]),
                ("kube-system", "kube-proxy-gpu-node1", "kube-proxy", GPU, [UUIDS[4]]),
                ("team-a", "notebook", "pytorch", GPU, [UUIDS[5]]),
                ("team-a", "vanished", "pytorch", GPU, [UUIDS[6]]),
            ]
        )
        attribution = PodGpuAttribution(
            PodResourcesClient(socket_path), ApiServerPodMetadata(_api_client(kube.url)), PodJobResolver()
        )
        owners = attribution.by_device()
        assert {u: owners[u].job_id for u in UUIDS[:4]} == dict.fromkeys(UUIDS[:4], "team-a:llama")
        assert (owners[UUIDS[2]].namespace, owners[UUIDS[2]].pod, owners[UUIDS[2]].container) == (
            "team-a",
            "llama-worker-1",
            "pytorch",
        )
        assert owners[UUIDS[4]].job_id is None and owners[UUIDS[5]].job_id is None  # no job: no job id
        assert owners[UUIDS[6]].job_id is None  # the API server no longer knows the pod
        # Only metadata was asked for, and each pod once: the second call is served from the cache.
        pod_reads = [r for r in kube.requests() if "/pods/" in r.path]
        attribution.owners()
        assert len([r for r in kube.requests() if "/pods/" in r.path]) == len(pod_reads) == 5


def test_api_server_down_leaves_the_job_unknown_and_counts(kubelet: FakeKubelet, socket_path: Path) -> None:
    clock = [0.0]
    with FakeKube(set()) as kube:
        kube.put(PODS, pytorch_worker("llama", 0, node="gpu-node1"))
        kubelet.set([("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[:1])])
        kube.fail_next(500)
        attribution = PodGpuAttribution(
            PodResourcesClient(socket_path),
            ApiServerPodMetadata(_api_client(kube.url), timeout=2.0),
            PodJobResolver(),
            retry=10.0,
            clock=lambda: clock[0],
        )
        owners = attribution.owners()
        assert [(o.pod, o.job_id) for o in owners] == [("llama-worker-0", None)]
        assert attribution.errors == 1
        reads = len(kube.requests())
        clock[0] = 5.0
        assert [o.job_id for o in attribution.owners()] == [None]  # not asked again before the retry
        assert len(kube.requests()) == reads
        clock[0] = 11.0
        assert [o.job_id for o in attribution.owners()] == ["team-a:llama"]  # the API server is back


def test_committed_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """``make proto`` output is committed (the agent needs no protoc); it must be what the .proto
    says today."""
    proto_dir = REPO_ROOT / "schedulers" / "kubernetes" / "proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            str(proto_dir / "podresources.proto"),
        ],
        check=True,
        timeout=60,
    )
    for name in ("podresources_pb2.py", "podresources_pb2.pyi"):
        assert (tmp_path / name).read_text() == (proto_dir / name).read_text(), f"{name}: run `make proto`"


def test_pod_job_map_reads_like_a_job_map_directory(
    kubelet: FakeKubelet, socket_path: Path, tmp_path: Path
) -> None:
    """What the GPU exporter's attribution reads: UUID → job from the kubelet, over map files."""
    from jobsight.identity import JobMapDir
    from schedulers.kubernetes.gpus import PodJobMap

    files = tmp_path / "jobs"
    files.mkdir()
    (files / UUIDS[7]).write_text("4711\n")  # a Slurm-style map file for a GPU no pod holds
    (files / UUIDS[0]).write_text("stale\n")  # the kubelet says otherwise: it wins
    with FakeKube(set()) as kube:
        kube.put(PODS, pytorch_worker("llama", 0, node="gpu-node1"))
        kube.put(PODS, kube_proxy())
        kubelet.set([
            ("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[0:2]),
            ("kube-system", "kube-proxy-gpu-node1", "kube-proxy", GPU, [UUIDS[2]]),
        ])  # fmt: skip
        attribution = PodGpuAttribution(
            PodResourcesClient(socket_path), ApiServerPodMetadata(_api_client(kube.url)), PodJobResolver()
        )
        aliases = tmp_path / "pods"
        aliases.mkdir()
        old_uid, recent_uid = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
        for uid in (old_uid, recent_uid):
            (aliases / uid).write_text("team-a:earlier\n")
        os.utime(aliases / old_uid, (1.0, 1.0))  # a pod gone for long: its alias is pruned
        job_map = PodJobMap(attribution, JobMapDir(files), pod_alias_dir=aliases)
        snapshot = job_map.read()
        worker_uid = kube.objects[PODS][("team-a", "llama-worker-0")]["metadata"]["uid"]
        assert (aliases / worker_uid).read_text() == "team-a:llama\n"  # for the log collector
        assert sorted(p.name for p in aliases.iterdir()) == sorted([worker_uid, recent_uid])
        assert snapshot.jobs_by_key == {
            UUIDS[0]: ("team-a:llama",),
            UUIDS[1]: ("team-a:llama",),
            UUIDS[7]: ("4711",),
        }
        job = snapshot.job_for_gpu(5, UUIDS[1])
        assert job is not None and job.job_id == "team-a:llama"
        assert job_map.pod_labels()[UUIDS[1]] == ("team-a:llama", {
            "namespace": "team-a",
            "pod": "llama-worker-0",
            "container": "pytorch",
        })
        assert UUIDS[2] not in job_map.pod_labels()  # a kube-system pod's GPU: no job, no labels
        kubelet.stop()
        down = job_map.read()
        assert down.jobs_by_key == {UUIDS[0]: ("stale",), UUIDS[7]: ("4711",)}
        assert any("kubelet pod-resources" in error for error in down.errors)


def test_kube_gpus_command_prints_the_node_table(
    kubelet: FakeKubelet, socket_path: Path, tmp_path: Path
) -> None:
    from tests.schedulers.kubernetes.fakekube import kubeconfig
    from tests.support import jobsight_command

    with FakeKube(set()) as kube:
        kube.put(PODS, pytorch_worker("llama", 0, node="gpu-node1"))
        kubelet.set([("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[:2])])
        config = tmp_path / "kubeconfig"
        config.write_text(kubeconfig(kube.url))
        result = subprocess.run(
            jobsight_command(
                "kube", "gpus", "--pod-resources-socket", str(socket_path), "--kubeconfig", str(config)
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{u}\tteam-a/llama-worker-0\tpytorch\tteam-a:llama" for u in UUIDS[:2]
    ]


def test_in_cluster_metadata_with_the_standard_library(
    kubelet: FakeKubelet, socket_path: Path, tmp_path: Path
) -> None:
    """What the agent uses (no Kubernetes client in jobsight[agent]): the service account's token,
    read on every request, PartialObjectMetadata only; 404 is no pod; errors are the API's."""
    from schedulers.kubernetes.gpus import InClusterPodMetadata

    token = tmp_path / "token"
    token.write_text("first-token\n")
    with FakeKube(set()) as kube:
        kube.put(PODS, pytorch_worker("llama", 0, node="gpu-node1"))
        kubelet.set([("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[:1])])
        pods = InClusterPodMetadata(kube.url, token_file=token)
        attribution = PodGpuAttribution(PodResourcesClient(socket_path), pods, PodJobResolver())
        assert [o.job_id for o in attribution.owners()] == ["team-a:llama"]
        token.write_text("rotated-token\n")
        meta = pods.get("team-a", "llama-worker-0")
        assert meta is not None and meta.uid
        assert pods.get("team-a", "gone") is None
        kube.fail_next(500)
        with pytest.raises(DependencyUnavailable, match="HTTP 500"):
            pods.get("team-a", "llama-worker-0")
        seen = [r for r in kube.requests() if "/pods/" in r.path]
        assert seen[0].path == "/api/v1/namespaces/team-a/pods/llama-worker-0"
        assert [r.authorization for r in seen[:2]] == ["Bearer first-token", "Bearer rotated-token"]
    with pytest.raises(DependencyUnavailable):
        InClusterPodMetadata(kube.url, token_file=token, timeout=1).get("team-a", "x")  # server gone


@pytest.mark.parametrize("source", ["in-cluster", "client"])
def test_pods_without_gpus_get_their_alias_from_the_pods_bound_to_the_node(
    kubelet: FakeKubelet, socket_path: Path, tmp_path: Path, source: str
) -> None:
    """An MPIJob's launcher, a data loader: pods of a job that hold no GPU write logs too. The
    agent lists the pods bound to its node (a field selector, metadata only) once a minute and
    writes their aliases as well; pods of other nodes and of no job get none."""
    from schedulers.kubernetes.gpus import InClusterPodMetadata, PodJobMap

    with FakeKube(set()) as kube:
        kube.put(PODS, pytorch_worker("llama", 0, node="gpu-node1"))
        kube.put(PODS, pytorch_worker("llama", 1, node="gpu-node1", gpus=0))  # holds no GPU
        kube.put(PODS, pytorch_worker("other", 0, node="gpu-node2", gpus=0))  # another node
        kube.put(PODS, kube_proxy())  # this node, no job
        kubelet.set([("team-a", "llama-worker-0", "pytorch", GPU, UUIDS[:1])])
        pods = (InClusterPodMetadata(kube.url, token_file=None) if source == "in-cluster"
                else ApiServerPodMetadata(_api_client(kube.url)))
        attribution = PodGpuAttribution(PodResourcesClient(socket_path), pods, PodJobResolver(), retry=10)
        now = [1000.0]
        aliases = tmp_path / "pods"
        job_map = PodJobMap(attribution, pod_alias_dir=aliases, node_name="gpu-node1", clock=lambda: now[0])
        job_map.read()

        def uid(namespace: str, name: str) -> str:
            return str(kube.objects[PODS][(namespace, name)]["metadata"]["uid"])

        written = {p.name: p.read_text() for p in aliases.iterdir()}
        assert written == {uid("team-a", "llama-worker-0"): "team-a:llama\n",
                           uid("team-a", "llama-worker-1"): "team-a:llama\n"}
        listed = [r for r in kube.requests() if r.path == PODS]
        assert len(listed) == 1 and listed[0].query["fieldSelector"] == "spec.nodeName=gpu-node1"
        job_map.read()  # within the minute: no second list
        assert len([r for r in kube.requests() if r.path == PODS]) == 1
        # The API server down: the aliases stay, the error is said, and it is asked again later.
        now[0] += 61
        kube.fail_next(503)
        down = job_map.read()
        assert any("pods on gpu-node1" in error for error in down.errors)
        assert {p.name for p in aliases.iterdir()} == set(written)
        now[0] += 11
        kube.put(PODS, pytorch_worker("llama", 2, node="gpu-node1", gpus=0))
        assert not job_map.read().errors
        assert (aliases / uid("team-a", "llama-worker-2")).read_text() == "team-a:llama\n"
