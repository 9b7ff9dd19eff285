"""uname: ``node_uname_info{sysname,release,version,machine,nodename,domainname} 1``.

Like node_exporter, this is the uname(2) of the machine the exporter runs on, not something read
under ``--path.procfs``; ``uname`` is injectable for tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric

from exporters.node._files import read_text


class Uname(NamedTuple):
    sysname: str
    nodename: str
    release: str
    version: str
    machine: str
    domainname: str


def system_uname() -> Uname:
    u = os.uname()
    # os.uname() has no domainname; the kernel exposes the same UTS field here.
    try:
        domain = read_text("/proc/sys/kernel/domainname").strip()
    except OSError:
        domain = "(none)"
    return Uname(u.sysname, u.nodename, u.release, u.version, u.machine, domain)


class UnameCollector:
    def __init__(self, uname: Callable[[], Uname] = system_uname) -> None:
        self.uname = uname

    def collect(self) -> Iterator[Metric]:
        u = self.uname()
        family = GaugeMetricFamily(
            "node_uname_info",
            "Labeled system information as provided by the uname system call.",
            labels=["sysname", "release", "version", "machine", "nodename", "domainname"],
        )
        family.add_metric([u.sysname, u.release, u.version, u.machine, u.nodename, u.domainname], 1.0)
        yield family
