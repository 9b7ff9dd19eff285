"""Tailing real files: job ids, offsets, restarts, rotation both ways, truncation, bad input."""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.collectors.logs.harness import Harness, file_source


def write(path: Path, *lines: str, mode: str = "a") -> None:
    with open(path, mode, encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")


def lines(prefix: str, start: int, count: int) -> list[str]:
    return [f"{prefix} line {i:06d} step={i} loss=0.{i % 97:02d}" for i in range(start, start + count)]


def once(harness: Harness) -> Counter[str]:
    counts = Counter(harness.messages())
    duplicated = [m for m, n in counts.items() if n > 1]
    assert not duplicated, f"stored more than once: {duplicated[:5]}"
    return counts


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "jobs"
    (root / "4711").mkdir(parents=True)
    (root / "4712").mkdir(parents=True)
    return root


def source(jobs: Path, **extra: object) -> dict[str, object]:
    return file_source([f"{jobs}/*/*.log"], job_id_pattern=f"{jobs}/(?P<job_id>[^/]+)/", **extra)


def test_records_carry_job_host_path_offset(tmp_path: Path, jobs: Path) -> None:
    a = jobs / "4711" / "train.log"
    b = jobs / "4712" / "train.log"
    write(a, "first", "second")
    write(b, "other job")
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 3, message="3 records")
    recs = {r.message: r for r in h.records()}
    assert (recs["first"].job_id, recs["first"].offset, recs["first"].path) == ("4711", 0, str(a))
    assert (recs["second"].offset, recs["other job"].job_id) == (6, "4712")
    assert recs["first"].host == "node1" and recs["first"].record_id.startswith("node1:")
    assert h.stats.records_stored["file"] == 3
    h.close()


def test_restart_resumes_without_loss_or_duplicates(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, *lines("a", 0, 100))
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 100)
    h.restart()
    write(log, *lines("a", 100, 50))
    h.pump_until(lambda: len(h.messages()) == 150)
    h.settle()
    assert len(once(h)) == 150
    assert h.stats.duplicates.get("store", 0) == 0  # resumed at the checkpoint, nothing re-read
    h.close()


def test_partial_last_line_waits_for_its_newline(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    with open(log, "w") as fh:
        fh.write("complete\nhalf a li")
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: h.messages() == ["complete"])
    h.settle()
    assert h.messages() == ["complete"]
    h.restart()  # the checkpoint sits at the start of the half line
    with open(log, "a") as fh:
        fh.write("ne\n")
    h.pump_until(lambda: len(h.messages()) == 2)
    assert h.messages() == ["complete", "half a line"]
    h.close()


def test_rename_rotation_while_running(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, *lines("r", 0, 50))
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 50)
    write(log, *lines("r", 50, 10))  # not read yet when the file is renamed
    os.rename(log, jobs / "4711" / "train.log.1")
    write(log, *lines("r", 60, 10))
    h.pump_until(lambda: len(h.messages()) == 70, message="70 records")
    h.settle()
    assert set(once(h)) == set(lines("r", 0, 70))
    assert not h.collector.inputs[0].tracked or all(  # type: ignore[attr-defined]
        t.ckpt.path == str(log) for t in h.collector.inputs[0].tracked.values())  # type: ignore[attr-defined]
    h.close()


def test_rename_rotation_while_stopped(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, *lines("s", 0, 20))
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 20)
    h.collector.close()
    write(log, *lines("s", 20, 5))
    os.rename(log, jobs / "4711" / "train.log.2026")
    write(log, *lines("s", 25, 5))
    h.restart()
    h.pump_until(lambda: len(h.messages()) == 30, message="30 records")
    h.settle()
    assert set(once(h)) == set(lines("s", 0, 30))
    h.close()


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_copytruncate(tmp_path: Path, jobs: Path, running: bool) -> None:
    log = jobs / "4711" / "train.log"
    write(log, *lines("c", 0, 30))
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 30)
    if not running:
        h.collector.close()
    write(log, *lines("c", 30, 7))  # unread at copy time: only the copy has them afterwards
    shutil.copyfile(log, jobs / "4711" / "train.log.1")
    os.truncate(log, 0)
    write(log, *lines("c", 37, 3))
    if not running:
        h.restart()
    h.pump_until(lambda: len(h.messages()) == 40, message="40 records")
    h.settle()
    assert set(once(h)) == set(lines("c", 0, 40))
    h.close()


def test_copy_matched_by_the_glob_is_not_read_twice(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, *lines("g", 0, 30))
    h = Harness(tmp_path, [file_source([f"{jobs}/*/*.log*"], job_id_pattern=f"{jobs}/(?P<job_id>[^/]+)/")])
    h.pump_until(lambda: len(h.messages()) == 30)
    write(log, *lines("g", 30, 5))
    shutil.copyfile(log, jobs / "4711" / "train.log.1")
    h.settle()  # the copy is seen while the original is still live
    os.truncate(log, 0)
    write(log, *lines("g", 35, 5))
    h.pump_until(lambda: len(h.messages()) == 40, message="40 records")
    h.settle()
    assert set(once(h)) == set(lines("g", 0, 40))
    h.close()


def test_truncation_without_copy_restarts_at_zero_and_counts_loss(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, *lines("t", 0, 10))
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 10)
    os.truncate(log, 0)
    write(log, "after truncation")
    h.pump_until(lambda: "after truncation" in h.messages(), message="line after truncation")
    assert h.stats.lost.get(("file", "truncated")) == 1
    h.settle()
    assert len(once(h)) == 11
    h.close()


def test_overlong_line_is_truncated_and_counted(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    with open(log, "wb") as fh:
        fh.write(b"before\n" + b"x" * (10 * 1024 * 1024) + b"\nafter\n")
    h = Harness(tmp_path, [source(jobs, max_line_bytes=64 * 1024)])
    h.pump_until(lambda: len(h.messages()) == 3, timeout=30)
    messages = h.messages()
    assert messages[0] == "before" and messages[2] == "after"
    assert messages[1] == "x" * 64 * 1024
    assert h.stats.truncated_lines["file"] == 1
    assert h.stats.dropped_bytes["file"] == 10 * 1024 * 1024 - 64 * 1024 + 1
    h.close()


def test_restart_inside_an_overlong_line_skips_its_rest(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    with open(log, "wb") as fh:
        fh.write(b"before\n" + b"y" * 300_000)  # the line is still being written
    h = Harness(tmp_path, [source(jobs, max_line_bytes=1024, multiline={"enabled": False})])
    h.pump_until(lambda: len(h.messages()) == 2)
    h.settle()
    h.restart()
    with open(log, "ab") as fh:
        fh.write(b"y" * 1000 + b"\nafter\n")
    h.pump_until(lambda: "after" in h.messages())
    h.settle()
    assert h.messages() == ["before", "y" * 1024, "after"]
    h.close()


def test_invalid_utf8_nul_and_binary_files_never_stop_it(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    with open(log, "wb") as fh:
        fh.write(b"bad \xff\xfe utf8\n" + b"nul \x00 byte\n" + b"fine\n")
    (jobs / "4712" / "core.log").write_bytes(bytes(range(256)) * 64)
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 3)
    h.settle()
    assert h.messages() == ["bad \ufffd\ufffd utf8", "nul \ufffd byte", "fine"]
    assert h.stats.skipped_files[("file", "binary")] == 1
    h.close()


def test_file_deleted_while_open_is_read_to_its_end(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, "one")
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: h.messages() == ["one"])
    write(log, "two", "three")
    os.unlink(log)
    h.pump_until(lambda: len(h.messages()) == 3)
    h.settle()
    assert h.collector.inputs[0].tracked == {}  # type: ignore[attr-defined]
    h.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_retried_and_counted(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, "secret")
    log.chmod(0)
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: h.stats.read_errors.get(("file", "permission"), 0) > 0)
    assert h.messages() == []
    log.chmod(0o644)
    h.pump_until(lambda: h.messages() == ["secret"])
    h.close()


def test_file_made_unreadable_while_open_keeps_being_read(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, "one")
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: h.messages() == ["one"])
    log.chmod(0)
    write_fd = os.open(log, os.O_WRONLY | os.O_APPEND) if os.geteuid() == 0 else None
    if write_fd is None:
        log.chmod(0o200)
        write_fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        log.chmod(0)
    os.write(write_fd, b"two\n")
    os.close(write_fd)
    h.pump_until(lambda: h.messages() == ["one", "two"])
    log.chmod(0o644)
    h.close()


def test_inode_reuse_with_other_content_is_a_new_file(tmp_path: Path, jobs: Path) -> None:
    log = jobs / "4711" / "train.log"
    write(log, *lines("old", 0, 5))
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 5)
    h.collector.close()
    # Same inode, new content longer than the old offset, other first bytes (a rewrite in place).
    with open(log, "r+") as fh:
        fh.seek(0)
        fh.write("\n".join(lines("new", 0, 8)) + "\n")
        fh.truncate()
    h.restart()
    h.pump_until(lambda: len(h.messages()) == 13)
    h.settle()
    assert set(once(h)) == set(lines("old", 0, 5)) | set(lines("new", 0, 8))
    h.close()


def test_events_are_counted_per_kind_and_job(tmp_path: Path, jobs: Path) -> None:
    write(jobs / "4711" / "train.log", "NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus", "fine")
    write(jobs / "4712" / "train.log", "RuntimeError: CUDA error: out of memory")
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 3)
    # A job's log file is the user's: an XID in it is stored, but not believed (only kmsg is).
    assert h.stats.events == {("cuda_oom", "4712"): 1}
    xid = next(r for r in h.records() if r.message.startswith("NVRM: Xid"))
    assert xid.event_kind is None and xid.job_id == "4711"
    assert h.stats.refused_events == {("file", "gpu_xid"): 1}
    assert set(h.stats.job_last_record) == {"4711", "4712"}
    h.close()


def test_cri_source_with_pod_metadata(tmp_path: Path) -> None:
    uid = "0f0e0d0c-1111-2222-3333-444455556666"
    pod_dir = tmp_path / "pods" / f"ml_trainer-0_{uid}" / "pytorch"
    pod_dir.mkdir(parents=True)
    with open(pod_dir / "0.log", "w") as fh:
        fh.write("2026-11-29T05:00:00.000000001Z stderr P [rank2]: torch.OutOfMemoryError: CUDA out of ")
        fh.write("\n2026-11-29T05:00:00.000000002Z stderr F memory. Tried to allocate 1.00 GiB.\n")
        fh.write("2026-11-29T05:00:01Z stdout F step 1\n")
    pattern = re.escape(str(tmp_path)) + r"/pods/[^/_]+_[^/_]+_(?P<job_id>[0-9a-f-]{36})/"
    h = Harness(tmp_path, [{"type": "cri", "paths": [f"{tmp_path}/pods/*/*/*.log"], "rotate_wait": 0,
                            "job_id_pattern": pattern,
                            "multiline": {"flush_timeout": 0.1}}])
    h.pump_until(lambda: len(h.messages()) == 2)
    first, second = h.records()
    assert first.source == "cri" and first.stream == "stderr" and first.rank == 2 and first.job_id == uid
    assert first.event_kind == "cuda_oom" and first.offset == 0
    assert first.message == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB."
    assert dict(first.labels) == {"namespace": "ml", "pod": "trainer-0", "pod_uid": uid,
                                  "container": "pytorch"}
    assert second.stream == "stdout" and second.timestamp == 1795928401.0
    h.close()


def test_job_from_the_job_map_when_the_node_runs_one_job(tmp_path: Path) -> None:
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    for gpu in ("0", "1"):
        (jobmap / gpu).write_text("777 1000\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "worker.log", "hello")
    h = Harness(tmp_path, [file_source([f"{logs}/*.log"], job_id_patterns=[r"/nomatch/(?P<job_id>\d+)/"],
                                       job_map_dir=str(jobmap))])
    h.pump_until(lambda: len(h.messages()) == 1)
    assert h.records()[0].job_id == "777"
    h.close()


def test_docker_json_file_source(tmp_path: Path) -> None:
    import json

    container = tmp_path / "containers" / ("c" * 64)
    container.mkdir(parents=True)
    entries = [{"log": "x" * 100, "stream": "stdout", "time": "2026-11-29T05:00:00Z"},
               {"log": "y\n", "stream": "stdout", "time": "2026-11-29T05:00:00.1Z"},
               {"log": "RuntimeError: CUDA error: an illegal memory access was encountered\n",
                "stream": "stderr", "time": "2026-11-29T05:00:01Z"}]
    write(container / f"{'c' * 64}-json.log", *(json.dumps(e) for e in entries))
    h = Harness(tmp_path, [{"type": "docker", "paths": [f"{tmp_path}/containers/*/*-json.log"],
                            "job_id": "job-9", "rotate_wait": 0, "multiline": {"flush_timeout": 0.1}}])
    h.pump_until(lambda: len(h.messages()) == 2)
    first, second = sorted(h.records(), key=lambda r: r.offset)
    assert first.message == "x" * 100 + "y" and first.offset == 0 and first.source == "docker"
    assert second.event_kind == "cuda_illegal_access" and second.stream == "stderr"
    assert first.timestamp == 1795928400.0
    h.close()


def test_checkpoints_of_vanished_files_are_forgotten(tmp_path: Path, jobs: Path) -> None:
    from collectors.logs.config import FileSource
    from collectors.logs.files import FileTailer
    from collectors.logs.rules import RuleSet
    from collectors.logs.stats import LogStats

    done_log = jobs / "4711" / "train.log"
    write(done_log, *lines("d", 0, 3))
    h = Harness(tmp_path, [source(jobs)])
    h.pump_until(lambda: len(h.messages()) == 3)
    h.collector.close()
    saved = h.store.checkpoints()
    assert len(saved) == 1
    done_log.unlink()
    now = [1000.0]
    config = FileSource.model_validate(source(jobs))
    stats = LogStats()
    tailer = FileTailer("file", config, host="node1", rules=RuleSet.build(), stats=stats, checkpoints=saved,
                        monotonic=lambda: now[0], forget_after=60)
    tailer.scan()
    assert tailer.pending_checkpoints() == ({}, [])
    now[0] += 61
    tailer.scan()
    updates, removed = tailer.pending_checkpoints()
    assert updates == {} and removed == list(saved)
    assert stats.lost[("file", "vanished")] == 1  # it was not finished: its unread rest is gone
    h.store.write([], updates, removed)
    assert h.store.checkpoints() == {}
    h.close()


def test_kubelet_rotation_while_stopped(tmp_path: Path) -> None:
    uid = "0f0e0d0c-1111-2222-3333-444455556666"
    container = tmp_path / "pods" / f"ml_trainer-0_{uid}" / "pytorch"
    container.mkdir(parents=True)
    live = container / "0.log"

    def cri(start: int, count: int) -> list[str]:
        return [f"2026-11-29T05:00:{i % 60:02d}.000000001Z stdout F step {i}"
                for i in range(start, start + count)]

    write(live, *cri(0, 10))
    pods = f"{tmp_path}/pods/*/*"
    src = {"type": "cri", "paths": [f"{pods}/*.log", f"{pods}/*.log.2*"], "rotate_wait": 0,
           "job_id_pattern": re.escape(str(tmp_path)) + r"/pods/[^/_]+_[^/_]+_(?P<job_id>[0-9a-f-]{36})/",
           "multiline": {"flush_timeout": 0.1}}
    h = Harness(tmp_path, [src])
    h.pump_until(lambda: len(h.messages()) == 10)
    h.collector.close()
    write(live, *cri(10, 5))
    os.rename(live, container / "0.log.20261129-050000")
    write(live, *cri(15, 5))
    h.restart()
    h.pump_until(lambda: len(h.messages()) == 20, message="20 records")
    h.settle()
    assert sorted(once(h)) == sorted(f"step {i}" for i in range(20))
    assert {r.job_id for r in h.records()} == {uid}
    h.close()


def test_source_host_overrides_the_collector_host(tmp_path: Path, jobs: Path) -> None:
    write(jobs / "4711" / "train.log", "from node7")
    h = Harness(tmp_path, [source(jobs, host="node7")])
    h.pump_until(lambda: len(h.messages()) == 1)
    record = h.records()[0]
    assert record.host == "node7" and record.record_id.startswith("node7:")
    h.close()
