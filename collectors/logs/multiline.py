"""Joining multi-line blocks (Python tracebacks, NCCL/CUDA error blocks, torchrun's failure report)
into one record.

State is kept per (stream, rank), because launchers interleave the output of many ranks in one
file and each rank's traceback must be rebuilt from its own lines (research note §1.5). The rank
prefix is stripped by the decoder before a line gets here, so ``[rank3]:   File ...`` is seen as
an indented continuation.

A line continues the open block when:
- the block is inside a traceback and has not reached the exception line yet (everything until a
  non-indented ``pkg.ExcType: message`` line belongs to it);
- the block has seen a traceback and the line is blank, a chained-exception sentence, or the
  ``Traceback (most recent call last):`` that follows such a sentence;
- the line matches a continuation pattern: indented text, the CUDA/NCCL hint lines, C++ frames,
  the ``=====``/``-----`` rules and headings of torchrun's ChildFailedError report, and the NVRM
  "fallen off the bus" sentence the driver splits over three kernel lines.

Blocks are bounded by ``max_lines`` and ``max_bytes``; a block with no new line for
``flush_timeout`` seconds is emitted by :meth:`Multiline.expire`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from collectors.logs.parsing import Line

DEFAULT_CONTINUATION_PATTERNS: tuple[str, ...] = (
    r"[ \t]+\S",
    r"CUDA kernel errors might be asynchronously reported",
    r"For debugging consider passing CUDA_LAUNCH_BLOCKING",
    r"Compile with .TORCH_USE_CUDA_DSA. to enable",
    r"nccl(?:System|Internal|UnhandledCuda|Remote|InvalidUsage)Error",
    r"Last error:",
    r"Exception raised from ",
    r"frame #\d+:",
    r"Exception \(either an error or timeout\) detected by watchdog",
    r"Some NCCL operations have failed or timed out",
    r"To avoid data inconsistency, we are taking the entire process down",
    r"terminate called after throwing an instance of",
    r"  what\(\):",
    r"={20,}\s*$",
    r"-{20,}\s*$",
    r"\S+ FAILED\s*$",
    r"Failures:\s*$",
    r"<NO_OTHER_FAILURES>",
    r"Root Cause \(first observed failure\):\s*$",
    r"\[\d+\]:\s*$",
    r"NVRM: \(PCI ID: ",
    r"NVRM: fallen off the bus",
)
_TRACEBACK_START = re.compile(r"Traceback \(most recent call last\):")
_CHAINED = re.compile(
    r"(?:During handling of the above exception, another exception occurred:"
    r"|The above exception was the direct cause of the following exception:)\s*$"
)
# The exception line that ends a traceback ("torch.OutOfMemoryError: CUDA out of memory...",
# "KeyboardInterrupt"): Fluent Bit's python parser uses the same shape.
_EXCEPTION_LINE = re.compile(r"(?:[^\s.():]+\.)*[^\s.():]+(?::|\s*$)")


@dataclass(slots=True)
class Block:
    """A finished record: one line or a joined block."""

    offset: int
    end: int
    text: str
    stream: str | None
    timestamp: float | None
    level: str | None
    rank: int | None
    truncated: bool
    lines: int


@dataclass(slots=True)
class _Group:
    first: Line
    texts: list[str]
    end: int
    size: int
    last_seen: float
    in_traceback: bool = False
    traceback_seen: bool = False
    chained: bool = False  # saw "During handling of the above exception ..." : a Traceback follows
    truncated: bool = False
    levels: list[str] = field(default_factory=list)

    def block(self) -> Block:
        first = self.first
        text = first.text if len(self.texts) == 1 else "\n".join(self.texts)
        return Block(first.offset, self.end, text, first.stream, first.timestamp, first.level, first.rank,
                     self.truncated, len(self.texts))


def single(line: Line) -> Block:
    return Block(line.offset, line.end, line.text, line.stream, line.timestamp, line.level, line.rank,
                 line.truncated, 1)


class Multiline:
    def __init__(
        self,
        *,
        enabled: bool = True,
        max_lines: int = 500,
        max_bytes: int = 1024 * 1024,
        flush_timeout: float = 2.0,
        extra_patterns: Sequence[str] = (),
        clock: Callable[[], float],
    ) -> None:
        self.enabled = enabled
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.flush_timeout = flush_timeout
        self.clock = clock
        patterns = [*DEFAULT_CONTINUATION_PATTERNS, *extra_patterns]
        self._continuation = re.compile("|".join(f"(?:{p})" for p in patterns))
        self._groups: dict[tuple[str | None, int | None], _Group] = {}
        self.truncated_blocks = 0

    def push(self, line: Line) -> list[Block]:
        if not self.enabled or line.structured:
            return [single(line)]
        key = (line.stream, line.rank)
        group = self._groups.get(key)
        text = line.text
        out: list[Block] = []
        if group is not None:
            if self._continues(group, text):
                if len(group.texts) >= self.max_lines or group.size + len(text) + 1 > self.max_bytes:
                    # Over the bound: the block ends here, marked truncated; the line starts anew.
                    group.truncated = True
                    self.truncated_blocks += 1
                    out.append(group.block())
                    self._groups[key] = self._start(line)
                    return out
                group.texts.append(text)
                group.end = line.end
                group.size += len(text) + 1
                group.last_seen = self.clock()
                if line.truncated:
                    group.truncated = True
                if group.first.level is None and line.level is not None:
                    group.first.level = line.level
                return out
            out.append(group.block())
        self._groups[key] = self._start(line)
        return out

    def _start(self, line: Line) -> _Group:
        group = _Group(line, [line.text], line.end, len(line.text), self.clock(), truncated=line.truncated)
        if _TRACEBACK_START.search(line.text):
            group.in_traceback = group.traceback_seen = True
        return group

    def _continues(self, group: _Group, text: str) -> bool:
        if group.in_traceback:
            if text[:1] not in (" ", "\t") and text and _EXCEPTION_LINE.match(text) \
                    and not _TRACEBACK_START.match(text):
                group.in_traceback = False
            return True
        if group.traceback_seen:
            if not text.strip():
                return True
            if _CHAINED.match(text):
                group.chained = True
                return True
            if _TRACEBACK_START.match(text):
                # Only a chained exception continues the block; a second traceback of the same rank
                # right after the first is a new record.
                if group.chained:
                    group.chained = False
                    group.in_traceback = True
                    return True
                return False
        elif _TRACEBACK_START.match(text):
            return False
        return self._continuation.match(text) is not None

    def expire(self, now: float | None = None) -> list[Block]:
        """Blocks that got no line for ``flush_timeout`` seconds."""
        if not self._groups:
            return []
        now = self.clock() if now is None else now
        out = []
        for key, group in list(self._groups.items()):
            if now - group.last_seen >= self.flush_timeout:
                out.append(group.block())
                del self._groups[key]
        out.sort(key=lambda b: b.offset)
        return out

    def finish(self) -> list[Block]:
        out = [group.block() for group in self._groups.values()]
        self._groups.clear()
        out.sort(key=lambda b: b.offset)
        return out

    def pending_offset(self) -> int | None:
        if not self._groups:
            return None
        return min(group.first.offset for group in self._groups.values())

    def pending_count(self) -> int:
        return len(self._groups)
