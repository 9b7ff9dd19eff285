"""Kernel and file lines get the job that held the node at the line's own time (issue 10, defect
10): a job map change mid-stream, a line read late, ring-buffer lines older than the start."""

from __future__ import annotations

import os
import time
from pathlib import Path

from collectors.logs.jobtime import JobTimeline
from tests.collectors.logs.harness import Harness, file_source


def set_job(jobmap: Path, job: str | None, when: float) -> None:
    """What a prolog (job) or epilog (None) does: write or remove the map files, at ``when``."""
    for gpu in ("0", "1"):
        path = jobmap / gpu
        if job is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(f"{job} 1000\n")
            os.utime(path, (when, when))
    os.utime(jobmap, (when, when))


def test_timeline_dates_changes_by_the_maps_own_time(tmp_path: Path) -> None:
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    now = [1000.0]
    set_job(jobmap, "A", 900.0)
    timeline = JobTimeline(jobmap, clock=lambda: now[0], min_interval=1.0)
    assert timeline.current == "A"
    assert timeline.job_at(999.0) is None  # before the collector started: unknown, never "A"
    assert timeline.job_at(1000.0) == "A"
    set_job(jobmap, "B", 1050.0)  # job B starts at 1050 ...
    now[0] = 1060.0  # ... and is noticed at 1060
    timeline.refresh()
    assert timeline.current == "B"
    assert timeline.job_at(1049.0) == "A" and timeline.job_at(1055.0) == "B"
    now[0] = 1100.0
    timeline.refresh()
    set_job(jobmap, None, 1100.2)  # the epilog
    now[0] = 1100.5
    timeline.refresh()  # within min_interval of the last read: not re-read yet
    assert timeline.current == "B"
    now[0] = 1101.5
    timeline.refresh()
    assert timeline.current is None and timeline.job_at(1100.1) == "B" and timeline.job_at(1100.3) is None


def test_timeline_history_is_bounded(tmp_path: Path) -> None:
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    now = [1000.0]
    timeline = JobTimeline(jobmap, clock=lambda: now[0], max_changes=3)
    for i in range(5):
        now[0] += 10
        set_job(jobmap, f"J{i}", now[0])
        timeline.refresh(force=True)
    assert len(timeline.changes) == 3
    assert timeline.job_at(1011.0) is None  # older than the history kept
    assert timeline.job_at(now[0]) == "J4"


def kmsg_line(seq: int, wall: float, text: str) -> str:
    """A /dev/kmsg record written at unix time ``wall`` (ts_usec is monotonic time since boot)."""
    usec = int((wall - (time.time() - time.monotonic())) * 1e6)
    return f"3,{seq},{usec},-;{text}\n"


XID = "NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."


def test_kmsg_line_gets_the_job_of_its_own_time(tmp_path: Path) -> None:
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    kmsg = tmp_path / "kmsg"
    (tmp_path / "boot_id").write_text("0f0e0d0c-aaaa-bbbb-cccc-ddddeeeeffff\n")
    started = time.time()
    set_job(jobmap, "A", started - 60)
    # The ring buffer from boot: older than the collector's start, whoever held the GPUs then.
    kmsg.write_text("3,1,5000000,-;" + XID + "\n")
    h = Harness(tmp_path, [{"type": "kmsg", "path": str(kmsg), "boot_id_path": str(tmp_path / "boot_id"),
                            "job_map_dir": str(jobmap), "multiline": {"enabled": False}}])
    h.pump_until(lambda: len(h.records()) == 1, message="the ring buffer line")
    assert h.records()[0].job_id is None

    during_a = time.time()
    with open(kmsg, "a") as fh:
        fh.write(kmsg_line(2, during_a, "step under A"))
    h.pump_until(lambda: len(h.records()) == 2, message="a line during A")
    time.sleep(0.05)
    set_job(jobmap, "B", time.time())  # job B starts; the XID of A's time is read only now
    time.sleep(1.1)  # past the map's re-read interval
    with open(kmsg, "a") as fh:
        fh.write(kmsg_line(3, during_a + 0.01, XID))
        fh.write(kmsg_line(4, time.time(), "mlx5_core 0000:08:00.0 mlx5_0: Port: 1 Link DOWN"))
    h.pump_until(lambda: len(h.records()) == 4, message="the late XID and a line during B")
    by_seq = {r.offset: r for r in h.records()}
    assert by_seq[2].job_id == "A"
    assert by_seq[3].job_id == "A" and by_seq[3].event_kind == "gpu_xid"  # written during A, read during B
    assert by_seq[4].job_id == "B" and by_seq[4].event_kind == "ib_link_down"
    h.close()


def test_file_lines_follow_a_map_change_mid_stream(tmp_path: Path) -> None:
    jobmap = tmp_path / "jobmap"
    jobmap.mkdir()
    set_job(jobmap, "A", time.time() - 60)
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "node.log"
    log.write_text("first, no time of its own\n")
    h = Harness(tmp_path, [file_source([f"{logs}/*.log"], job_map_dir=str(jobmap))])
    h.pump_until(lambda: len(h.records()) == 1)
    set_job(jobmap, "B", time.time())
    time.sleep(1.1)
    with open(log, "a") as fh:
        fh.write("second, read after B started\n")
    h.pump_until(lambda: len(h.records()) == 2)
    assert [(r.message, r.job_id) for r in h.records()] == [
        ("first, no time of its own", "A"), ("second, read after B started", "B")]
    h.close()
