"""A demo rank never outlives `jobsight up`: killed without its stop code running (SIGKILL), the
driver leaves ranks reparented, and each leaves on its own within a step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from launch.demo import DemoPaths, Rank
from tests.support import REPO_ROOT, wait_until

# The driver (`jobsight up`): starts one rank as the demo does, waits until it steps, then dies by
# SIGKILL, so none of its stop code runs.
DRIVER = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from launch.demo import DemoPaths, Rank, rank_command
import subprocess
paths = DemoPaths(Path(sys.argv[1]))
rank = Rank(job_id="demo-ok", rank=1, node="node1", gpu=0)
paths.rank_log(rank).parent.mkdir(parents=True, exist_ok=True)
proc = subprocess.Popen(rank_command(rank, 2, paths, faulty=False, step_seconds=0.2),
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(proc.pid, flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    log = paths.rank_log(rank)
    if log.exists() and "step 1 " in log.read_text():
        break
    time.sleep(0.1)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_rank_whose_driver_is_gone_leaves(tmp_path: Path) -> None:
    env = {**os.environ, "JOBSIGHT_JOB_ID": "demo-ok", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    driver = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), str(REPO_ROOT)], env=env,
                            capture_output=True, text=True, timeout=90, check=False)
    assert driver.returncode == -9, driver.stderr  # it died without stopping anything
    pid = int(driver.stdout.strip())
    rank_log = DemoPaths(tmp_path).rank_log(Rank(job_id="demo-ok", rank=1, node="node1", gpu=0))
    assert "step 1 " in rank_log.read_text()  # it was stepping when its driver died
    try:
        wait_until(lambda: not _alive(pid), timeout=30, message="the orphaned rank to leave")
    finally:
        if _alive(pid):
            os.kill(pid, 9)
