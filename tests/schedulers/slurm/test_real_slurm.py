"""Against a real Slurm (two nodes on this host, four fake GPUs each): jobs register themselves,
GPUs know their job, logs carry the job id, failures notify, and the hooks never hurt a job.

Nothing here calls ``PUT /v1/jobs``: every job reaches the API through Slurm's own hooks running
``schedulers.slurm`` — the wrapper deploy/slurm/ documents.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.schedulers.slurm.stack import (
    ADMIN_TOKEN,
    TEAM_TOKEN,
    TENANT,
    SlurmStack,
    auth,
    slurm_stack,
)
from tests.support import wait_until

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmStack]:
    root = tmp_path_factory.mktemp("slurm-stack")
    root.chmod(0o755)
    with slurm_stack(root) as running:
        yield running


def _gpus_of(stack: SlurmStack, node: str, job_id: str) -> set[str]:
    return {gpu for gpu, ids in stack.gpu_jobs(node).items() if job_id in ids}


def _log_records(stack: SlurmStack, job_id: str) -> list[dict[str, object]]:
    r = httpx.get(f"{stack.api_url}/v1/jobs/{job_id}/logs", headers=auth(TEAM_TOKEN), timeout=10)
    return list(r.json()["records"]) if r.status_code == 200 else []


def _script(stack: SlurmStack, name: str, body: str) -> Path:
    path = stack.root / f"{name}.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def release(stack: SlurmStack, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The file a test's job waits for before it ends; created on the way out whatever happened,
    so a failing test leaves no job holding the nodes the next tests need."""
    path = stack.root / f"release-{request.node.name}"
    yield path
    path.touch()


def test_two_node_job_registers_maps_gpus_logs_and_notifies_once(stack: SlurmStack, release: Path) -> None:
    script = _script(stack, "train", "echo 'rank0: step 1 loss 2.5'\n"
                                     f"while [ ! -e {release} ]; do sleep 0.1; done\n"
                                     "echo 'rank0: exiting with an error'\nexit 3")
    job_id = stack.cluster.sbatch("-N2", "--gres=gpu:2", "-A", TENANT, "-J", "llama-pretrain",
                                  "-o", f"{stack.out_dir}/slurm-%j.out", str(script))

    # While it runs: the API lists it (no PUT from the test), and both nodes' exporters say
    # which GPUs are its own.
    job = stack.wait_job(job_id, "running")
    assert job["scheduler"] == "slurm"
    assert job["tenant"] == TENANT
    assert job["name"] == "llama-pretrain"
    assert job["user"] == "root"
    assert job["nodes"] == ["gpu-node1", "gpu-node2"]
    assert job["labels"] == {"partition": "gpu", "account": TENANT}
    wait_until(lambda: (j := stack.job(job_id)) and len(j["gpus"]) == 4, timeout=30,  # type: ignore[arg-type]
               message="the job's GPUs in the registry")
    for node in stack.cluster.nodes:
        # The prolog writes one map file per GPU and the exporter re-reads the directory every
        # second, so a read between two files sees part of the job: wait for all of it.
        wait_until(lambda n=node: _gpus_of(stack, n, job_id) == {"0", "1"},  # type: ignore[misc]
                   timeout=30, message=f"job {job_id} on GPUs 0 and 1 of {node}")
        assert _gpus_of(stack, node, job_id) == {"0", "1"}, (node, stack.gpu_jobs(node))

    # Its log lines carry its id, through the collector and the API.
    logs = wait_until(
        lambda: (r := httpx.get(f"{stack.api_url}/v1/jobs/{job_id}/logs", headers=auth(TEAM_TOKEN),
                                timeout=10)).status_code == 200 and r.json()["records"] and r.json(),
        timeout=30, message="the job's log lines in the API")
    assert any("step 1 loss 2.5" in rec["message"] for rec in logs["records"])

    release.touch()
    failed = stack.wait_job(job_id, "failed", timeout=60)
    assert failed["exit_code"] == 3
    assert failed["ended_at"] is not None
    # The node side let go of the GPUs.
    for node in stack.cluster.nodes:
        wait_until(lambda n=node: not _gpus_of(stack, n, job_id),  # type: ignore[misc]
                   timeout=30, message=f"{node} released job {job_id}")
    wait_until(lambda: job_id in stack.notified_jobs(), timeout=60, message="the failure notification")
    # Another delivery round (the timer's flush) sends nothing again.
    _flush(stack)
    assert stack.notified_jobs().count(job_id) == 1
    assert stack.cluster.unhealthy_nodes() == {}


def _flush(stack: SlurmStack) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "schedulers.slurm", "flush", "--config", str(stack.hook_config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_succeeded_cancelled_and_timeout(stack: SlurmStack) -> None:
    timeout_job = stack.cluster.sbatch("--gres=gpu:1", "-A", TENANT, "-t", "1", "-o", "/dev/null",
                                       "--wrap", "sleep 600")
    ok = stack.cluster.sbatch("--gres=gpu:1", "-A", TENANT, "-o", "/dev/null", "--wrap", "true")
    cancel = stack.cluster.sbatch("--gres=gpu:1", "-A", TENANT, "-o", "/dev/null", "--wrap", "sleep 600")
    succeeded = stack.wait_job(ok, "succeeded")
    assert succeeded["exit_code"] == 0
    stack.wait_job(cancel, "running")
    stack.cluster.run("scancel", cancel)
    stack.wait_job(cancel, "cancelled")
    timed_out = stack.wait_job(timeout_job, "failed", timeout=150)
    assert timed_out["reason"] == "TIMEOUT"


def test_api_down_the_job_runs_and_the_spool_delivers_once(stack: SlurmStack) -> None:
    stack.api_proc.stop()
    job_id = stack.cluster.sbatch("-N2", "--gres=gpu:1", "-A", TENANT, "-o", "/dev/null", "--wrap", "exit 5")
    stack.cluster.wait_state(job_id, ["FAILED"])
    # The job ran and ended normally, and no node was drained for a hook.
    assert stack.cluster.unhealthy_nodes() == {}
    spooled = wait_until(lambda: sorted(p.name for p in (stack.root / "hook-spool").glob("*.json")),
                         timeout=30, message="the job's records in the spool")
    assert any(job_id in name and name.endswith("-running.json") for name in spooled)
    wait_until(lambda: any(job_id in n and n.endswith("-ended.json")
                           for n in (p.name for p in (stack.root / "hook-spool").glob("*.json"))),
               timeout=30, message="the job's end in the spool")
    stack.start_api()
    done = _flush(stack)
    assert done.returncode == 0, done.stderr
    job = stack.job(job_id)
    assert job is not None and job["status"] == "failed" and job["exit_code"] == 5
    assert not list((stack.root / "hook-spool").glob("*.json"))
    assert not (stack.root / "hook-spool" / "rejected").exists() or not list(
        (stack.root / "hook-spool" / "rejected").iterdir())
    wait_until(lambda: job_id in stack.notified_jobs(), timeout=60,
               message="the notification of the spooled failure")
    _flush(stack)
    assert stack.notified_jobs().count(job_id) == 1


def _gpus_held(stack: SlurmStack, jobs: Iterable[str]) -> dict[str, int]:
    """How many GPUs each of ``jobs`` holds in the exporters' maps, over all nodes."""
    counts = dict.fromkeys(jobs, 0)
    for node in stack.cluster.nodes:
        for ids in stack.gpu_jobs(node).values():
            for job in ids:
                if job in counts:
                    counts[job] += 1
    return counts


def test_array_job_ids_join_gpus_and_registry(stack: SlurmStack, release: Path) -> None:
    first = stack.cluster.sbatch(
        "--array=0-2", "--gres=gpu:1", "-A", TENANT, "-o", f"{stack.out_dir}/slurm-%A_%a.out", "--wrap",
        'echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID"; '
        f"while [ ! -e {release} ]; do sleep 0.1; done")
    admin_jobs = wait_until(
        lambda: [j for j in httpx.get(f"{stack.api_url}/v1/jobs", headers=auth(ADMIN_TOKEN),
                                      params={"limit": 200}, timeout=10).json()["jobs"]
                 if j["labels"].get("array_job_id") == first and j["status"] == "running"],
        timeout=60, message="three running array tasks", interval=0.2)
    wait_until(lambda: len([j for j in httpx.get(f"{stack.api_url}/v1/jobs", headers=auth(ADMIN_TOKEN),
                                                 params={"limit": 200}, timeout=10).json()["jobs"]
                            if j["labels"].get("array_job_id") == first]) == 3,
               timeout=60, message="three array tasks registered")
    del admin_jobs
    tasks = {j["labels"]["array_task_id"]: j["job_id"]
             for j in httpx.get(f"{stack.api_url}/v1/jobs", headers=auth(ADMIN_TOKEN), params={"limit": 200},
                                timeout=10).json()["jobs"] if j["labels"].get("array_job_id") == first}
    assert sorted(tasks) == ["0", "1", "2"]
    assert len(set(tasks.values())) == 3
    # Each task's own id is on exactly one GPU.
    wait_until(lambda: set(_gpus_held(stack, tasks.values()).values()) == {1}, timeout=30,
               message="each array task on one GPU")
    # Its log file is named by the array pair (slurm-%A_%a.out); its lines carry the task's own id.
    for task, job in tasks.items():
        logs = wait_until(partial(_log_records, stack, job), timeout=30,
                          message=f"array task {task}'s log lines under job {job}")
        assert [rec["message"] for rec in logs] == [f"task {task} of {first}"]
    release.touch()
    for job in tasks.values():
        stack.wait_job(job, "succeeded")


def test_heterogeneous_job_components_each_join_their_gpus_and_registry(stack: SlurmStack,
                                                                       release: Path) -> None:
    """A het job: each component is a job of its own id (Slurm's), registered with the het
    job's id and its offset as labels, and holds its own GPU."""
    script = stack.root / "het-job.sh"
    script.write_text("#!/bin/sh\n#SBATCH --gres=gpu:1\n#SBATCH -A " + TENANT + "\n#SBATCH -o /dev/null\n"
                      "#SBATCH hetjob\n#SBATCH --gres=gpu:1\n#SBATCH -A " + TENANT + "\n"
                      f"while [ ! -e {release} ]; do sleep 0.1; done\n")
    script.chmod(0o755)
    leader = stack.cluster.sbatch(str(script)).split("+")[0]

    def components() -> dict[str, str]:
        jobs = httpx.get(f"{stack.api_url}/v1/jobs", headers=auth(ADMIN_TOKEN), params={"limit": 200},
                         timeout=10).json()["jobs"]
        return {j["labels"]["het_job_offset"]: j["job_id"] for j in jobs
                if j["labels"].get("het_job_id") == leader and j["status"] == "running"}

    found = wait_until(lambda: (c := components()) and len(c) == 2 and c, timeout=60,
                       message="both components of the het job registered and running", interval=0.2)
    assert sorted(found) == ["0", "1"] and found["0"] == leader and len(set(found.values())) == 2

    wait_until(lambda: set(_gpus_held(stack, found.values()).values()) == {1}, timeout=30,
               message="each component on one GPU")
    release.touch()
    for job in found.values():
        stack.wait_job(job, "succeeded")


def test_broken_config_the_job_still_runs_and_one_error_line(stack: SlurmStack, tmp_path: Path) -> None:
    good = stack.hook_config.read_text()
    stack.hook_config.write_text("api_url: [this is not a url\n")
    try:
        job_id = stack.cluster.sbatch("--gres=gpu:1", "-A", TENANT, "-o", "/dev/null", "--wrap", "true")
        stack.cluster.wait_state(job_id, ["COMPLETED"])
        assert stack.cluster.unhealthy_nodes() == {}
        # The same hook run by hand says what is wrong in one line, and exits 0.
        env = {"SLURM_SCRIPT_CONTEXT": "prolog_slurmctld", "SLURM_JOB_ID": "999",
               "JOBSIGHT_SLURM_CONFIG": str(stack.hook_config), "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-m", "schedulers.slurm", "hook"], env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, done.stderr
        assert str(stack.hook_config) in lines[0] and "YAML" in lines[0]
    finally:
        stack.hook_config.write_text(good)
