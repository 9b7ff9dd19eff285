"""``--collector.infiniband.expected-rate [REGEX=]GBPS``: the rate a port should train at.

A link that trained at a lower width or speed (4X -> 2X, NDR -> HDR) still works, at a fraction of
its bandwidth, and nothing on the node says so. ``RDMALinkDegraded`` (alerts/rules/rdma.yaml)
compares ``node_infiniband_rate_bytes_per_second`` with
``jobsight_rdma_port_expected_rate_bytes_per_second`` where it is published, else with the fastest
port of the same board on the host, which a node whose ports all came up slow never shows.

The value is in Gb/s, as ``ibstat`` and sysfs ``rate`` print it (``400`` for 4X NDR); the optional
regular expression picks devices by name, unanchored as ``--collector.infiniband.device-include``
is. The flag may be given several times; the first rule whose expression matches a device wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from jobsight.errors import ConfigError

FLAG = "--collector.infiniband.expected-rate"
# XDR 12X would be 2,400 Gb/s; ten times that is a typo, not a link.
MAX_GBPS = 24_000.0
_BYTES_PER_GBIT = 125_000_000  # as procfs converts sysfs ``rate`` (Gb/s) to bytes per second


@dataclass(frozen=True)
class ExpectedRate:
    devices: re.Pattern[str] | None
    bytes_per_second: int

    def matches(self, device: str) -> bool:
        return self.devices is None or self.devices.search(device) is not None


def parse_expected_rates(values: Sequence[str] | None) -> tuple[ExpectedRate, ...]:
    """Raises :class:`ConfigError` naming the flag and the value for a bad pattern or rate."""
    rules: list[ExpectedRate] = []
    for value in values or ():
        pattern, sep, rate = value.rpartition("=")
        try:
            gbps = float(rate.strip())
        except ValueError:
            raise ConfigError(f"{FLAG}={value!r}: {rate.strip()[:40]!r} is not a rate in Gb/s "
                              "(write e.g. 400 or 'mlx5_[0-7]=400')") from None
        if not 0 < gbps <= MAX_GBPS:
            raise ConfigError(f"{FLAG}={value!r}: {gbps:g} Gb/s is outside 0-{MAX_GBPS:g}")
        devices: re.Pattern[str] | None = None
        if sep:
            if not pattern:
                raise ConfigError(f"{FLAG}={value!r}: empty device expression before '='")
            try:
                devices = re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{FLAG}={value!r}: {pattern!r} is not a valid regular expression: "
                                  f"{exc}") from None
        rules.append(ExpectedRate(devices, int(gbps * _BYTES_PER_GBIT)))
    return tuple(rules)


def expected_rate(rules: Sequence[ExpectedRate], device: str) -> int | None:
    """The first matching rule's rate in bytes per second, or None when no rule names the device."""
    for rule in rules:
        if rule.matches(device):
            return rule.bytes_per_second
    return None
