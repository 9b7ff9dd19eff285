"""Per-job accounting on the fixture procfs/sysfs, changed between scrapes like a real host."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exporters.node import _files, processes
from exporters.node.cgroups import find_job_cgroups, read_cgroup
from exporters.node.jobs import JobsCollector
from exporters.node.processes import parse_io, parse_stat, parse_vmrss
from tests.exporters.node.helpers import SYSFS, copy_fixtures, samples, scrape

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _jobs(found: Samples, name: str) -> dict[str, float]:
    return {dict(labels)["job_id"]: value for (n, labels), value in found.items() if n == name}


def _set_utime(stat: Path, utime: int) -> None:
    fields = stat.read_text().split(") ")
    rest = fields[1].split()
    rest[11] = str(utime)  # field 14
    stat.write_text(fields[0] + ") " + " ".join(rest) + "\n")


def test_by_default_only_scheduler_cgroups_make_jobs(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    found = samples(scrape({"jobs": JobsCollector(str(procfs), str(sysfs))}))
    # 4711 and 4712 are named only in processes' environments (user.slice sessions), which any
    # user can set: not believed. 4800 is the Slurm cgroup v2 job directory (3 PIDs in its
    # cgroup.procs, two of them alive).
    assert _jobs(found, "jobsight_job_processes") == {"4800": 3}
    assert _jobs(found, "jobsight_job_cpu_seconds_total") == {"4800": 73.5}  # the cgroup's usage_usec
    # 4301 is a zombie: no VmRSS
    assert _jobs(found, "jobsight_job_memory_rss_bytes") == {"4800": 65536 * 1024}


def test_processes_are_grouped_by_environment_and_cgroup_when_trusted(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    found = samples(scrape({"jobs": JobsCollector(str(procfs), str(sysfs), trust_environment=True)}))
    processes = _jobs(found, "jobsight_job_processes")
    # 4711: two processes with JOBSIGHT_JOB_ID (winning over SLURM_JOB_ID=999 on one of them);
    # 4712: SLURM_JOB_ID; 4800: the Slurm cgroup v2 job directory (3 PIDs in its cgroup.procs).
    assert processes == {"4711": 2, "4712": 1, "4800": 3}
    cpu = _jobs(found, "jobsight_job_cpu_seconds_total")
    assert cpu["4711"] == (12345 + 678 + 500 + 50) / 100
    assert cpu["4800"] == 73.5  # cgroup usage_usec wins over the process sum
    rss = _jobs(found, "jobsight_job_memory_rss_bytes")
    assert rss["4711"] == (2048000 + 1024) * 1024
    assert _jobs(found, "jobsight_job_memory_cgroup_bytes") == {"4800": 4294967296}
    reads = _jobs(found, "jobsight_job_io_read_bytes_total")
    # 4712's process has no readable /proc/<pid>/io: its I/O is unknown, so left out, not 0.
    assert reads == {"4711": 1000000 + 4096, "4800": 1048576 + 2097152}
    # A job id that fails validation (quotes, braces) never becomes a label.
    assert all('"' not in job and "{" not in job for job in processes)


def test_counters_keep_what_exited_processes_used(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    collector = JobsCollector(str(procfs), str(sysfs), trust_environment=True)
    before = samples(scrape({"jobs": collector}))
    shutil.rmtree(procfs / "4243")  # one of job 4711's processes exits
    after = samples(scrape({"jobs": collector}))
    assert _jobs(after, "jobsight_job_processes")["4711"] == 1
    assert _jobs(after, "jobsight_job_cpu_seconds_total")["4711"] == _jobs(
        before, "jobsight_job_cpu_seconds_total")["4711"]
    assert _jobs(after, "jobsight_job_io_read_bytes_total")["4711"] == 1000000 + 4096
    # RSS is a gauge of what is resident now: the exited process's share is gone.
    assert _jobs(after, "jobsight_job_memory_rss_bytes")["4711"] == 2048000 * 1024

    _set_utime(procfs / "4242" / "stat", 22345)  # the survivor keeps burning: +100 s
    later = samples(scrape({"jobs": collector}))
    assert _jobs(later, "jobsight_job_cpu_seconds_total")["4711"] == (22345 + 678 + 500 + 50) / 100


def test_a_reused_pid_is_a_new_process(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    collector = JobsCollector(str(procfs), str(sysfs), trust_environment=True)
    scrape({"jobs": collector})
    # PID 4243 exits and the PID is reused by a new process of the same job, with a new start
    # time and only 1 s of CPU so far: the old process's 5.5 s stay counted.
    stat = procfs / "4243" / "stat"
    stat.write_text(stat.read_text().replace(" 100050 ", " 200000 ").replace(" 500 50 ", " 100 0 "))
    found = samples(scrape({"jobs": collector}))
    assert _jobs(found, "jobsight_job_cpu_seconds_total")["4711"] == (12345 + 678) / 100 + 5.5 + 1.0


def test_a_job_without_processes_ends(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    collector = JobsCollector(str(procfs), str(sysfs), trust_environment=True)
    scrape({"jobs": collector})
    shutil.rmtree(procfs / "4242")
    shutil.rmtree(procfs / "4243")
    found = samples(scrape({"jobs": collector}))
    assert "4711" not in _jobs(found, "jobsight_job_processes")
    assert "4711" not in _jobs(found, "jobsight_job_cpu_seconds_total")
    # A new process of the same job later starts the counters afresh, without stale retirements.
    shutil.copytree(SYSFS.parent / "proc" / "4243", procfs / "4243")
    again = samples(scrape({"jobs": collector}))
    assert _jobs(again, "jobsight_job_cpu_seconds_total")["4711"] == 5.5


def test_cgroup_discovery_and_missing_controllers(tmp_path: Path) -> None:
    found = find_job_cgroups(str(SYSFS / "fs" / "cgroup"))
    assert set(found) == {"4800"}
    scope = tmp_path / "system.slice" / "slurmstepd.scope"
    job_dir = scope / "job_77"
    job_dir.mkdir(parents=True)
    (scope / "job_bad{id}").mkdir()
    (tmp_path / "system.slice" / "a" / "b" / "c" / "d" / "job_deep").mkdir(parents=True)
    # A cgroup v1 controller hierarchy, and a Kubernetes pod (systemd driver).
    (tmp_path / "memory" / "slurm" / "uid_1000" / "job_88" / "step_0").mkdir(parents=True)
    pod = "kubepods-burstable-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0.slice"
    (tmp_path / "kubepods.slice" / "kubepods-burstable.slice" / pod / "cri-containerd-1.scope").mkdir(
        parents=True)
    # What a user can make in the subtree systemd delegates to them: names only, not scheduler
    # cgroups.
    delegated = tmp_path / "user.slice" / "user-1000.slice" / "user@1000.service"
    (delegated / "job_66").mkdir(parents=True)
    (delegated / "system.slice" / "slurmstepd.scope" / "job_55").mkdir(parents=True)
    found = find_job_cgroups(str(tmp_path))
    # invalid ids, too-deep and user-made directories are skipped
    assert found == {"77": str(job_dir), "88": str(tmp_path / "memory" / "slurm" / "uid_1000" / "job_88"),
                     "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0": str(
                         tmp_path / "kubepods.slice" / "kubepods-burstable.slice" / pod)}
    usage = read_cgroup("77", str(job_dir))
    # No controller files: unknown, not zero.
    assert (usage.cpu_seconds, usage.memory_bytes, usage.read_bytes, usage.processes) == (None, None, None, 0)


def test_garbage_cgroup_files_leave_only_their_values_unknown(tmp_path: Path) -> None:
    job_dir = tmp_path / "job_9"
    job_dir.mkdir()
    (job_dir / "cpu.stat").write_text("usage_usec lots\n")
    (job_dir / "memory.current").write_text("max\n")
    (job_dir / "io.stat").write_text("8:0 rbytes=12 wbytes=x\n")
    (job_dir / "cgroup.procs").write_text("12\n13\n")
    usage = read_cgroup("9", str(job_dir))
    assert usage.cpu_seconds is None and usage.memory_bytes is None
    assert usage.read_bytes is None and usage.write_bytes is None
    assert usage.processes == 2
    (job_dir / "io.stat").write_text("")  # no I/O yet: zero, known
    assert read_cgroup("9", str(job_dir)).read_bytes == 0.0


def test_process_file_parsers() -> None:
    # Fields 5-13 are zeros here; utime (14) 300 and stime (15) 200 ticks; start time (22) 555.
    line = b"12 (a) b) c) R 1 " + b" ".join(b"0" for _ in range(9)) + b" 300 200 0 0 20 0 1 0 555 9"
    assert parse_stat(line) == (555, 5.0)
    assert parse_stat(b"12 (short) R 1") is None
    assert parse_vmrss(b"Name:\tx\nVmRSS:\t  10 kB\n") == 10240
    assert parse_vmrss(b"Name:\tx\nState:\tZ\n") is None
    assert parse_io(b"read_bytes: 5\nwrite_bytes: 6\n") == (5.0, 6.0)
    assert parse_io(b"rchar: 5\n") is None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pids_without_a_job_are_rechecked_on_a_schedule_and_new_pids_at_once(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    clock = _Clock()
    collector = JobsCollector(str(procfs), str(sysfs), clock=clock, recheck_after=10.0,
                              trust_environment=True)
    scrape({"jobs": collector})
    # A brand-new PID of a job is seen in the next scrape.
    shutil.copytree(procfs / "4245", procfs / "4246")
    assert _jobs(samples(scrape({"jobs": collector})), "jobsight_job_processes")["4712"] == 2
    # PID 4400 (no job) is reused by a process of job 5000: noticed once its recheck is due.
    (procfs / "4400" / "environ").write_bytes(b"JOBSIGHT_JOB_ID=5000\0")
    stat = procfs / "4400" / "stat"
    stat.write_text(stat.read_text().replace(" 50000 ", " 300000 "))
    clock.now += 5
    assert "5000" not in _jobs(samples(scrape({"jobs": collector})), "jobsight_job_processes")
    clock.now += 6
    assert _jobs(samples(scrape({"jobs": collector})), "jobsight_job_processes")["5000"] == 1


def test_job_cgroups_are_found_within_the_ttl_and_dropped_at_once(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    clock = _Clock()
    collector = JobsCollector(str(procfs), str(sysfs), clock=clock, recheck_after=10.0)
    assert "4800" in _jobs(samples(scrape({"jobs": collector})), "jobsight_job_memory_cgroup_bytes")
    scope = sysfs / "fs" / "cgroup" / "system.slice" / "slurmstepd.scope"
    (scope / "job_4900").mkdir()
    (scope / "job_4900" / "memory.current").write_text("4096\n")
    assert "4900" not in _jobs(samples(scrape({"jobs": collector})), "jobsight_job_memory_cgroup_bytes")
    clock.now += 10
    assert _jobs(samples(scrape({"jobs": collector})), "jobsight_job_memory_cgroup_bytes")["4900"] == 4096
    shutil.rmtree(scope / "job_4800")
    assert "4800" not in _jobs(samples(scrape({"jobs": collector})), "jobsight_job_memory_cgroup_bytes")


def test_overlapping_scrapes_are_serialised(tmp_path: Path) -> None:
    """Two Prometheus servers (an HA pair) may scrape at once; the accounting state must pass
    from one scrape to the next in one order, or an exited process would be retired twice."""
    import threading

    procfs, sysfs = copy_fixtures(tmp_path)
    collector = JobsCollector(str(procfs), str(sysfs), trust_environment=True)
    scrape({"jobs": collector})
    shutil.rmtree(procfs / "4243")
    results: list[float] = []

    def worker() -> None:
        found = samples(scrape({"jobs": collector}))
        results.append(_jobs(found, "jobsight_job_cpu_seconds_total")["4711"])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    with collector._lock:  # a scrape in progress
        for thread in threads:
            thread.start()
        # A scrape takes about a millisecond: unserialised, these would be done long before this.
        for thread in threads:
            thread.join(0.2)
        assert all(thread.is_alive() for thread in threads)
    for thread in threads:
        thread.join(30)
    # Retired once: every scrape sees the same total, the fixture's sum for job 4711.
    assert results == [(12345 + 678 + 500 + 50) / 100] * 4


def test_a_young_process_that_gets_its_job_at_exec_is_attributed(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    clock = _Clock()
    collector = JobsCollector(str(procfs), str(sysfs), clock=clock, trust_environment=True)
    # PID 4400 started at 500 s (50000 ticks) after boot; it is now 520 s after boot.
    (procfs / "uptime").write_text("520.00 1000.00\n")
    assert "6000" not in _jobs(samples(scrape({"jobs": collector})), "jobsight_job_processes")
    # It execs with JOBSIGHT_JOB_ID in its new environment: same PID, same start time.
    (procfs / "4400" / "environ").write_bytes(b"JOBSIGHT_JOB_ID=6000\0")
    assert _jobs(samples(scrape({"jobs": collector})), "jobsight_job_processes")["6000"] == 1


def test_an_old_process_without_a_job_is_not_asked_again(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    clock = _Clock()
    collector = JobsCollector(str(procfs), str(sysfs), clock=clock, trust_environment=True)
    (procfs / "uptime").write_text("5000.00 1000.00\n")  # PID 4400 is 4500 s old
    scrape({"jobs": collector})
    (procfs / "4400" / "environ").write_bytes(b"JOBSIGHT_JOB_ID=6000\0")
    clock.now += 60
    # Same start time, past the young window: its answer stays (an environment does not change
    # without an exec, and exec happens right after fork).
    assert "6000" not in _jobs(samples(scrape({"jobs": collector})), "jobsight_job_processes")


def test_by_default_only_the_processes_of_job_cgroups_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost follows job processes: with job cgroups mounted and the environment not trusted,
    no other PID's files are opened, however many there are."""
    procfs, sysfs = copy_fixtures(tmp_path)
    for pid in range(10000, 10200):  # a crowd of unrelated processes
        shutil.copytree(procfs / "4400", procfs / str(pid))
    opened: list[str] = []
    real = _files.read_bytes

    def spy(path: str, limit: int = 16 * 1024 * 1024) -> bytes:
        opened.append(path)
        return real(path, limit)

    monkeypatch.setattr(processes, "read_bytes", spy)
    collector = JobsCollector(str(procfs), str(sysfs))
    for _ in range(2):
        found = samples(scrape({"jobs": collector}))
        assert _jobs(found, "jobsight_job_processes") == {"4800": 3}
    read_pids = {Path(path).parent.name for path in opened}
    assert read_pids == {"4300", "4301", "4302"}  # 4302 is listed in cgroup.procs but has exited
    # Job 4800's cgroup counts its CPU and I/O: of its processes only the resident memory is read.
    assert {Path(path).name for path in opened} == {"statm"}

    opened.clear()
    trusting = JobsCollector(str(procfs), str(sysfs), trust_environment=True)
    scrape({"jobs": trusting})
    assert "10000" in {Path(path).parent.name for path in opened}  # the opt-in walks every PID


def test_kernel_threads_are_skipped_without_asking_for_their_job(tmp_path: Path) -> None:
    procfs, sysfs = copy_fixtures(tmp_path)
    stat = procfs / "4400" / "stat"
    head, _, rest = stat.read_text().partition(") ")
    fields = rest.split()
    fields[6] = str(int(fields[6]) | 0x00200000)  # field 9, flags: PF_KTHREAD
    stat.write_text(f"{head}) {' '.join(fields)}\n")
    (procfs / "4400" / "environ").write_bytes(b"JOBSIGHT_JOB_ID=6000\0")
    found = samples(scrape({"jobs": JobsCollector(str(procfs), str(sysfs), trust_environment=True)}))
    assert "6000" not in _jobs(found, "jobsight_job_processes")
    assert _jobs(found, "jobsight_job_processes")["4711"] == 2  # user processes still resolved
