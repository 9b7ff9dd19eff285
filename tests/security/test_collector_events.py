"""Issue 9, finding 2: a user forges hardware faults. An ``NVRM: Xid ... 79`` line in a user's file
(named like another tenant's Slurm output), in a job's own log, or printed by a container (docker
json-file) never becomes a hardware event; only the kernel's log does. Application events from the
same files still work, and path patterns only give a job id to the directory they name."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobsight.trust import HARDWARE_KINDS
from tests.collectors.logs.harness import CollectorProcess
from tests.support import NOBODY_UID, Proc, as_nobody, jobsight_command, wait_until, world_dir

pytestmark = pytest.mark.security

XID = "NVRM: Xid (PCI:0000:cb:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 3 has"



def test_forged_xid_lines_make_no_hardware_event(base: Path, tmp_path: Path,
                                                 spawn: Callable[..., Proc]) -> None:
    home = world_dir(base, "home")
    spool = world_dir(base, "spool")  # slurmd's spool directory: root only
    jobs = world_dir(base, "jobs", mode=0o1777)
    docker = world_dir(base, "containers")
    world_dir(home, "eve", owner=NOBODY_UID)  # eve's home directory
    as_nobody("mkdir", str(jobs / "eve"))
    # The attacker: a file named like job 4711's output, and their own job's log, both with an XID.
    as_nobody("sh", "-c", f"printf '%s\\n%s\\n' \"{XID}\" \"{OOM}\" > {home}/eve/slurm-4711.out")
    as_nobody("sh", "-c", f"printf '%s\\nRuntimeError: CUDA error: out of memory\\n' \"{XID}\" "
                          f"> {jobs}/eve/train.log")
    # The victim's real output, in the scheduler's directory.
    world_dir(spool, "job04711")
    (spool / "job04711" / "slurm-4711.out").write_text("victim step 1\n")
    # A container printing an XID: the file is dockerd's, its text the container's.
    container = world_dir(docker, "abc123")
    (container / "abc123-json.log").write_text(json.dumps(
        {"log": XID + "\n", "stream": "stdout", "time": "2026-11-29T05:00:00.000000001Z"}) + "\n")
    # The kernel's own log (a file in /dev/kmsg's format): the one source believed about hardware.
    kmsg = base / "kmsg"
    kmsg.write_text("3,1001,5000000,-;NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, "
                    "GPU has fallen off the bus.\n")
    sources: list[dict[str, Any]] = [
        {"type": "file", "name": "slurm", "paths": [f"{home}/*/slurm-*.out", f"{spool}/job*/slurm-*.out"],
         "job_id_pattern": re.escape(str(spool)) + r"/job[^/]+/slurm-(?P<job_id>\d+(?:_\d+)?)\.out"},
        {"type": "file", "name": "jobs", "paths": [f"{jobs}/*/*.log"],
         "job_id_pattern": f"{jobs}/(?P<job_id>[^/]+)/"},
        {"type": "docker", "name": "docker", "paths": [f"{docker}/*/*-json.log"]},
        {"type": "kmsg", "name": "kmsg", "path": str(kmsg), "boot_id_path": str(base / "boot_id")},
    ]
    collector = CollectorProcess(spawn, tmp_path, sources)
    collector.wait_ready()

    wait_until(lambda: len(collector.records()) >= 7, timeout=30, message="every line stored")
    records = collector.records()
    hardware = [r for r in records if r.event_kind in HARDWARE_KINDS]
    assert [(r.source, r.job_id, r.event_kind) for r in hardware] == [("kmsg", None, "gpu_xid")], hardware
    by_path = {(r.path, r.message): r for r in records}
    forged = by_path[(f"{home}/eve/slurm-4711.out", XID)]
    assert forged.job_id is None and forged.event_kind is None  # not job 4711, not an event
    assert [r.message for r in collector.records("4711")] == ["victim step 1"]
    # Application events still come from the user's files.
    oom = by_path[(f"{home}/eve/slurm-4711.out", OOM)]
    assert oom.event_kind == "cuda_oom" and oom.job_id is None
    own = [r for r in collector.records("eve") if r.event_kind is not None]
    assert [r.event_kind for r in own] == ["cuda_oom"]
    docker_xid = next(r for r in records if r.source == "docker")
    assert docker_xid.message == XID and docker_xid.event_kind is None
    wait_until(lambda: collector.sample("jobsight_log_refused_events_total", source_type="file",
                                        kind="gpu_xid") == 2.0, timeout=10, message="refusals counted")
    assert collector.sample("jobsight_log_refused_events_total", source_type="docker", kind="gpu_xid") == 1.0
    assert collector.sample("jobsight_log_events_total", kind="gpu_xid", job_id="4711") is None


def test_an_unanchored_path_pattern_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(
        "sources:\n"
        "  - type: file\n"
        f"    paths: ['{tmp_path}/*/slurm-*.out']\n"
        "    job_id_pattern: 'slurm-(?P<job_id>\\d+)\\.out$'\n"
        f"store: {{path: {tmp_path / 'store'}}}\n")
    result = subprocess.run(jobsight_command("collector", "logs", "--config", str(config)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "job_id_pattern" in result.stderr and "must start with '/'" in result.stderr
