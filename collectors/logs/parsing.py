"""Line decoding: raw bytes of one line → text with its own time, level, stream and rank.

Formats:
- ``plain`` text; ``json`` lines (``message``/``msg``/``log`` holds the text); ``auto`` tries JSON
  for lines that start with ``{``.
- ``cri`` (containerd/CRI-O): ``<RFC3339Nano> <stdout|stderr> <P|F> <message>``; ``P`` fragments
  are joined with the following fragments of the same stream up to the ``F`` one.
- ``docker`` json-file: ``{"log": "...\\n", "stream": "...", "time": "..."}``; a ``log`` without a
  trailing newline is a fragment of a longer line (Docker splits at 16 KiB).

A decoder returns :class:`Line` objects whose ``offset`` is the byte offset of the line's first
byte (for joined fragments: of the first fragment), which is what record ids and checkpoints use.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["auto", "plain", "json"]

_TS_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?(Z|z|[+-]\d\d:?\d\d)?"
)
_LEVEL_RE = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\b")
# glog / c10 style: "[E1206 18:44:12.715 ProcessGroupNCCL.cpp:607]" or "E1206 18:44:12.715 ..."
_GLOG_RE = re.compile(r"\[?([EWIF])\d{4} \d\d:\d\d:\d\d")
_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "WARN": "warning", "ERROR": "error",
           "CRITICAL": "critical", "FATAL": "critical", "E": "error", "W": "warning", "I": "info",
           "F": "critical"}
DEFAULT_RANK_PREFIX = r"^(?:\d+: )?(?:[^\s\[]+ )?(?:\[default\d+\]:)?\[rank(?P<rank>\d+)\]: ?"


@dataclass(slots=True)
class Line:
    offset: int
    end: int
    text: str
    stream: str | None = None
    timestamp: float | None = None
    level: str | None = None
    rank: int | None = None
    structured: bool = False  # a JSON record: already complete, never joined by multiline
    truncated: bool = False


class TimestampParser:
    """ISO 8601 / RFC 3339 → unix seconds; naive times are taken as UTC. The date-and-second part
    is cached, since consecutive lines mostly share it."""

    def __init__(self) -> None:
        self._cache_key = ""
        self._cache_value = 0.0

    def parse(self, text: str, anchored: bool = True) -> float | None:
        found = _TS_RE.match(text) if anchored else _TS_RE.search(text, 0, 64)
        if found is None:
            return None
        year, month, day, hour, minute, second, fraction, zone = found.groups()
        key = text[found.start():found.start() + 19]
        if key != self._cache_key:
            try:
                base = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second)))
            except (ValueError, OverflowError):
                return None
            if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31 and int(hour) < 24):
                return None
            self._cache_key, self._cache_value = key, float(base)
        value = self._cache_value
        if fraction:
            value += int(fraction) / 10 ** len(fraction)
        if zone and zone not in ("Z", "z"):
            sign = 1 if zone[0] == "+" else -1
            digits = zone[1:].replace(":", "")
            value -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
        return value


def detect_level(text: str) -> str | None:
    found = _LEVEL_RE.search(text, 0, 96)
    if found is not None:
        return _LEVELS[found.group(1)]
    glog = _GLOG_RE.match(text)
    if glog is not None:
        return _LEVELS[glog.group(1)]
    return None


def clean_text(raw: bytes) -> str:
    """Bytes → text that is always valid: invalid UTF-8 becomes U+FFFD, and so do NUL bytes,
    which would otherwise cut the message short in C-string consumers."""
    text = raw.decode("utf-8", "replace")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if text.endswith("\r"):
        text = text[:-1]
    return text


_MESSAGE_KEYS = ("message", "msg", "log", "text")
_LEVEL_KEYS = ("level", "levelname", "severity", "lvl", "log.level")
_TIME_KEYS = ("@timestamp", "timestamp", "time", "ts", "asctime")
_RANK_KEYS = ("rank", "global_rank")


def _number_time(value: float) -> float:
    # Epoch milliseconds (JS, Java loggers) vs seconds: anything past year 33658 in seconds is ms.
    return value / 1000.0 if value > 1e12 else value


class TextDecoder:
    """Plain text and JSON lines."""

    def __init__(self, fmt: Format = "auto", rank_prefix: str | None = DEFAULT_RANK_PREFIX) -> None:
        self.fmt = fmt
        self.ts = TimestampParser()
        self.rank_re = re.compile(rank_prefix) if rank_prefix else None

    def decode(self, raw: bytes, offset: int, end: int, truncated: bool = False) -> Line | None:
        text = clean_text(raw)
        if self.fmt != "plain" and text[:1] == "{" and not truncated:
            line = self._json(text, offset, end)
            if line is not None:
                return line
            if self.fmt == "json":
                return Line(offset, end, text, level=None)  # not JSON after all: keep it as text
        return self.plain(text, offset, end, truncated)

    def plain(self, text: str, offset: int, end: int, truncated: bool = False,
              stream: str | None = None, timestamp: float | None = None) -> Line:
        rank = None
        if self.rank_re is not None and text.find("[rank", 0, 64) >= 0:
            found = self.rank_re.match(text)
            if found is not None:
                rank = int(found.group("rank"))
                text = text[found.end():]
        if timestamp is None and text[:1].isdigit():
            timestamp = self.ts.parse(text)
        return Line(offset, end, text, stream=stream, timestamp=timestamp, level=detect_level(text),
                    rank=rank, truncated=truncated)

    def _json(self, text: str, offset: int, end: int) -> Line | None:
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        message = _first(obj, _MESSAGE_KEYS)
        level = _first(obj, _LEVEL_KEYS)
        when = _first(obj, _TIME_KEYS)
        rank = _first(obj, _RANK_KEYS)
        timestamp: float | None = None
        if isinstance(when, int | float) and not isinstance(when, bool):
            timestamp = _number_time(float(when))
        elif isinstance(when, str):
            timestamp = self.ts.parse(when, anchored=False)
        rank_value = rank if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0 else None
        if isinstance(rank, str) and rank.isdigit():
            rank_value = int(rank)
        return Line(
            offset, end, message.rstrip("\n") if isinstance(message, str) else text,
            timestamp=timestamp, level=str(level).lower()[:16] if isinstance(level, str) else None,
            rank=rank_value, structured=True,
        )


def _first(obj: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in obj:
            return obj[key]
    return None


class _FragmentJoiner:
    """Container runtimes split long lines into fragments (CRI ``P`` lines, docker ``log`` without a
    newline); this joins them back per stream, bounded by ``max_line_bytes``. A record starts at its
    first fragment's offset, so a checkpoint never lands inside a half-joined line."""

    def __init__(self, text: TextDecoder, max_line_bytes: int) -> None:
        self.text = text
        self.max_line_bytes = max_line_bytes
        # stream → (offset of the first fragment, timestamp, parts, size)
        self._partial: dict[str, tuple[int, float | None, list[str], int]] = {}

    def add(self, stream: str, piece: str, raw_size: int, *, complete: bool, offset: int, end: int,
            truncated: bool, timestamp: Callable[[], float | None]) -> Line | None:
        """Add one fragment; the joined line once ``complete`` (or over the size bound), else None.
        ``timestamp`` is asked only for a line's first fragment."""
        pending = self._partial.pop(stream, None)
        pieces: list[str]
        if pending is None:
            first_offset, when, pieces, size = offset, timestamp(), [], 0
        else:
            first_offset, when, pieces, size = pending
        pieces.append(piece)
        size += raw_size
        if not complete and size < self.max_line_bytes:
            self._partial[stream] = (first_offset, when, pieces, size)
            return None
        joined = "".join(pieces)
        too_long = len(joined) > self.max_line_bytes
        if too_long:
            joined = joined[: self.max_line_bytes]
        return self.text.plain(joined, first_offset, end, truncated or too_long, stream=stream,
                               timestamp=when)

    def pending_offset(self) -> int | None:
        return min((p[0] for p in self._partial.values()), default=None)

    def finish(self, end: int) -> list[Line]:
        out = []
        for stream, (first_offset, timestamp, pieces, _size) in sorted(self._partial.items(),
                                                                       key=lambda kv: kv[1][0]):
            out.append(self.text.plain("".join(pieces), first_offset, end, stream=stream,
                                       timestamp=timestamp))
        self._partial.clear()
        return out


class CriDecoder:
    """CRI container log lines, with ``P`` fragments joined per stream."""

    def __init__(self, max_line_bytes: int, rank_prefix: str | None = DEFAULT_RANK_PREFIX) -> None:
        self.text = TextDecoder("plain", rank_prefix)
        self._fragments = _FragmentJoiner(self.text, max_line_bytes)
        self.malformed = 0

    def decode(self, raw: bytes, offset: int, end: int, truncated: bool = False) -> Line | None:
        text = clean_text(raw)
        parts = text.split(" ", 3)
        if len(parts) < 3 or parts[1] not in ("stdout", "stderr") or parts[2] not in ("P", "F"):
            self.malformed += 1
            return self.text.plain(text, offset, end, truncated)
        when, stream, tag = parts[0], parts[1], parts[2]
        message = parts[3] if len(parts) == 4 else ""
        return self._fragments.add(stream, message, len(message), complete=tag != "P", offset=offset,
                                   end=end, truncated=truncated, timestamp=lambda: self.text.ts.parse(when))

    def pending_offset(self) -> int | None:
        return self._fragments.pending_offset()

    def finish(self, end: int) -> list[Line]:
        return self._fragments.finish(end)


class DockerDecoder:
    """Docker json-file lines, with fragments (``log`` without a trailing newline) joined."""

    def __init__(self, max_line_bytes: int, rank_prefix: str | None = DEFAULT_RANK_PREFIX) -> None:
        self.text = TextDecoder("plain", rank_prefix)
        self._fragments = _FragmentJoiner(self.text, max_line_bytes)
        self.malformed = 0

    def decode(self, raw: bytes, offset: int, end: int, truncated: bool = False) -> Line | None:
        text = clean_text(raw)
        try:
            obj = json.loads(text) if not truncated else None
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("log"), str):
            self.malformed += 1
            return self.text.plain(text, offset, end, truncated)
        message: str = obj["log"].replace("\x00", "\ufffd")
        stream = obj.get("stream") if obj.get("stream") in ("stdout", "stderr") else "stdout"
        assert isinstance(stream, str)
        when = obj.get("time")
        complete = message.endswith("\n")
        return self._fragments.add(
            stream, message[:-1] if complete else message, len(message), complete=complete, offset=offset,
            end=end, truncated=truncated,
            timestamp=lambda: self.text.ts.parse(when) if isinstance(when, str) else None,
        )

    def pending_offset(self) -> int | None:
        return self._fragments.pending_offset()

    def finish(self, end: int) -> list[Line]:
        return self._fragments.finish(end)


_POD_PATH_RE = re.compile(
    r"/pods/(?P<namespace>[^/_]+)_(?P<pod>[^/_]+)_(?P<pod_uid>[0-9a-fA-F-]{36})/(?P<container>[^/]+)/"
)
_CONTAINER_LINK_RE = re.compile(
    r"/containers/(?P<pod>[^/_]+)_(?P<namespace>[^/_]+)_(?P<container>.+)-(?P<container_id>[0-9a-f]{64})\.log$"
)


def pod_labels(path: str) -> dict[str, str]:
    """Kubernetes metadata from a container log path: ``/var/log/pods/<ns>_<pod>_<uid>/<container>/
    <n>.log`` or the ``/var/log/containers/<pod>_<ns>_<container>-<id>.log`` link name."""
    found = _POD_PATH_RE.search(path)
    if found is not None:
        return {k: v for k, v in found.groupdict().items() if v}
    link = _CONTAINER_LINK_RE.search(path)
    if link is not None:
        return {k: v for k, v in link.groupdict().items() if v}
    return {}
