"""SafeOpener and the read loop's watchdog, in process (the attacks as a user against the real
process are in tests/security/test_collector_*.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from collectors.logs.safeopen import Refused, SafeOpener, glob_root
from collectors.logs.stats import LogStats
from tests.collectors.logs.harness import Harness, file_source


def test_glob_root_is_the_part_before_the_first_wildcard() -> None:
    assert glob_root("/data/jobs/*/*.log") == "/data/jobs"
    assert glob_root("/var/log/pods/*/*/*.log.2*") == "/var/log/pods"
    assert glob_root("/data/job[0-9]/x.log") == "/data"
    assert glob_root("/x.log") == "/"


def test_refuses_links_fifos_and_hard_links(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "a").mkdir(parents=True)
    real = jobs / "a" / "train.log"
    real.write_text("ok\n")
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    (jobs / "a" / "link.log").symlink_to(secret)
    (jobs / "evil").symlink_to(tmp_path)
    os.mkfifo(jobs / "a" / "fifo.log")
    os.link(secret, jobs / "a" / "hard.log")
    opener = SafeOpener([str(jobs)])
    fd, st = opener.open(str(real))
    assert os.read(fd, 10) == b"ok\n" and st.st_size == 3
    os.close(fd)
    for name, reason in (("a/link.log", "symlink"), ("evil/secret", "symlink"), ("a/fifo.log", "not_regular"),
                         ("a/hard.log", "hardlink")):
        with pytest.raises(Refused) as info:
            opener.open(str(jobs / name))
        assert info.value.reason == reason, name
    with pytest.raises(FileNotFoundError):
        opener.open(str(jobs / "a" / "missing.log"))
    # follow_symlinks: true reads through the link, still checking the file itself.
    (jobs / "a" / "to-real.log").symlink_to(real)
    follow = SafeOpener([str(jobs)], follow_symlinks=True)
    fd, _st = follow.open(str(jobs / "a" / "to-real.log"))
    os.close(fd)
    with pytest.raises(Refused):
        follow.open(str(jobs / "a" / "link.log"))  # to a file with two links
    with pytest.raises(Refused):
        follow.open(str(jobs / "a" / "fifo.log"))


def test_a_symlink_in_the_fixed_part_of_the_glob_is_the_admins(tmp_path: Path) -> None:
    (tmp_path / "real" / "a").mkdir(parents=True)
    (tmp_path / "real" / "a" / "x.log").write_text("x\n")
    (tmp_path / "data").symlink_to(tmp_path / "real")
    opener = SafeOpener([glob_root(f"{tmp_path}/data/*/*.log")])
    fd, _st = opener.open(f"{tmp_path}/data/a/x.log")
    os.close(fd)


def test_check_owner(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    mine = job / "mine.log"
    mine.write_text("x\n")
    other = job / "other.log"
    other.write_text("y\n")
    os.chown(other, 12345, 12345) if os.geteuid() == 0 else pytest.skip("needs root to chown")
    opener = SafeOpener([str(tmp_path)], check_owner=True)
    os.close(opener.open(str(mine))[0])
    with pytest.raises(Refused) as info:
        opener.open(str(other))
    assert info.value.reason == "owner"


def test_fifo_swapped_in_between_glob_and_open_does_not_block(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic version of the race: the file is replaced by a FIFO right after the scan's
    lstat. Before the fix the open() blocked forever; now the FIFO is refused and others are read."""
    jobs = tmp_path / "jobs"
    (jobs / "eve").mkdir(parents=True)
    (jobs / "ok").mkdir()
    target = jobs / "eve" / "x.log"
    target.write_text("eve\n")
    (jobs / "ok" / "train.log").write_text("fine\n")
    real_lstat = os.lstat

    def lstat_then_swap(path: str | os.PathLike[str], *args: object, **kwargs: object) -> os.stat_result:
        result = real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path) == str(target) and stat.S_ISREG(result.st_mode):
            os.unlink(target)
            os.mkfifo(target)
        return result

    monkeypatch.setattr(os, "lstat", lstat_then_swap)
    h = Harness(tmp_path, [file_source([f"{jobs}/*/*.log"])])
    h.pump_until(lambda: h.messages() == ["fine"], timeout=10)
    assert h.stats.skipped_files.get(("file", "not_regular"), 0) >= 1
    h.close()


def test_watchdog_reports_a_stall_after_the_bound() -> None:
    now = [100.0]
    stats = LogStats(monotonic=lambda: now[0], stall_after=5.0)
    assert stats.loop_stalled_for() is None
    stats.loop_progress = 100.0
    now[0] = 104.0
    assert stats.loop_stalled_for() is None
    now[0] = 106.5
    assert stats.loop_stalled_for() == 6.5


def test_healthz_says_stalled_when_the_loop_makes_no_progress(tmp_path: Path) -> None:
    h = Harness(tmp_path, [file_source([f"{tmp_path}/*.log"])], stall_after=0.5)
    h.collector.step()
    assert h.collector.health() == (True, "ok")
    h.stats.loop_progress = h.stats.monotonic() - 10  # the loop stuck inside one step
    ok, reason = h.collector.health()
    assert not ok and reason.startswith("stalled: the read loop has made no progress for 10s")
    h.collector.step()
    assert h.collector.health() == (True, "ok")
    h.close()
