"""filesystem: ``node_filesystem_*{device,fstype,mountpoint}`` for the mounts in
``<procfs>/1/mounts`` (PID 1's view: the host's, even when this exporter runs in a container),
each measured with statfs on ``<rootfs>/<mountpoint>``.

A mount whose statfs fails publishes only ``node_filesystem_device_error 1``; the other mounts
are unaffected. statfs on a dead NFS server can hang forever, so for network filesystems each
call runs on a worker thread with a deadline, and a mount that stuck once is skipped until it
answers again, the way node_exporter's ``stuckMounts`` works.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import Metric

from exporters.node._families import Family
from exporters.node._files import join, read_text
from exporters.node.filters import NameFilter

log = logging.getLogger(__name__)

DEFAULT_MOUNT_POINTS_EXCLUDE = (
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)
DEFAULT_FS_TYPES_EXCLUDE = (
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs"
    r"|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs)$"
)

# statfs on these can block for as long as a server is away, so they are asked on a worker thread
# with a deadline; local filesystems answer from memory and are asked directly (a thread per
# mount per scrape would cost more than the statfs itself).
_REMOTE_FS = re.compile(
    r"^(nfs4?|cifs|smb3?|ceph|glusterfs|lustre|gpfs|beegfs|9p|afs|sshfs|davfs|fuse(\..*)?)$"
)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

Statfs = Callable[[str], os.statvfs_result]


@dataclass(frozen=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str
    options: str


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in mounts as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str, rootfs: str = "/") -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 4:
            raise ValueError(f"malformed mount point information: {line[:80]!r}")
        mountpoint = _unescape(parts[1])
        mounts.append(Mount(_unescape(parts[0]), _strip_rootfs(mountpoint, rootfs), parts[2], parts[3]))
    return mounts


def _strip_rootfs(mountpoint: str, rootfs: str) -> str:
    # With --path.rootfs=/host inside a container, PID 1's mounts may show /host/...; publish
    # the path as the host sees it (node_exporter's rootfsStripPrefix).
    if rootfs in ("", "/"):
        return mountpoint
    prefix = rootfs.rstrip("/")
    if mountpoint == prefix or mountpoint.startswith(prefix + "/"):
        return mountpoint[len(prefix):] or "/"
    return mountpoint


class FilesystemCollector:
    def __init__(
        self,
        procfs: str = "/proc",
        rootfs: str = "/",
        mount_points_exclude: str | None = DEFAULT_MOUNT_POINTS_EXCLUDE,
        fs_types_exclude: str | None = DEFAULT_FS_TYPES_EXCLUDE,
        statfs: Statfs = os.statvfs,
        timeout: float = 5.0,
    ) -> None:
        self.procfs = procfs
        self.rootfs = rootfs
        self.mount_filter = NameFilter(exclude=mount_points_exclude, what="mount point")
        self.type_filter = NameFilter(exclude=fs_types_exclude, what="filesystem type")
        self.statfs = statfs
        self.timeout = timeout
        self._stuck: set[str] = set()
        self._lock = threading.Lock()

    def _mounts_text(self) -> str:
        try:
            return read_text(join(self.procfs, "1", "mounts"))
        except FileNotFoundError:
            return read_text(join(self.procfs, "mounts"))

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, help_text: str) -> Family:
            return Family(f"node_filesystem_{name}", help_text)

        size = gauge("size_bytes", "Filesystem size in bytes.")
        free = gauge("free_bytes", "Filesystem free space in bytes.")
        avail = gauge("avail_bytes", "Filesystem space available to non-root users in bytes.")
        files = gauge("files", "Filesystem total file nodes.")
        files_free = gauge("files_free", "Filesystem total free file nodes.")
        readonly = gauge("readonly", "Filesystem read-only status.")
        device_error = gauge(
            "device_error", "Whether an error occurred while getting statistics for the given device."
        )
        seen: set[tuple[str, str, str]] = set()
        for mount in parse_mounts(self._mounts_text(), self.rootfs):
            if self.mount_filter.ignored(mount.mountpoint) or self.type_filter.ignored(mount.fstype):
                continue
            labels = {"device": mount.device, "fstype": mount.fstype, "mountpoint": mount.mountpoint}
            key = (mount.device, mount.fstype, mount.mountpoint)
            if key in seen:
                continue  # the same filesystem mounted twice on one path: publish it once
            seen.add(key)
            remote = bool(_REMOTE_FS.match(mount.fstype))
            st = self._statfs(join(self.rootfs, mount.mountpoint), remote)
            if st is None:
                device_error.add(labels, 1.0)
                continue
            device_error.add(labels, 0.0)
            bsize = float(st.f_bsize)
            size.add(labels, float(st.f_blocks) * bsize)
            free.add(labels, float(st.f_bfree) * bsize)
            avail.add(labels, float(st.f_bavail) * bsize)
            files.add(labels, float(st.f_files))
            files_free.add(labels, float(st.f_ffree))
            readonly.add(labels, 1.0 if "ro" in mount.options.split(",") else 0.0)
        yield from (avail, device_error, files, files_free, free, readonly, size)

    def _statfs(self, path: str, remote: bool) -> os.statvfs_result | None:
        if not remote:
            try:
                return self.statfs(path)
            except OSError as exc:
                log.debug("statfs on %s failed: %s", path, exc)
                return None
        with self._lock:
            if path in self._stuck:
                return None
        result: list[os.statvfs_result] = []
        error: list[OSError] = []
        done = threading.Event()

        def call() -> None:
            try:
                result.append(self.statfs(path))
            except OSError as exc:
                error.append(exc)
            finally:
                # Under the lock, so that "finished" and "marked stuck" cannot cross: a call that
                # returns right after the deadline still un-sticks its mount.
                with self._lock:
                    done.set()
                    self._stuck.discard(path)

        worker = threading.Thread(target=call, name="statfs", daemon=True)
        worker.start()
        worker.join(self.timeout)
        with self._lock:
            stuck = not done.is_set()
            if stuck:
                self._stuck.add(path)
        if stuck:
            log.warning("statfs on %s timed out after %.1fs; skipped until it returns", path, self.timeout)
            return None
        if error:
            log.debug("statfs on %s failed: %s", path, error[0])
            return None
        return result[0]
