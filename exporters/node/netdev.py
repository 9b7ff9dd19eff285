"""netdev: ``node_network_<direction>_<stat>_total{device}`` from ``<procfs>/net/dev``.

Names are node_exporter's non-detailed ("legacy") ones: ``receive_errs``, ``receive_drop``,
``transmit_errs``, ``transmit_drop``, ``transmit_colls``, ... node_exporter 1.5 reads the same
numbers over netlink by default; ``--no-collector.netdev.netlink`` makes it read this file, which
is what a ``--path.procfs`` root can be compared with.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporters.node._families import Family
from exporters.node._files import join, read_text
from exporters.node.filters import NameFilter

_RECEIVE = ("bytes", "packets", "errs", "drop", "fifo", "frame", "compressed", "multicast")
_TRANSMIT = ("bytes", "packets", "errs", "drop", "fifo", "colls", "carrier", "compressed")
_KEYS = tuple(f"receive_{s}" for s in _RECEIVE) + tuple(f"transmit_{s}" for s in _TRANSMIT)


def parse_net_dev(text: str) -> dict[str, list[int]]:
    """Interface → its 16 counters, in the order of ``_KEYS``. The first two lines are headers."""
    stats: dict[str, list[int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"invalid line in net/dev: {line[:80]!r}")
        values = [int(v) for v in rest.split()]
        if len(values) != len(_KEYS):
            raise ValueError(f"net/dev: {name.strip()} has {len(values)} fields, expected {len(_KEYS)}")
        stats[name.strip()] = values
    return stats


class NetdevCollector:
    def __init__(self, procfs: str = "/proc", device_filter: NameFilter | None = None) -> None:
        self.path = join(procfs, "net", "dev")
        self.filter = device_filter or NameFilter()

    def collect(self) -> Iterator[Metric]:
        stats = parse_net_dev(read_text(self.path))
        families = [
            Family(f"node_network_{k}_total", f"Network device statistic {k}.", "counter") for k in _KEYS
        ]
        for device in sorted(stats):
            if self.filter.ignored(device):
                continue
            labels = {"device": device}
            for family, value in zip(families, stats[device], strict=True):
                family.add(labels, float(value))
        yield from families
