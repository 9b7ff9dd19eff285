"""vmstat: ``node_vmstat_<field>`` (untyped, as node_exporter publishes them) for the fields of
``<procfs>/vmstat`` matching a regex; node_exporter's default keeps ``oom_kill``, ``pgpg*``,
``pswp*`` and the page-fault counters."""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client.core import Metric

from exporters.node._families import single
from exporters.node._files import join, read_text
from jobsight.errors import ConfigError

DEFAULT_FIELDS = r"^(oom_kill|pgpg|pswp|pg.*fault).*"


class VmstatCollector:
    def __init__(self, procfs: str = "/proc", fields: str = DEFAULT_FIELDS) -> None:
        self.path = join(procfs, "vmstat")
        try:
            self.fields = re.compile(fields)
        except re.error as exc:
            raise ConfigError(f"--collector.vmstat.fields {fields!r} is not a valid regex: {exc}") from exc
        # /proc/vmstat has ~180 fixed field names; remember the regex's answer for each, bounded
        # in case a kernel ever produced unbounded names.
        self._wanted: dict[str, bool] = {}

    def collect(self) -> Iterator[Metric]:
        for line in read_text(self.path).splitlines():
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{self.path}: invalid line {line[:80]!r}")
            name, value = parts
            wanted = self._wanted.get(name)
            if wanted is None:
                wanted = bool(self.fields.search(name))
                if len(self._wanted) < 4096:
                    self._wanted[name] = wanted
            if wanted:
                # node_exporter publishes these untyped ("unknown" in prometheus_client).
                yield single(f"node_vmstat_{name}", f"/proc/vmstat information field {name}.",
                             float(int(value)), "unknown")
