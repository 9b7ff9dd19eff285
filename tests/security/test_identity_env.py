"""Issue 9, finding 6: any process claims any job by its environment.

A user starts an unrelated process with ``JOBSIGHT_JOB_ID=4711`` (or ``SLURM_JOB_ID``): by default
the node exporter must not publish series for job 4711 from it; only with the documented opt-in
(``--collector.jobs.trust-environment``) and only for a process in no scheduler cgroup does the
environment count. A process in a Slurm job cgroup gets that cgroup's job whatever its environment
says, and a cgroup the user made in their own delegated subtree is not a scheduler cgroup.

The live tests run the real exporter on this host's /proc and /sys with the attacker's process
started as ``nobody``; the cgroup cases use fixture trees (no test may create Slurm cgroups on the
host).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from exporters.node.jobs import JobsCollector
from tests.exporters.node.helpers import copy_fixtures, samples, scrape
from tests.support import AS_NOBODY, REPO_ROOT, Proc, free_port, jobsight_command, wait_for_http, wait_until

pytestmark = pytest.mark.security

OTHER_COLLECTORS = ("cpu", "diskstats", "filesystem", "loadavg", "meminfo", "netdev", "pressure", "stat",
                    "uname", "vmstat")
VICTIM = "4711"


def _processes(text: str, job_id: str) -> float | None:
    return samples(text).get(("jobsight_job_processes", (("job_id", job_id),)))


def _exporter(spawn: Callable[..., Proc], *flags: str) -> str:
    port = free_port()
    proc = spawn(
        jobsight_command("exporter", "node", f"--web.listen-address=127.0.0.1:{port}",
                         *(f"--no-collector.{name}" for name in OTHER_COLLECTORS), *flags),
        name="node-exporter", cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for_http(url, proc=proc)
    return url


def test_a_users_environment_does_not_make_a_job_by_default(spawn: Callable[..., Proc]) -> None:
    if not Path("/sys/fs/cgroup").is_dir():
        pytest.skip("no cgroup hierarchy on this host")
    default = _exporter(spawn)
    trusting = _exporter(spawn, "--collector.jobs.trust-environment")
    attacker = spawn([*AS_NOBODY, "env", f"JOBSIGHT_JOB_ID={VICTIM}", f"SLURM_JOB_ID={VICTIM}",
                      "sleep", "600"], name="attacker")

    # The opt-in exporter sees the attacker's process as job 4711: the process is up, and its
    # environment is what a trusting exporter would believe...
    wait_until(lambda: _processes(httpx.get(trusting, timeout=5).text, VICTIM) == 1, timeout=30,
               message="the trusting exporter to see the process that names job 4711")
    assert attacker.alive()
    # ...while the default exporter, scraped after that, publishes nothing for job 4711, and its
    # job collector still works.
    text = httpx.get(default, timeout=5).text
    assert 'node_scrape_collector_success{collector="jobs"} 1.0' in text
    assert f'job_id="{VICTIM}"' not in text


def test_a_scheduler_cgroup_wins_over_the_environment(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    # PID 4300 runs in Slurm job 4800's cgroup (cgroup v2, /system.slice/slurmstepd.scope/job_4800)
    # and says it is job 4711.
    (procfs / "4300" / "environ").write_bytes(f"PATH=/bin\0JOBSIGHT_JOB_ID={VICTIM}\0".encode())
    for trust in (False, True):
        found = samples(scrape({"jobs": JobsCollector(str(procfs), str(sysfs), trust_environment=trust)}))
        processes = {dict(labels)["job_id"]: value for (name, labels), value in found.items()
                     if name == "jobsight_job_processes"}
        assert processes["4800"] == 3
        # With trust, 4711 is the fixture's two user.slice processes named 4711, not PID 4300.
        assert processes.get(VICTIM) == (2 if trust else None)


def test_the_cgroup_wins_also_where_the_cgroup_fs_is_not_mounted(tmp_path: Path) -> None:
    """No /sys/fs/cgroup (a container without it): each process's /proc/<pid>/cgroup decides."""
    procfs, sysfs = copy_fixtures(tmp_path)
    shutil.rmtree(sysfs / "fs" / "cgroup")
    (procfs / "4300" / "environ").write_bytes(f"JOBSIGHT_JOB_ID={VICTIM}\0".encode())
    found = samples(scrape({"jobs": JobsCollector(str(procfs), str(sysfs), trust_environment=True)}))
    assert found[("jobsight_job_processes", (("job_id", "4800"),))] == 2  # 4300 and the zombie 4301
    assert found[("jobsight_job_processes", (("job_id", VICTIM),))] == 2  # not 3


def test_a_cgroup_a_user_made_is_not_a_job(tmp_path: Path) -> None:
    """systemd delegates /user.slice/user-U.slice/user@U.service to user U, who may create
    directories named like a scheduler's there and move their own processes in."""
    procfs, sysfs = copy_fixtures(tmp_path)
    delegated = sysfs / "fs" / "cgroup" / "user.slice" / "user-1000.slice" / "user@1000.service"
    forged_dirs = (delegated / f"job_{VICTIM}",
                   delegated / "system.slice" / "slurmstepd.scope" / f"job_{VICTIM}")
    for forged in forged_dirs:
        forged.mkdir(parents=True)
        (forged / "cgroup.procs").write_text("4400\n")
        (forged / "memory.current").write_text("1\n")
    (procfs / "4400" / "cgroup").write_text(
        f"0::/user.slice/user-1000.slice/user@1000.service/system.slice/slurmstepd.scope/job_{VICTIM}\n")
    found = samples(scrape({"jobs": JobsCollector(str(procfs), str(sysfs))}))
    assert not any(dict(labels).get("job_id") == VICTIM for _, labels in found)
    assert found[("jobsight_job_processes", (("job_id", "4800"),))] == 3  # the real job still counts
