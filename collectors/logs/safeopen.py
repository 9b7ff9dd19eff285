"""Opening a log file that a hostile user may have put in place of one.

The collector runs with more privilege than the users whose files it reads (root, or
CAP_DAC_READ_SEARCH), in directories those users write. So a path the globs return is never
trusted (issue 9, findings 1 and 3):

- **No symbolic links** (``follow_symlinks: false``, the default, as in Filebeat): every directory
  below the fixed part of the glob is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to its
  parent (``openat``), and the file itself with ``O_NOFOLLOW``. ``ln -s /etc/shadow job/x.log``,
  or a symlinked directory ``job/evil -> /root``, is refused, without a check-then-open race.
  The fixed part of the glob (``/data/jobs`` of ``/data/jobs/*/*.log``) is the administrator's
  and may hold links.
- **Never blocks**: ``O_NONBLOCK`` makes the open of a FIFO return at once (``O_NOCTTY``: a
  terminal never becomes ours); the descriptor is then refused below.
- **The descriptor is checked, not the path** (``fstat`` after the open): a regular file, with one
  link (a hard link to another user's file or to ``/etc/shadow`` has two), and, with
  ``check_owner: true``, owned by the owner of the directory it was opened in.

:class:`Refused` says why a file was not read; it is counted in
``jobsight_log_skipped_files_total{reason}`` and logged once per path.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
from collections.abc import Iterable

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Refused(Exception):
    """The path is not a file the collector reads; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def glob_root(pattern: str) -> str:
    """The directories of ``pattern`` before its first component with a wildcard: the part an
    administrator wrote, where symbolic links are followed."""
    parts = pattern.split("/")[:-1]
    fixed: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.path.normpath("/".join(fixed) or "/")


class SafeOpener:
    def __init__(self, roots: Iterable[str], *, follow_symlinks: bool = False,
                 check_owner: bool = False) -> None:
        # Longest first, so the most specific root of a path is found first.
        self.roots = sorted({os.path.normpath(root) for root in roots}, key=len, reverse=True)
        self.follow_symlinks = follow_symlinks
        self.check_owner = check_owner

    def open(self, path: str) -> tuple[int, os.stat_result]:
        """An open read-only descriptor of the regular file at ``path`` and its ``fstat``.

        Raises :class:`Refused` when the path or the file is not one to read, :class:`OSError`
        when it cannot be opened (missing, permission)."""
        if self.follow_symlinks:
            fd = _open_file(path, OPEN_FLAGS, None, path)
            owner = None
            if self.check_owner:
                try:
                    owner = os.stat(os.path.dirname(path) or ".").st_uid
                except OSError:
                    os.close(fd)
                    raise
        else:
            fd, owner = self._open_nofollow(path)
        try:
            st = os.fstat(fd)
            self._check(path, st, owner)
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _check(self, path: str, st: os.stat_result, owner: int | None) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not_regular", f"{path} is not a regular file")
        if st.st_nlink > 1:
            raise Refused("hardlink", f"{path} has {st.st_nlink} hard links (a link to another file?)")
        if self.check_owner and owner is not None and st.st_uid != owner:
            raise Refused("owner", f"{path} is owned by uid {st.st_uid}, its directory by uid {owner}")

    def _root_of(self, path: str) -> str:
        for root in self.roots:
            if root == "/" or path.startswith(root + "/"):
                return root
        return "/"

    def _open_nofollow(self, path: str) -> tuple[int, int]:
        """Walk from the path's root with O_NOFOLLOW at every step; (fd, owner of its directory)."""
        path = os.path.normpath(path)
        root = self._root_of(path)
        rest = path[len(root):].strip("/").split("/")
        *dirs, name = rest
        dfd = os.open(root, _DIR_FLAGS)
        try:
            for part in dirs:
                try:
                    next_fd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, dfd):
                        raise Refused("symlink", f"{path}: directory {part!r} is a symbolic link") from exc
                    raise
                os.close(dfd)
                dfd = next_fd
            fd = _open_file(name, OPEN_FLAGS | os.O_NOFOLLOW, dfd, path)
            try:
                owner = os.fstat(dfd).st_uid
            except OSError:
                os.close(fd)
                raise
            return fd, owner
        finally:
            os.close(dfd)


def _open_file(name: str, flags: int, dir_fd: int | None, shown: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("symlink", f"{shown} is a symbolic link") from exc
        if exc.errno == errno.ENXIO:  # a UNIX socket
            raise Refused("not_regular", f"{shown} is not a regular file") from exc
        raise


def _is_link(name: str, dir_fd: int) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    return False
