"""Per-job accounting on a Kubernetes node: a pod cgroup's job is the pod's training job (the
agent's `<pod UID>` file), a job's pods on the node add up, and pods of no job (kube-system) are
no job: the node exporter's cgroup walk and the process resolver agree."""

from __future__ import annotations

from pathlib import Path

from exporters.node.cgroups import JobCgroupFinder
from jobsight.identity import PodJobs

UIDS = (
    "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
    "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f1",
    "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f2",
)


def pod_cgroup(root: Path, uid: str, cpu_usec: int, memory: int, pids: list[int]) -> None:
    pod = (
        root
        / "kubepods.slice"
        / "kubepods-burstable.slice"
        / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
    )
    container = pod / "cri-containerd-1.scope"
    container.mkdir(parents=True)
    (pod / "cpu.stat").write_text(f"usage_usec {cpu_usec}\nuser_usec 1\n")
    (pod / "memory.current").write_text(f"{memory}\n")
    (pod / "io.stat").write_text("8:0 rbytes=10 wbytes=20 rios=1 wios=1\n")
    (container / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))


def test_pods_of_one_job_add_up_and_pods_of_no_job_are_no_job(tmp_path: Path) -> None:
    cgroups = tmp_path / "cgroup"
    pod_cgroup(cgroups, UIDS[0], 2_000_000, 100, [10, 11])  # llama-worker-0
    pod_cgroup(cgroups, UIDS[1], 3_000_000, 50, [20])  # llama-worker-1, same node
    pod_cgroup(cgroups, UIDS[2], 1_000_000, 7, [30])  # kube-proxy: no job
    slurm = cgroups / "system.slice" / "slurmstepd.scope" / "job_77"
    slurm.mkdir(parents=True)
    (slurm / "cgroup.procs").write_text("40\n")
    aliases = tmp_path / "pods"
    aliases.mkdir()
    for uid in UIDS[:2]:
        (aliases / uid).write_text("team-a:llama\n")
    usage = JobCgroupFinder(str(cgroups), pod_jobs=PodJobs(aliases)).usage()
    assert sorted(usage) == ["77", "team-a:llama"]
    llama = usage["team-a:llama"]
    assert (llama.cpu_seconds, llama.memory_bytes, llama.read_bytes, llama.write_bytes) == (
        5.0,
        150.0,
        20.0,
        40.0,
    )
    assert llama.pids == frozenset({10, 11, 20}) and llama.processes == 3
    assert sorted(JobCgroupFinder(str(cgroups), pod_jobs=PodJobs(tmp_path / "none")).usage()) == ["77"]
