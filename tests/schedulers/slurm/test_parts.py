"""The hook's parts on their own: host lists, gres.conf and the driver's GPU listing, Slurm's
environment, the config, the spool's order and once-only delivery, and the final-state rules."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobsight.errors import ConfigError, InvalidInput
from schedulers.slurm import gres, hostlist
from schedulers.slurm.config import load_config
from schedulers.slurm.environment import from_environ
from schedulers.slurm.flush import _deliver_until, flush, gpus_from_detail
from schedulers.slurm.hook import Hook, run_hook
from schedulers.slurm.jobmap import JobMapWriter
from schedulers.slurm.spool import JobNotReady, PermanentRejection, Spool, TransientFailure
from schedulers.slurm.state import final_from_fields, inferred, parse_show_job
from schedulers.slurm.wrapper import wrapper_script


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


def test_a_json_config_is_the_same_config_read_without_yaml(tmp_path: Path) -> None:
    settings = {"api_url": "http://api:8000", "tenant_map": {"proj1": "team-a"}, "job_map_dir": "/run/j/%n",
                "timeout_seconds": 2}
    as_yaml, as_json = tmp_path / "slurm.yaml", tmp_path / "slurm.json"
    as_yaml.write_text(yaml.safe_dump(settings))
    as_json.write_text(json.dumps(settings, indent=2))
    assert load_config(as_json) == load_config(as_yaml)
    # Checked the same way, and a flow mapping that is YAML but not JSON still reads as YAML.
    as_json.write_text(json.dumps({**settings, "timeout_seconds": 0}))
    with pytest.raises(ConfigError, match="timeout_seconds"):
        load_config(as_json)
    as_json.write_text("{api_url: 'http://api:8000', tenant: team-a}\n")
    assert load_config(as_json).tenant == "team-a"
    # And the hook does not import PyYAML for it (8 ms of every job's start).
    as_json.write_text(json.dumps(settings))
    probe = ("import sys; from schedulers.slurm.config import load_config; "
             f"load_config(__import__('pathlib').Path({str(as_json)!r})); print('yaml' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "False"


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
        assert run_hook(env, stderr=err, spawn=lambda argv, lock: None) == 0
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
    spool = Spool(tmp_path / "spool")

    def spawn(argv: Sequence[str], lock: int) -> None:
        # The delivery lock is claimed before the process starts, and handed to it.
        assert spool.is_delivery_lock(lock) and spool.claim_delivery() is None
        started.append(list(argv))

    Hook(load_config(config), config, env, clock=lambda: 1_800_000_000.0, spawn=spawn).run()
    [record_path] = (tmp_path / "spool").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["job_id"] == "77" and record["state"] == "ended"
    assert record["body"]["tenant"] == "team-a" and record["body"]["nodes"] == ["n1", "n2"]
    assert record["resolve"]["final"] is True and record["resolve"]["exit_code"] == 0
    assert len(started) == 1
    assert started[0][:4] == [sys.executable, "-I", "-S", "-c"]
    assert started[0][5:-1] == ["flush", "--config", str(config), "--wait", "300.0", "--delay", "1.0",
                                "--lock-fd"]
    claimed = spool.claim_delivery()  # the hook let go of its copy: the lock is free again here
    assert claimed is not None
    os.close(claimed)


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


def test_the_wrapper_runs_the_hook_isolated_from_its_environment(tmp_path: Path) -> None:
    """`jobsight slurm wrapper`'s script: Python without site and isolated (-I -S), the
    installation's import paths written in; a PYTHONPATH or working directory holding a
    `schedulers` package of someone else's is never imported."""
    config = tmp_path / "slurm.yaml"
    config.write_text(f"job_map_dir: {tmp_path}/jobs\n")
    script = tmp_path / "jobsight-slurm-hook"
    script.write_text(wrapper_script(config=config))
    script.chmod(0o755)
    planted = tmp_path / "planted"
    (planted / "schedulers").mkdir(parents=True)
    (planted / "schedulers" / "__init__.py").write_text("raise SystemExit('planted package imported')\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(planted),
           "SLURM_SCRIPT_CONTEXT": "prolog_slurmd", "SLURM_JOB_ID": "4711", "SLURM_JOB_GPUS": "0,1",
           "SLURMD_NODENAME": "node1"}
    done = subprocess.run([str(script)], cwd=planted, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir() if not p.name.startswith(".")) == ["0", "1"]
    assert (tmp_path / "jobs" / "0").read_text() == "4711\n"
    assert " -I -S -c " in script.read_text()
    # A broken config is still one line and exit 0 through the script.
    config.write_text("timeout_seconds: forever\n")
    done = subprocess.run([str(script)], cwd=planted, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.count("\n") == 1 and "timeout_seconds" in done.stderr


def test_one_delivery_process_per_spool(tmp_path: Path) -> None:
    """A waiting flush holds the spool's `.flusher` lock: the controller hooks of later jobs spool
    and start no process of their own, and another flush hands over at once."""
    config = tmp_path / "slurm.yaml"
    config.write_text(f"spool_dir: {tmp_path}/spool\napi_url: http://127.0.0.1:9\n")
    started: list[list[str]] = []
    env = {"SLURM_SCRIPT_CONTEXT": "prolog_slurmctld", "SLURM_JOB_NODELIST": "n1"}
    spool = Spool(tmp_path / "spool")
    with spool.sole_deliverer() as sole:  # this test is the running delivery
        assert sole
        for job in ("1", "2"):
            Hook(load_config(config), config, {**env, "SLURM_JOB_ID": job},
                 spawn=lambda argv, lock: started.append(list(argv))).run()
        assert started == [] and len(spool.pending()) == 2
        report = flush(load_config(config), wait_seconds=30)
        assert report.handed_over and report.delivered == 0 and report.pending == 2
        # A --lock-fd that is not the spool's lock (stdin here) is not taken for it, nor closed.
        report = flush(load_config(config), wait_seconds=30, lock_fd=0)
        assert report.handed_over
        os.fstat(0)
    Hook(load_config(config), config, {**env, "SLURM_JOB_ID": "3"},
         spawn=lambda argv, lock: started.append(list(argv))).run()
    assert len(started) == 1  # nobody delivers now: this hook starts the delivery


def test_a_waiting_delivery_takes_a_new_record_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", clock=_clock())
    spool.put("1", "ended", {"status": "failed"})
    sent: list[str] = []
    completing = [True]

    def deliver(record: dict[str, Any]) -> None:
        if record["job_id"] == "1" and completing[0]:
            raise JobNotReady("job 1 is still COMPLETING")
        sent.append(record["job_id"])

    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            spool.put("2", "running", {"status": "running"})  # a later job's hook, meanwhile
        if len(slept) == 3:
            completing[0] = False

    report = _deliver_until(spool, deliver, time.monotonic() + 60, 5.0, sleep)  # type: ignore[arg-type]
    assert (report.delivered, report.pending) == (1, 0) and sent == ["2", "1"]
    assert slept[0] == 0.2 and sum(slept) < 2  # woke for job 2's record, not after a full back-off
