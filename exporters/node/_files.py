"""Reading procfs/sysfs files quickly and the same way everywhere.

``os.open``/``os.read`` instead of ``Path.read_text``: a scrape reads thousands of tiny files
(``/proc/<pid>/stat``) and the pathlib/io layers cost more than the read itself.
"""

from __future__ import annotations

import os

# procfs files report a size of 0, so read in chunks until EOF; most fit in the first one.
_CHUNK = 65536


def read_bytes(path: str, limit: int = 16 * 1024 * 1024) -> bytes:
    """The whole file (at most ``limit`` bytes); raises OSError like open() does."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:
            return data
        parts = [data]
        total = len(data)
        while total < limit:
            more = os.read(fd, _CHUNK)
            if not more:
                break
            parts.append(more)
            total += len(more)
        return b"".join(parts)[:limit]
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    """The file as text; undecodable bytes are replaced rather than failing the collector."""
    return read_bytes(path).decode("utf-8", errors="replace")


def join(root: str, *parts: str) -> str:
    """``root`` joined with path parts that may start with ``/`` (as mount points do), the way
    node_exporter's ``rootfsFilePath`` does with ``filepath.Join``."""
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    if not tail:
        return root
    return root.rstrip("/") + "/" + tail if root != "/" else "/" + tail
