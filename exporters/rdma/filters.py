"""``--collector.infiniband.device-include`` / ``--collector.infiniband.device-exclude``.

node_exporter semantics: Go regular expressions matched anywhere in the name (unanchored; write
``^mlx5_0$`` for an exact name), and the two flags are mutually exclusive.
"""

from __future__ import annotations

import re

from jobsight.errors import ConfigError


class DeviceFilter:
    def __init__(self, include: str | None = None, exclude: str | None = None) -> None:
        if include and exclude:
            raise ConfigError(
                "--collector.infiniband.device-include and --collector.infiniband.device-exclude "
                "are mutually exclusive"
            )
        self.include = _compile("--collector.infiniband.device-include", include)
        self.exclude = _compile("--collector.infiniband.device-exclude", exclude)

    def allows(self, device: str) -> bool:
        if self.include is not None:
            return self.include.search(device) is not None
        if self.exclude is not None:
            return self.exclude.search(device) is None
        return True


def _compile(flag: str, pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{flag}={pattern!r} is not a valid regular expression: {exc}") from None
