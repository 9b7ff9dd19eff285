"""Kernel messages in /dev/kmsg's record format, read from a file (the `path` option)."""

from __future__ import annotations

from pathlib import Path

from collectors.logs.kmsg import parse_record
from tests.collectors.logs.harness import Harness

RECORDS = (
    "6,1000,5000000,-;NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, "
    "GPU has fallen off the bus.\n"
    " SUBSYSTEM=pci\n"
    " DEVICE=+pci:0000:3b:00.0\n"
    "3,1001,5000100,-;mlx5_core 0000:08:00.0 mlx5_0: Port: 1 Link DOWN\n"
    "3,1002,5000200,-;Memory cgroup out of memory: Killed process 28438 (python) total-vm:20255636kB, "
    "anon-rss:466160kB, file-rss:13684kB, shmem-rss:0kB, UID:1000 pgtables:1234kB oom_score_adj:0\n"
    "not a kmsg record\n"
    "4,1003,5000300,-;NVRM: The NVIDIA GPU 0000:b3:00.0\n"
    "4,1004,5000301,-;NVRM: (PCI ID: 10de:26b5) installed in this system has\n"
    "4,1005,5000302,-;NVRM: fallen off the bus and is not responding to commands.\n"
    "6,1006,5000400,-;usb 1-1: new high-speed USB device number 2 using xhci_hcd\n"
)


def kmsg_harness(tmp_path: Path, boot_id: str = "0f0e0d0c-aaaa-bbbb-cccc-ddddeeeeffff") -> Harness:
    if not (tmp_path / "kmsg").exists():
        (tmp_path / "kmsg").write_text(RECORDS)
    (tmp_path / "boot_id").write_text(boot_id + "\n")
    return Harness(tmp_path, [{"type": "kmsg", "path": str(tmp_path / "kmsg"),
                               "boot_id_path": str(tmp_path / "boot_id"), "job_id": "4711",
                               "multiline": {"flush_timeout": 0.1}}])


def test_parse_record_header_and_level() -> None:
    parsed = parse_record(b"3,42,1500000,-;hello \\x01 there\n SUBSYSTEM=pci", 1000.0)
    assert parsed is not None
    seq, line = parsed
    assert (seq, line.text, line.level, line.timestamp) == (42, "hello \\x01 there", "error", 1001.5)
    assert parse_record(b"garbage", 0.0) is None
    assert parse_record(b"x,y,z;msg", 0.0) is None


def test_kmsg_events_with_sequence_offsets(tmp_path: Path) -> None:
    h = kmsg_harness(tmp_path)
    h.pump_until(lambda: len(h.records()) == 5, message="5 kmsg records")
    by_offset = {r.offset: r for r in h.records()}
    assert set(by_offset) == {1000, 1001, 1002, 1003, 1006}
    xid = by_offset[1000]
    assert (xid.event_kind, xid.event_fields["xid"], xid.path, xid.source, xid.job_id) == \
        ("gpu_xid", "79", "kmsg", "kmsg", "4711")
    assert by_offset[1001].event_kind == "ib_link_down"
    assert by_offset[1001].event_fields["device"] == "mlx5_0"
    assert by_offset[1002].event_kind == "kernel_oom_kill" and by_offset[1002].level == "error"
    off_bus = by_offset[1003]
    assert off_bus.event_kind == "gpu_fallen_off_bus" and off_bus.event_fields["pci"] == "0000:b3:00.0"
    assert off_bus.message.count("\n") == 2
    assert by_offset[1006].event_kind is None and by_offset[1006].level == "info"
    assert h.stats.read_errors[("kmsg", "malformed")] == 1
    assert h.store.checkpoints()["kmsg:kmsg"] == \
        '{"boot_id": "0f0e0d0caaaabbbbccccddddeeeeffff", "seq": 1007}'
    h.close()


def test_kmsg_restart_resumes_after_the_checkpointed_sequence(tmp_path: Path) -> None:
    h = kmsg_harness(tmp_path)
    h.pump_until(lambda: len(h.records()) == 5)
    with open(tmp_path / "kmsg", "a") as fh:
        fh.write("6,1007,5000500,-;after restart\n")
    h.restart()
    h.pump_until(lambda: len(h.records()) == 6)
    h.settle()
    assert len(h.records()) == 6
    assert h.stats.duplicates.get("store", 0) == 0  # nothing before seq 1007 was delivered again
    h.close()


def test_new_boot_starts_a_new_identity(tmp_path: Path) -> None:
    h = kmsg_harness(tmp_path)
    h.pump_until(lambda: len(h.records()) == 5)
    h.close()
    h2 = kmsg_harness(tmp_path, boot_id="11111111-2222-3333-4444-555555555555")
    h2.pump_until(lambda: len(h2.records()) == 10, message="records of the second boot")
    assert len({r.record_id for r in h2.records()}) == 10
    h2.close()


def test_gap_after_the_checkpoint_is_counted_as_lost(tmp_path: Path) -> None:
    h = kmsg_harness(tmp_path)
    h.pump_until(lambda: len(h.records()) == 5)
    # The first start begins at the oldest record (seq 1000): nothing before it counts as lost.
    assert ("kmsg", "kmsg_overwritten") not in h.stats.lost
    with open(tmp_path / "kmsg", "a") as fh:
        fh.write("6,1010,5000500,-;after three records were overwritten\n")
    h.pump_until(lambda: len(h.records()) == 6)
    assert h.stats.lost[("kmsg", "kmsg_overwritten")] == 3
    h.close()
