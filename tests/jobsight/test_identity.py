from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobsight.errors import InvalidInput
from jobsight.identity import (
    JobAliasDir,
    JobMapDir,
    JobRef,
    PathJobMatcher,
    PodJobs,
    ProcessJobResolver,
    job_from_cgroup,
    job_from_environ,
)
from jobsight.jobid import is_valid_job_id, validate_job_id
from tests.support import FIXTURES

PROC = FIXTURES / "identity" / "proc"
JOBMAP = FIXTURES / "identity" / "jobmap"


def test_job_map_reads_index_uuid_and_mig_files() -> None:
    snap = JobMapDir(JOBMAP).read()
    assert snap.by_key == {
        "0": "4711",  # jobstats format "<jobid> <uid>": first token
        "1": "4711",  # dcgm-exporter format: one job id per line
        "4.1": "9001",  # MIG: <gpu>.<gpu instance>
        "GPU-11111111-2222-3333-4444-555555555555": "555",
    }
    assert snap.job_for_gpu(0) == JobRef("4711", "map:0")
    assert snap.job_for_gpu(2) is None  # empty file: no job
    # a UUID file wins over the index file
    assert snap.job_for_gpu(0, "GPU-11111111-2222-3333-4444-555555555555") == JobRef(
        "555", "map:GPU-11111111-2222-3333-4444-555555555555"
    )


def test_job_map_keeps_every_job_of_a_shared_gpu(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("4711\n4712 1000\n\n4711\n")
    (tmp_path / "1").write_text("ok-1\nbad{id}\n")
    snap = JobMapDir(tmp_path).read()
    assert snap.jobs_by_key == {"0": ("4711", "4712"), "1": ("ok-1",)}
    assert snap.jobs_for_gpu(0) == (JobRef("4711", "map:0"), JobRef("4712", "map:0"))
    assert snap.job_for_gpu(0) == JobRef("4711", "map:0")
    assert snap.by_key == {"0": "4711", "1": "ok-1"}
    assert any("invalid job id" in err for err in snap.errors)


def test_job_map_rejects_unsafe_ids_and_reports_them() -> None:
    snap = JobMapDir(JOBMAP).read()
    assert "3" not in snap.by_key
    assert any("invalid job id" in err and err.startswith(str(JOBMAP / "3")) for err in snap.errors)
    assert "README" not in snap.by_key  # only GPU-named files are read


def test_missing_job_map_dir_is_empty(tmp_path: Path) -> None:
    snap = JobMapDir(tmp_path / "absent").read()
    assert snap.by_key == {} and snap.errors == ()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_map_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "0").write_text("1\n")
    (tmp_path / "1").write_text("2\n")
    (tmp_path / "0").chmod(0)
    snap = JobMapDir(tmp_path).read()
    assert snap.by_key == {"1": "2"} and len(snap.errors) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0::/system.slice/slurmstepd.scope/job_4711/step_0/user/task_0\n", JobRef("4711", "cgroup:slurm")),
        (
            "4:memory:/slurm/uid_1000/job_1234/step_batch\n1:name=systemd:/user.slice\n",
            JobRef("1234", "cgroup:slurm"),
        ),
        (
            "0::/kubepods/burstable/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/abc\n",
            JobRef("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", "cgroup:kubernetes"),
        ),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
        ("garbage without colons\n", None),
        ("", None),
    ],
)
def test_job_from_cgroup(text: str, expected: JobRef | None) -> None:
    assert job_from_cgroup(text) == expected


def test_job_from_environ_order_and_validation() -> None:
    raw = b"A=1\0SLURM_JOB_ID=77\0JOBSIGHT_JOB_ID=run-9\0"
    assert job_from_environ(raw) == JobRef("run-9", "env:JOBSIGHT_JOB_ID")
    assert job_from_environ(raw, ["SLURM_JOB_ID"]) == JobRef("77", "env:SLURM_JOB_ID")
    assert job_from_environ(b"JOBSIGHT_JOB_ID=a\"b\0") is None
    assert job_from_environ(b"\xff\xfe\0JOBSIGHT_JOB_ID=\0") is None


def test_process_resolver_on_fixture_tree(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    pods.mkdir()
    no_pod_files = PodJobs(tmp_path / "none")
    for resolver in (ProcessJobResolver(PROC, pod_jobs=no_pod_files),
                     ProcessJobResolver(PROC, trust_environment=True, pod_jobs=no_pod_files)):
        # PID 100's environment says train-42, but it is in Slurm job 4711's cgroup: the cgroup
        # wins, trusted environment or not.
        assert resolver.job_of(100) == JobRef("4711", "cgroup:slurm")
        assert resolver.job_of(200) == JobRef("1234", "cgroup:slurm")
        # A pod's process: the pod UID is never a job id; without the agent's file, no job.
        assert resolver.job_of(300) is None
        assert resolver.job_of(400) is None  # invalid env value, no job cgroup
        assert resolver.job_of(500) == JobRef("77", "cgroup:slurm")  # no environ file
        assert resolver.job_of(999) is None  # no such process
        assert resolver.jobs_of([100, 400, 999]) == {100: JobRef("4711", "cgroup:slurm")}
    # The agent wrote the pod's training job (issue 12): the process belongs to it.
    (pods / "6f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8").write_text("team-a:llama\n")
    with_pods = ProcessJobResolver(PROC, pod_jobs=PodJobs(pods))
    assert with_pods.job_of(300) == JobRef("team-a:llama", "cgroup:kubernetes")


def test_process_resolver_takes_the_environment_only_when_trusted(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    shutil.copytree(PROC, proc)
    (proc / "400" / "environ").write_bytes(b"PATH=/bin\0SLURM_JOB_ID=4711\0")  # a user's session
    assert ProcessJobResolver(proc).job_of(400) is None
    assert ProcessJobResolver(proc, trust_environment=True).job_of(400) == JobRef("4711", "env:SLURM_JOB_ID")
    # Bounded: a variable past max_environ_bytes is not seen.
    (proc / "400" / "environ").write_bytes(b"A=" + b"x" * 100 + b"\0JOBSIGHT_JOB_ID=9\0")
    assert ProcessJobResolver(proc, trust_environment=True, max_environ_bytes=64).job_of(400) is None


def test_a_user_made_cgroup_that_looks_like_a_schedulers_is_not_a_job() -> None:
    # Directories a user can create in the subtree systemd delegates to them.
    delegated = "0::/user.slice/user-1000.slice/user@1000.service/app.slice"
    assert job_from_cgroup(f"{delegated}/system.slice/slurmstepd.scope/job_4711/x\n") is None
    assert job_from_cgroup(f"{delegated}/slurm/uid_0/job_4711\n") is None
    assert job_from_cgroup(f"{delegated}/kubepods/pod0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0\n") is None
    # Seen from inside a cgroup namespace, a host job's path starts with "/..".
    assert job_from_cgroup("0::/../../system.slice/slurmstepd.scope/job_4711/step_0\n") == JobRef(
        "4711", "cgroup:slurm")


def test_process_resolver_rereads_a_reused_pid(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    shutil.copytree(PROC, proc)
    resolver = ProcessJobResolver(proc)
    assert resolver.job_of(100) == JobRef("4711", "cgroup:slurm")
    # The files change but the start time does not: the same process, answered from the cache
    # (cgroup and environ are read once per process).
    (proc / "100" / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_5000/step_0\n")
    assert resolver.job_of(100) == JobRef("4711", "cgroup:slurm")
    # Same pid, new process (new start time), new job: read again.
    stat = (proc / "100" / "stat").read_text().replace(" 5000 ", " 5001 ")
    (proc / "100" / "stat").write_text(stat)
    assert resolver.job_of(100) == JobRef("5000", "cgroup:slurm")
    # A start time the caller already read is used as the key too.
    (proc / "100" / "cgroup").write_text("0::/user.slice/user-1000.slice/session-1.scope\n")
    assert resolver.job_of(100, 5001) == JobRef("5000", "cgroup:slurm")
    assert resolver.job_of(100, 5002) is None
    resolver.forget_except([])
    assert resolver._cache == {}


def test_process_resolver_on_a_real_child_process() -> None:
    env = {**os.environ, "JOBSIGHT_JOB_ID": "real-child-1"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env=env)
    try:
        # This test's processes are in no scheduler cgroup: the environment counts only if trusted.
        assert ProcessJobResolver("/proc").job_of(child.pid) is None
        trusting = ProcessJobResolver("/proc", trust_environment=True)
        assert trusting.job_of(child.pid) == JobRef("real-child-1", "env:JOBSIGHT_JOB_ID")
    finally:
        child.kill()
        child.wait()


def test_path_matcher_defaults_and_errors(tmp_path: Path) -> None:
    matcher = PathJobMatcher()
    assert matcher.job_of("/var/spool/slurmd/job04711/slurm-4711.out") == JobRef("4711", "path")
    assert matcher.job_of("/var/spool/slurm/job04711/slurm-4711_3.out") == JobRef("4711_3", "path")
    pod = "/var/log/pods/ns_trainer-0_0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/pytorch/0.log"
    assert matcher.job_of(pod) is None  # a pod UID is never a job id (issue 12)
    aliases = tmp_path / "pods"
    aliases.mkdir()
    (aliases / "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0").write_text("ns:train\n")
    assert PathJobMatcher(aliases=JobAliasDir(aliases)).job_of(pod) == JobRef(
        "ns:train", "alias:pod:0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
    assert matcher.job_of("/var/log/syslog") is None
    with pytest.raises(InvalidInput, match="no named group"):
        PathJobMatcher([r"/data/(\d+)/"])
    with pytest.raises(InvalidInput, match="not a valid regex"):
        PathJobMatcher([r"/data/(?P<job_id>"])


@pytest.mark.parametrize("path", [
    "/home/eve/slurm-4711.out",  # a user's own file named like the scheduler's
    "/home/eve/var/spool/slurmd/job04711/slurm-4711.out",  # the spool path below a user's directory
    "/var/spool/slurmd/job04711/slurm-4711.out.evil",
    "/tmp/var/log/pods/ns_p_0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0/c/0.log",
])
def test_path_patterns_match_the_whole_path(path: str) -> None:
    assert PathJobMatcher().job_of(path) is None


def test_path_patterns_must_be_anchored_at_the_root() -> None:
    for unanchored in (r"slurm-(?P<job_id>\d+)\.out$", r"(?P<job_id>\d+)/", r"/data/(?P<job_id>\d+)/|.*x"):
        with pytest.raises(InvalidInput, match="must start with '/'"):
            PathJobMatcher([unanchored])
    directory = PathJobMatcher([r"/data/jobs/(?P<job_id>[^/]+)/"])  # a directory: everything below it
    assert directory.job_of("/data/jobs/4711/train.log") == JobRef("4711", "path")
    assert directory.job_of("/data/jobs/4711/sub/train.log") == JobRef("4711", "path")
    assert directory.job_of("/home/eve/data/jobs/4711/train.log") is None
    explicit = PathJobMatcher([r"^/data/(?P<job_id>\d+)/[^/]+\.log$"])
    assert explicit.job_of("/data/4711/a.log") == JobRef("4711", "path")
    assert explicit.job_of("/data/4711/a.log.1") is None


@pytest.mark.parametrize("value", ["4711", "4711_3", "train-42", "a.b:c@d", "x" * 128])
def test_valid_job_ids(value: str) -> None:
    assert validate_job_id(value) == value


@pytest.mark.parametrize(
    "value", ["", "-lead", 'a"}', "a b", 'x=~".*"', "a\\b", "x" * 129, "job\n1", "é"]
)
def test_invalid_job_ids(value: str) -> None:
    assert not is_valid_job_id(value)
    with pytest.raises(InvalidInput, match="invalid job id"):
        validate_job_id(value)
