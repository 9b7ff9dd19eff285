"""meminfo: ``node_memory_<Field>[_bytes]`` from ``<procfs>/meminfo``: kB values become bytes and
get ``_bytes``; unitless fields (``HugePages_Total``) keep their name; ``Active(anon)`` becomes
``Active_anon`` — node_exporter's rules exactly."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from prometheus_client.core import Metric

from exporters.node._families import single
from exporters.node._files import join, read_text

_PARENS = re.compile(r"\((.*)\)")
_VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


@functools.lru_cache(maxsize=512)
def _key(field: str) -> str:
    return _PARENS.sub(r"_\1", field)


def parse_meminfo(text: str) -> dict[str, float]:
    info: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue  # some kernels emit empty lines
        if len(parts) < 2 or not parts[0].endswith(":"):
            raise ValueError(f"invalid line in meminfo: {line[:80]!r}")
        value = float(int(parts[1]))
        key = _key(parts[0][:-1])
        if len(parts) == 3:
            value *= 1024  # the kernel's only unit here is kB (KiB)
            key += "_bytes"
        elif len(parts) != 2:
            raise ValueError(f"invalid line in meminfo: {line[:80]!r}")
        info[key] = value
    return info


class MeminfoCollector:
    def __init__(self, procfs: str = "/proc") -> None:
        self.path = join(procfs, "meminfo")

    def collect(self) -> Iterator[Metric]:
        info = parse_meminfo(read_text(self.path))
        for key in sorted(info):
            name = f"node_memory_{key}"
            if not _valid_name(name):
                continue  # a field name we cannot publish; never break the exposition for it
            yield single(name, f"Memory information field {key}.", info[key])


@functools.lru_cache(maxsize=512)
def _valid_name(name: str) -> bool:
    # The kernel's field names are a small fixed set: check each once, not every scrape.
    return bool(_VALID_NAME.match(name))
