"""Include/exclude regex filters with node_exporter's semantics (``device_filter.go``)."""

from __future__ import annotations

import re

from jobsight.errors import ConfigError


class NameFilter:
    """``exclude`` drops matching names; ``include``, when given, keeps only matching names.
    node_exporter refuses both at once, and so do we."""

    def __init__(self, exclude: str | None = None, include: str | None = None, what: str = "device") -> None:
        if exclude and include:
            raise ConfigError(f"{what}: the include and exclude filters are mutually exclusive")
        self._exclude = _compile(exclude, what)
        self._include = _compile(include, what)

    def ignored(self, name: str) -> bool:
        if self._exclude is not None and self._exclude.search(name):
            return True
        return self._include is not None and not self._include.search(name)


def _compile(pattern: str | None, what: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{what} filter {pattern!r} is not a valid regex: {exc}") from exc
