"""Issue 9, finding 3: one user stalls the collector for every job on the node by swapping a watched
file with a FIFO between the check and the open. The open never blocks now, the other jobs' logs
keep flowing, and when the read loop does stop making progress /healthz says so (503) and
``jobsight_scrape_collector_success{collector="logs_loop"}`` drops to 0 for the collector alert."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.collectors.logs.harness import CollectorProcess
from tests.support import Proc, as_nobody, nobody_python, wait_until, world_dir

pytestmark = pytest.mark.security

# Swaps x.log between a FIFO and a regular file as fast as it can, for `seconds`.
SWAPPER = """
import os, sys, time
d, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    n += 1
    try:
        os.mkfifo(d + "/f.tmp")
    except FileExistsError:
        pass
    os.rename(d + "/f.tmp", d + "/x.log")
    with open(d + "/r.tmp", "w") as fh:
        fh.write("eve %d\\n" % n)
    os.rename(d + "/r.tmp", d + "/x.log")
"""



def file_source(jobs: Path) -> dict[str, Any]:
    return {"type": "file", "paths": [f"{jobs}/*/*.log"], "job_id_pattern": f"{jobs}/(?P<job_id>[^/]+)/",
            "rotate_wait": 0.0, "multiline": {"enabled": False}}


def test_fifo_swap_does_not_stall_the_collector(base: Path, tmp_path: Path,
                                                spawn: Callable[..., Proc]) -> None:
    jobs = world_dir(base, "jobs", mode=0o1777)
    victim = world_dir(jobs, "victim")
    as_nobody("mkdir", str(jobs / "eve"))
    collector = CollectorProcess(spawn, tmp_path, [file_source(jobs)], glob_interval=0.01, poll_interval=0.01,
                                 stall_after=3.0)
    collector.wait_ready()
    attacker = nobody_python(SWAPPER.replace("sys.argv[1], float(sys.argv[2])",
                                             f"{str(jobs / 'eve')!r}, 5.0"))
    try:
        for i in range(10):  # the victim writes while the attack runs
            with open(victim / "train.log", "a") as fh:
                fh.write(f"victim during {i}\n")
            time.sleep(0.3)
        assert attacker.wait(timeout=30) == 0, attacker.stderr.read() if attacker.stderr else ""
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    (victim / "after.log").write_text("victim after the attack\n")
    wait_until(lambda: "victim after the attack" in collector.messages(), timeout=20,
               message="a new file shipped after the attack")
    stored = collector.messages()
    assert all(f"victim during {i}" in stored for i in range(10))
    assert any(m.startswith("eve ") for m in stored)  # the attacker's regular files were read too
    assert collector.healthz().status_code == 200
    assert collector.sample("jobsight_log_stalled") == 0.0


def test_healthz_and_metrics_report_a_stalled_read_loop(base: Path, tmp_path: Path,
                                                        spawn: Callable[..., Proc]) -> None:
    """Another process holds the store's write lock: the loop waits inside one write (SQLite's busy
    timeout), making no progress. /healthz turns 503 with the reason, the gauge and the probe
    collector say so, and all recovers once the lock is gone, with each line stored once."""
    jobs = world_dir(base, "jobs")
    job = world_dir(jobs, "4711")
    collector = CollectorProcess(spawn, tmp_path, [file_source(jobs)], stall_after=1.0)
    collector.wait_ready()
    (job / "train.log").write_text("before\n")
    wait_until(lambda: collector.messages() == ["before"], timeout=20, message="the first line")
    assert collector.healthz().status_code == 200

    lock = sqlite3.connect(collector.store / "logs.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with open(job / "train.log", "a") as fh:
            fh.write("while locked\n")

        def stalled() -> bool:
            reply = collector.healthz()
            return reply.status_code == 503 and "stalled" in reply.text

        wait_until(stalled, timeout=8, interval=0.1, message="/healthz to report the stall")
        assert collector.sample("jobsight_log_stalled") == 1.0
        assert collector.sample("jobsight_scrape_collector_success", collector="logs_loop") == 0.0
        assert collector.sample("jobsight_scrape_collector_success", collector="logs") == 1.0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_until(lambda: collector.healthz().status_code == 200, timeout=20, message="/healthz to recover")
    wait_until(lambda: collector.messages() == ["before", "while locked"], timeout=20,
               message="the line written while locked, once")
    assert collector.sample("jobsight_log_stalled") == 0.0
