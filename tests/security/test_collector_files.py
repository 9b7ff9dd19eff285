"""Issue 9, finding 1: a user makes the collector (root) read a file they cannot read, through a
symbolic link, a symlinked directory, a hard link or the rotated-copy search. Each attack is made
as ``nobody`` against the real collector process; the secret never reaches the store, and the
user's own log in the same directory is still shipped."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobsight.logstore import SQLiteLogStore
from tests.collectors.logs.harness import CollectorProcess
from tests.support import NOBODY_UID, Proc, as_nobody, wait_until, world_dir

pytestmark = pytest.mark.security

SECRET = "root:$6$SECRET-HASH-4711:19000:0:99999:7:::"
PRIVATE = "PRIVATE-NOTES of another user"



@pytest.fixture
def site(base: Path) -> dict[str, Path]:
    """/data/jobs-like world-writable sticky directory, a root-only secret file and directory."""
    secret = base / "secret.txt"
    secret.write_text(SECRET + "\nsecond line of the secret\n")
    secret.chmod(0o600)
    private = world_dir(base, "private", mode=0o700)
    (private / "notes.log").write_text(PRIVATE + "\n")
    (private / "notes.log").chmod(0o600)
    jobs = world_dir(base, "jobs", mode=0o1777)
    victim = world_dir(jobs, "victim")
    (victim / "train.log").write_text("victim step 1\n")
    as_nobody("mkdir", str(jobs / "eve"))
    return {"secret": secret, "private": private, "jobs": jobs, "eve": jobs / "eve"}


def file_source(jobs: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "file", "paths": [f"{jobs}/*/*.log"], "job_id_pattern": f"{jobs}/(?P<job_id>[^/]+)/",
            "rotate_wait": 0.0, "multiline": {"flush_timeout": 0.1}, **extra}


def leaked(collector: CollectorProcess) -> list[str]:
    return [m for m in collector.messages() if "SECRET" in m or "PRIVATE" in m or "second line" in m
            or m.startswith("root:") or "oot:" in m]


def test_symlinks_and_hard_links_in_a_job_directory_are_not_read(
        site: dict[str, Path], tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    eve, jobs = site["eve"], site["jobs"]
    as_nobody("sh", "-c", f"echo 'eve step 1' > {eve}/train.log")
    as_nobody("ln", "-s", str(site["secret"]), str(eve / "x.log"))  # the finding's attack
    as_nobody("ln", "-s", "/etc/shadow", str(eve / "shadow.log"))
    as_nobody("ln", "-s", str(site["private"]), str(jobs / "evil"))  # a directory: evil/notes.log
    # fs.protected_hardlinks stops `nobody` from linking a root file; a node without it would not,
    # so the link is made here as root: the link count on the opened file refuses it anyway.
    os.link(site["secret"], eve / "hard.log")
    collector = CollectorProcess(spawn, tmp_path, [file_source(jobs)])
    collector.wait_ready()

    wait_until(lambda: {"eve step 1", "victim step 1"} <= set(collector.messages()), timeout=30,
               message="the legitimate logs")
    time.sleep(0.5)  # a few more scans
    assert leaked(collector) == []
    wait_until(lambda: (collector.sample("jobsight_log_skipped_files_total", reason="symlink") or 0) >= 3
               and (collector.sample("jobsight_log_skipped_files_total", reason="hardlink") or 0) >= 1,
               timeout=30, message="the links refused and counted")
    assert [r.message for r in collector.records("eve")] == ["eve step 1"]
    assert collector.healthz().status_code == 200
    output = collector.proc.output()
    assert "is a symbolic link" in output and "hard links" in output
    # The user appends to their own file: still shipped, the links still not.
    as_nobody("sh", "-c", f"echo 'eve step 2' >> {eve}/train.log")
    wait_until(lambda: "eve step 2" in collector.messages(), timeout=30, message="eve's next line")
    assert leaked(collector) == []


def test_rotated_copy_search_does_not_follow_a_symlink(
        site: dict[str, Path], tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    """The search for the rest of a rotated file opens siblings (``app.log.1``) whose first bytes
    match the checkpoint's. A one-byte file "r" gives a one-byte fingerprint that /etc/shadow's
    "root:" matches: a symlink named like a rotated copy would then be read from the checkpoint on."""
    eve, jobs = site["eve"], site["jobs"]
    as_nobody("sh", "-c", f"printf r > {eve}/app.log; echo 'eve step 1' > {eve}/train.log")
    first = CollectorProcess(spawn, tmp_path, [file_source(jobs)], name="first")
    first.wait_ready()
    wait_until(lambda: "eve step 1" in first.messages(), timeout=30, message="eve's log")

    def checkpointed() -> bool:
        reader = SQLiteLogStore(first.store, read_only=True)
        try:
            return any(f"{eve}/app.log" in value for value in reader.checkpoints().values())
        finally:
            reader.close()

    wait_until(checkpointed, timeout=30, message="a checkpoint of app.log")
    first.proc.kill(signal.SIGTERM)
    assert first.proc.popen.wait(timeout=30) == 0, first.proc.output()

    as_nobody("rm", str(eve / "app.log"))
    as_nobody("ln", "-s", str(site["secret"]), str(eve / "app.log.1"))
    as_nobody("sh", "-c", f"echo 'eve step 2' >> {eve}/train.log")
    second = CollectorProcess(spawn, tmp_path, [file_source(jobs)], store=first.store, name="second")
    second.wait_ready()
    wait_until(lambda: "eve step 2" in second.messages(), timeout=30, message="eve's next line")
    time.sleep(1.0)  # the orphan search runs on every scan
    assert leaked(second) == []


def test_check_owner_refuses_another_users_file_in_a_job_directory(
        site: dict[str, Path], tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    """With ``check_owner: true`` only files of the job directory's owner are read: a file another
    user put into a group-writable job directory is not that job's log."""
    eve, jobs = site["eve"], site["jobs"]
    as_nobody("sh", "-c", f"echo 'eve step 1' > {eve}/train.log")
    planted = eve / "planted.log"
    planted.write_text(PRIVATE + "\n")
    os.chown(planted, NOBODY_UID - 1, NOBODY_UID - 1)
    collector = CollectorProcess(spawn, tmp_path, [file_source(jobs, check_owner=True)])
    collector.wait_ready()
    wait_until(lambda: "eve step 1" in collector.messages(), timeout=30, message="eve's log")
    wait_until(lambda: collector.sample("jobsight_log_skipped_files_total", reason="owner"), timeout=30,
               message="the planted file refused")
    assert leaked(collector) == []
