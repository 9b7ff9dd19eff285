"""The hook's parts on their own: host lists, gres.conf and the driver's GPU listing, Slurm's
environment, the config, the spool's order and once-only delivery, and the final-state rules."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from jobsight.errors import ConfigError, InvalidInput
from schedulers.slurm import gres, hostlist
from schedulers.slurm.config import load_config
from schedulers.slurm.environment import from_environ
from schedulers.slurm.flush import gpus_from_detail
from schedulers.slurm.hook import Hook, run_hook
from schedulers.slurm.jobmap import JobMapWriter
from schedulers.slurm.spool import JobNotReady, PermanentRejection, Spool, TransientFailure
from schedulers.slurm.state import final_from_fields, inferred, parse_show_job


def test_hostlist_expands_ranges_padding_and_lists() -> None:
    assert hostlist.expand("gpu-node[1-2],login1") == ["gpu-node1", "gpu-node2", "login1"]
    assert hostlist.expand("n[08-10]") == ["n08", "n09", "n10"]
    assert hostlist.expand("r[1-2]n[1,3]") == ["r1n1", "r1n3", "r2n1", "r2n3"]
    assert hostlist.expand("/dev/nvidia[0-3]") == [f"/dev/nvidia{i}" for i in range(4)]
    for bad in ("n[1-", "n[3-1]", "n[a-b]", "n]1["):
        with pytest.raises(InvalidInput):
            hostlist.expand(bad)


def _chardev(path: Path, minor: int) -> None:
    os.mknod(path, 0o666 | 0o020000, os.makedev(195, minor))


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_slurm_gpu_positions_become_the_drivers_uuids(tmp_path: Path) -> None:
    # node2's gres.conf list starts at minor 4: Slurm's index 0 is minor 4, which the driver
    # listing names GPU-e; minor 6 is not listed and is named by its minor.
    for minor in range(8):
        _chardev(tmp_path / f"nvidia{minor}", minor)
    conf = (f"AutoDetect=off\nNodeName=n1 Name=gpu File={tmp_path}/nvidia[0-3]\n"
            f"NodeName=n2 Name=gpu Type=h100 File={tmp_path}/nvidia[4-7]  # second node\n")
    listing = tmp_path / "gpus"
    for minor, uuid in ((4, "GPU-e"), (5, "GPU-f")):
        (listing / f"bus{minor}").mkdir(parents=True)
        info = f"GPU UUID: \t {uuid}\nDevice Minor: \t {minor}\n"
        (listing / f"bus{minor}" / "information").write_text(info)
    files = gres.gpu_files(conf, "n2")
    assert files == [f"{tmp_path}/nvidia{i}" for i in range(4, 8)]
    assert gres.map_keys([0, 1, 2], files, gres.uuids_by_minor(listing)) == ["GPU-e", "GPU-f", "6"]
    assert gres.map_keys([3], [], {}) == ["3"]  # AutoDetect=nvml: Slurm's order is NVML's
    with pytest.raises(InvalidInput, match=r"past gres\.conf"):
        gres.map_keys([4], files, {})
    (tmp_path / "plain").write_text("")
    with pytest.raises(InvalidInput, match="not a character device"):
        gres.map_keys([0], [str(tmp_path / "plain")], {})


def test_environment_of_each_hook() -> None:
    env = {"SLURM_SCRIPT_CONTEXT": "epilog_slurmd", "SLURM_JOB_ID": "3", "SLURM_JOB_USER": "alice",
           "SLURM_JOB_ACCOUNT": "(null)", "SLURM_JOB_GPUS": "0,1", "SLURMD_NODENAME": "gpu-node2",
           "SLURM_JOB_NODELIST": "gpu-node[1-2]", "SLURM_JOB_EXIT_CODE2": "3:0", "SLURM_JOB_EXIT_CODE": "768",
           "SLURM_ARRAY_JOB_ID": "2", "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_PARTITION": "gpu"}
    job = from_environ(env)
    assert (job.job_id, job.user, job.account, job.gpu_indices) == ("3", "alice", None, (0, 1))
    assert job.nodes == ("gpu-node1", "gpu-node2") and job.node_side
    assert (job.exit_code, job.exit_signal) == (3, 0)
    assert job.labels == {"partition": "gpu", "array_job_id": "2", "array_task_id": "0"}
    for bad in ({**env, "SLURM_SCRIPT_CONTEXT": "task_prolog"}, {**env, "SLURM_JOB_ID": "1;drop"},
                {**env, "SLURM_JOB_GPUS": "0,x"}, {k: v for k, v in env.items() if k != "SLURM_JOB_ID"}):
        with pytest.raises(InvalidInput):
            from_environ(bad)


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "slurm.yaml"
    for text, field in (("api_url: ftp://x\n", "api_url"), ("timeout_seconds: 0\n", "timeout_seconds"),
                        ("tokn: x\n", "tokn"), ("token: a\ntoken_file: /x\n", "token_file"),
                        ("tenant_map: {acct: 'bad tenant'}\n", "tenant_map.acct"), ("[1, 2]\n", "mapping")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=field) as info:
            load_config(path)
        assert str(path) in str(info.value)
    path.write_text("api_url: http://api:8000\ntenant_map: {proj1: team-a}\njob_map_dir: /run/j/%n\n")
    config = load_config(path)
    assert config.node_path(config.job_map_dir, "n1") == Path("/run/j/n1")
    assert config.tenant_map == {"proj1": "team-a"}


def test_job_map_keeps_each_jobs_gpus_and_shares(tmp_path: Path) -> None:
    writer = JobMapWriter(tmp_path / "jobs")
    writer.add("10", ["0", "GPU-a"])
    writer.add("11", ["GPU-a", "2"])  # a shared GPU holds both, in order
    assert (tmp_path / "jobs" / "GPU-a").read_text() == "10\n11\n"
    assert sorted(writer.remove("10")) == ["0", "GPU-a"]
    assert (tmp_path / "jobs" / "GPU-a").read_text() == "11\n"
    assert not (tmp_path / "jobs" / "0").exists()
    assert writer.remove("10") == []
    left = sorted(p.name for p in (tmp_path / "jobs").iterdir() if not p.name.startswith("."))
    assert left == ["2", "GPU-a"]


def _clock() -> Any:
    counter = iter(range(1, 10_000))
    return lambda: next(counter)


def test_spool_delivers_in_order_once_and_keeps_what_failed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", clock=_clock())
    for job, state in (("7", "running"), ("8", "running"), ("7", "ended"), ("9", "running")):
        spool.put(job, state, {"status": state})
    sent: list[tuple[str, str]] = []

    def down(record: dict[str, Any]) -> None:
        raise TransientFailure("connection refused")

    report = spool.deliver(down, deadline=float("inf"))
    assert (report.delivered, report.pending) == (0, 4) and "refused" in (report.error or "")

    not_ready_once = {"9"}

    def api(record: dict[str, Any]) -> None:
        if record["job_id"] == "8":
            raise PermanentRejection("HTTP 422")
        if record["job_id"] in not_ready_once:
            not_ready_once.discard(record["job_id"])
            raise JobNotReady("still completing")
        sent.append((record["job_id"], record["state"]))

    report = spool.deliver(api, deadline=float("inf"))
    assert sent == [("7", "running"), ("7", "ended")]
    assert (report.delivered, report.rejected, report.pending) == (2, 1, 1)
    assert len(list((tmp_path / "spool" / "rejected").glob("*-8-running.json"))) == 1
    assert "HTTP 422" in next((tmp_path / "spool" / "rejected").glob("*.reason")).read_text()
    report = spool.deliver(api, deadline=float("inf"))
    assert sent[-1] == ("9", "running") and report.pending == 0
    assert spool.deliver(api, deadline=float("inf")).delivered == 0  # nothing twice


def test_a_job_not_ready_holds_only_its_own_later_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, clock=_clock())
    spool.put("a-1", "ended", {})
    spool.put("b", "running", {})
    spool.put("a-1", "running", {})  # hypothetical later record of the same job
    sent: list[str] = []

    def api(record: dict[str, Any]) -> None:
        if record["job_id"] == "a-1":
            raise JobNotReady("completing")
        sent.append(record["job_id"])

    report = spool.deliver(api, deadline=float("inf"))
    assert sent == ["b"] and report.pending == 2


def test_final_states_from_scontrol() -> None:
    line = ("JobId=5 JobName=wrap JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15 "
            "StartTime=2026-11-29T13:29:37 EndTime=2026-11-29T13:30:38 NodeList=gpu-node1")
    fields = parse_show_job(line)
    state = final_from_fields(fields)
    assert (state.status, state.reason, state.exit_code) == ("failed", "TIMEOUT", 143)
    assert state.started_at is not None and state.started_at.endswith("+00:00")
    cases = {"COMPLETED 0:0": ("succeeded", 0), "FAILED 3:0": ("failed", 3),
             "CANCELLED 0:15": ("cancelled", 0), "OUT_OF_MEMORY 0:125": ("failed", 0),
             "NODE_FAIL 0:0": ("failed", 0)}
    for given, (status, code) in cases.items():
        job_state, exit_code = given.split()
        got = final_from_fields({"JobState": job_state, "ExitCode": exit_code, "Reason": "None"})
        assert got.status == status, given
        if status != "failed" or job_state == "FAILED":
            assert got.exit_code == code, given
    from schedulers.slurm.state import StillCompleting

    with pytest.raises(StillCompleting):
        final_from_fields({"JobState": "COMPLETING", "ExitCode": "0:15"})
    assert inferred(3, 0).status == "failed" and inferred(0, 9).exit_code == 137
    assert inferred(0, 0).status == "succeeded"


def test_gpu_detail_from_scontrol_d() -> None:
    raw = ("JobId=1 JobName=t JOB_GRES=gpu:4 Nodes=gpu-node[1-2] CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:0-1) "
           "Nodes=gpu-node3 CPU_IDs=0-1 Mem=0 GRES=gpu:h100:2(IDX:1,3) MinCPUsNode=1")
    assert gpus_from_detail(raw) == [
        {"host": "gpu-node1", "gpu": 0}, {"host": "gpu-node1", "gpu": 1},
        {"host": "gpu-node2", "gpu": 0}, {"host": "gpu-node2", "gpu": 1},
        {"host": "gpu-node3", "gpu": 1}, {"host": "gpu-node3", "gpu": 3},
    ]


def test_the_hook_never_fails_a_job(tmp_path: Path) -> None:
    base = {"SLURM_SCRIPT_CONTEXT": "prolog_slurmctld", "SLURM_JOB_ID": "42"}
    config = tmp_path / "slurm.yaml"
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool directory should be")
    config.write_text(f"spool_dir: {blocked}/spool\napi_url: http://127.0.0.1:9\n")
    cases = [
        ({**base, "JOBSIGHT_SLURM_CONFIG": str(tmp_path / "missing.yaml")}, "cannot read config"),
        ({**base, "JOBSIGHT_SLURM_CONFIG": str(config)}, "spool"),
        ({"SLURM_JOB_ID": "42", "JOBSIGHT_SLURM_CONFIG": str(config)}, "SLURM_SCRIPT_CONTEXT"),
    ]
    for env, expected in cases:
        err = io.StringIO()
        assert run_hook(env, stderr=err, spawn=lambda argv: None) == 0
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "the job goes on" in lines[0], lines


def test_controller_hook_spools_and_starts_one_detached_flush(tmp_path: Path) -> None:
    config = tmp_path / "slurm.yaml"
    config.write_text(f"spool_dir: {tmp_path}/spool\napi_url: http://127.0.0.1:9\n"
                      "tenant_map: {proj: team-a}\n")
    started: list[list[str]] = []
    env = {"SLURM_SCRIPT_CONTEXT": "epilog_slurmctld", "SLURM_JOB_ID": "77", "SLURM_JOB_ACCOUNT": "proj",
           "SLURM_JOB_NAME": "train", "SLURM_JOB_USER": "bob", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_JOB_EXIT_CODE2": "0:0"}
    Hook(load_config(config), config, env, clock=lambda: 1_800_000_000.0,
         spawn=lambda argv: started.append(list(argv))).run()
    [record_path] = (tmp_path / "spool").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["job_id"] == "77" and record["state"] == "ended"
    assert record["body"]["tenant"] == "team-a" and record["body"]["nodes"] == ["n1", "n2"]
    assert record["resolve"]["final"] is True and record["resolve"]["exit_code"] == 0
    assert len(started) == 1
    assert started[0][-6:] == ["--config", str(config), "--wait", "300.0", "--delay", "1.0"]


def test_node_hook_keeps_the_array_alias_after_the_job_and_prunes_old_ones(tmp_path: Path) -> None:
    config = tmp_path / "slurm.yaml"
    config.write_text(f"job_map_dir: {tmp_path}/%n/jobs\n")
    old = tmp_path / "n1" / "jobs" / "aliases" / "1_0"
    old.parent.mkdir(parents=True)
    old.write_text("5\n")
    os.utime(old, (1_000_000, 1_000_000))
    env = {"SLURM_JOB_ID": "12", "SLURMD_NODENAME": "n1", "SLURM_ARRAY_JOB_ID": "10",
           "SLURM_ARRAY_TASK_ID": "2"}
    for context in ("prolog_slurmd", "epilog_slurmd"):
        Hook(load_config(config), config, {**env, "SLURM_SCRIPT_CONTEXT": context}, clock=time.time).run()
    assert (tmp_path / "n1" / "jobs" / "aliases" / "10_2").read_text() == "12\n"
    assert not old.exists()
