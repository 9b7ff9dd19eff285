"""Issue 9, finding 11: the store's file system fills up (a user can fill a shared /var). The
collector says "disk full" and the store's path, in its log and in /healthz, instead of SQLite's
"cannot rollback - no transaction is active"; once there is room again every line is stored
exactly once, also after a SIGKILL while the disk was full."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobsight.errors import DependencyUnavailable
from jobsight.logstore import LogRecord, SQLiteLogStore
from tests.collectors.logs.harness import CollectorProcess
from tests.support import Proc, wait_until

pytestmark = pytest.mark.security


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real ENOSPC, the way a full /var gives it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def record(i: int) -> LogRecord:
    return LogRecord(timestamp=1.0, host="h", job_id="j", path="/p", offset=i,
                     message=f"line {i} " + "x" * 200, record_id=f"h:p:{i}")


def test_store_says_disk_full_not_cannot_rollback(small_fs: Path) -> None:
    store = SQLiteLogStore(small_fs / "store")
    try:
        store.write([record(0)], {"k": "0"})
        filler = fill(small_fs)
        with pytest.raises(DependencyUnavailable) as info:
            for i in range(1, 5000):
                store.write([record(i * 100 + k) for k in range(50)], {"k": str(i)})
        message = str(info.value)
        assert "disk full" in message and str(small_fs / "store") in message, message
        assert "cannot rollback" not in message
        filler.unlink()
        store.write([record(-1)], {"k": "after"})  # the connection is usable again
        assert store.checkpoints() == {"k": "after"}
    finally:
        store.close()


def test_database_size_limit_is_disk_full_too(tmp_path: Path) -> None:
    """SQLITE_FULL without a full file system (``max_page_count``): the same message, no root needed."""
    store = SQLiteLogStore(tmp_path / "store")
    try:
        store._conn.execute("PRAGMA max_page_count = 64")
        with pytest.raises(DependencyUnavailable, match="disk full") as info:
            for i in range(1000):
                store.write([record(i * 100 + k) for k in range(50)])
        assert "cannot rollback" not in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.Error)
    finally:
        store.close()


def test_collector_reports_disk_full_and_recovers_exactly_once(small_fs: Path, tmp_path: Path,
                                                               spawn: Callable[..., Proc]) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "4711").mkdir(parents=True)
    log = jobs / "4711" / "train.log"
    store = small_fs / "store"
    source = {"type": "file", "paths": [f"{jobs}/*/*.log"], "job_id_pattern": f"{jobs}/(?P<job_id>[^/]+)/",
              "multiline": {"enabled": False}}
    settings = {"retry_initial": 0.1, "retry_max": 0.5}
    collector = CollectorProcess(spawn, tmp_path, [source], store=store, name="first", **settings)
    collector.wait_ready()
    log.write_text("".join(f"before {i}\n" for i in range(10)))
    wait_until(lambda: len(collector.records()) == 10, timeout=20, message="the first lines")

    filler = fill(small_fs)
    with open(log, "a") as fh:
        fh.write("".join(f"while full {i} {'y' * 200}\n" for i in range(200)))

    def says_disk_full() -> str | None:
        reply = collector.healthz()
        return reply.text if reply.status_code == 503 and "disk full" in reply.text else None

    text = wait_until(says_disk_full, timeout=30, message="/healthz to say disk full")
    assert str(store) in text and "cannot rollback" not in text
    output = collector.proc.output()
    assert "disk full" in output and str(store) in output and "cannot rollback" not in output
    # Killed while the disk is full; space comes back; a new process stores the rest, once.
    collector.proc.kill(signal.SIGKILL)
    collector.proc.popen.wait(timeout=10)
    os.unlink(filler)
    with open(log, "a") as fh:
        fh.write("after\n")
    again = CollectorProcess(spawn, tmp_path, [source], store=store, name="second", **settings)
    again.wait_ready()
    wait_until(lambda: len(again.records()) >= 211, timeout=60, message="every line stored")
    wait_until(lambda: again.healthz().status_code == 200, timeout=20, message="/healthz 200")
    counts = Counter(again.messages())
    assert len(counts) == 211 and set(counts.values()) == {1}
