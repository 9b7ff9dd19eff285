"""Writes the job map: one file per GPU, a job id per line (dcgm-exporter's ``hpc-job`` format).

Several jobs may share a node, and with shared GPUs a file: each prolog adds its id to its GPUs'
files and each epilog removes it, under an exclusive lock on the directory, and every file is
replaced atomically (write a dot-file, rename) so a reader never sees half a file. Dot-files are
never taken for map files by the readers (their names must be an index or a UUID).
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_MAX_FILE_BYTES = 64 * 1024


class JobMapWriter:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, key: str) -> list[str]:
        try:
            fd = os.open(self.directory / key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)  # the aliases directory, or anything else that is no map file
            return []
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(_MAX_FILE_BYTES)
        return [line.strip() for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]

    def _write(self, key: str, job_ids: Sequence[str]) -> None:
        target = self.directory / key
        if not job_ids:
            target.unlink(missing_ok=True)
            return
        tmp = self.directory / f".{key}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{job_id}\n" for job_id in job_ids))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)

    def add(self, job_id: str, keys: Sequence[str]) -> None:
        with self._locked():
            for key in keys:
                ids = self._read(key)
                if job_id not in ids:
                    self._write(key, [*ids, job_id])

    def remove(self, job_id: str) -> list[str]:
        """Take ``job_id`` out of every file; returns the keys it held."""
        held = []
        with self._locked():
            for entry in sorted(os.listdir(self.directory)):
                if entry.startswith("."):
                    continue
                ids = self._read(entry)
                if job_id in ids:
                    held.append(entry)
                    self._write(entry, [i for i in ids if i != job_id])
        return held
