"""The filesystem collector: mount parsing, statfs failures and mounts that hang."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from exporters.node.filesystem import FilesystemCollector, parse_mounts
from tests.exporters.node.helpers import samples, scrape


def test_mount_points_are_unescaped_and_stripped_of_the_rootfs() -> None:
    mounts = parse_mounts("/dev/sda1 /host/with\\040space ext4 rw 0 0\n/dev/sda2 /host ext4 ro 0 0\n"
                          "/dev/sda3 /hostile ext4 rw 0 0\n", rootfs="/host")
    assert [m.mountpoint for m in mounts] == ["/with space", "/", "/hostile"]


def _procfs_with_mounts(tmp_path: Path, text: str) -> str:
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "mounts").write_text(text)
    return str(tmp_path / "proc")


def _fake_statvfs(bsize: int = 4096) -> os.statvfs_result:
    # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, f_flag, f_namemax
    return os.statvfs_result((bsize, bsize, 1000, 400, 300, 50, 20, 20, 0, 255))


def test_sizes_come_from_statfs_and_a_failed_mount_reports_device_error(tmp_path: Path) -> None:
    procfs = _procfs_with_mounts(tmp_path, "/dev/a / ext4 rw 0 0\n/dev/b /gone ext4 ro 0 0\n")
    asked: list[str] = []

    def statfs(path: str) -> os.statvfs_result:
        asked.append(path)
        if path.endswith("/gone"):
            raise FileNotFoundError(path)
        return _fake_statvfs()

    found = samples(scrape({"filesystem": FilesystemCollector(procfs, "/rootfs", statfs=statfs)}))
    root = (("device", "/dev/a"), ("fstype", "ext4"), ("mountpoint", "/"))
    gone = (("device", "/dev/b"), ("fstype", "ext4"), ("mountpoint", "/gone"))
    assert asked == ["/rootfs", "/rootfs/gone"]
    assert found[("node_filesystem_size_bytes", root)] == 1000 * 4096
    assert found[("node_filesystem_avail_bytes", root)] == 300 * 4096
    assert found[("node_filesystem_files_free", root)] == 20
    assert found[("node_filesystem_device_error", root)] == 0
    assert found[("node_filesystem_device_error", gone)] == 1
    assert ("node_filesystem_size_bytes", gone) not in found
    assert found[("node_scrape_collector_success", (("collector", "filesystem"),))] == 1


def test_a_hanging_network_mount_is_skipped_until_it_answers(tmp_path: Path) -> None:
    procfs = _procfs_with_mounts(tmp_path, "/dev/a / ext4 rw 0 0\nsrv:/x /nfs nfs4 rw 0 0\n")
    release = threading.Event()
    nfs_calls: list[str] = []

    def statfs(path: str) -> os.statvfs_result:
        if path.endswith("/nfs"):
            nfs_calls.append(path)
            release.wait(30)
        return _fake_statvfs()

    collector = FilesystemCollector(procfs, "/", statfs=statfs, timeout=0.2)
    nfs = (("device", "srv:/x"), ("fstype", "nfs4"), ("mountpoint", "/nfs"))
    root = (("device", "/dev/a"), ("fstype", "ext4"), ("mountpoint", "/"))
    try:
        first = samples(scrape({"filesystem": collector}))
        assert first[("node_filesystem_device_error", nfs)] == 1
        assert first[("node_filesystem_device_error", root)] == 0
        # Still stuck: not asked again (no pile of blocked threads), reported as an error.
        second = samples(scrape({"filesystem": collector}))
        assert second[("node_filesystem_device_error", nfs)] == 1
        assert len(nfs_calls) == 1
    finally:
        release.set()
    from tests.support import wait_until

    def answered() -> bool:
        return samples(scrape({"filesystem": collector})).get(("node_filesystem_device_error", nfs)) == 0

    wait_until(answered, timeout=10, message="the NFS mount to be asked again once it answered")
