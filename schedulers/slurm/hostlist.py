"""Slurm host lists (``gpu-node[01-03,7],login1``) and bracketed file lists (``/dev/nvidia[0-3]``).

The same syntax serves both: Slurm expands ``File=/dev/nvidia[0-3]`` in gres.conf with its host
list code, zero padding included (``node[08-10]`` → node08, node09, node10).
"""

from __future__ import annotations

import re

from jobsight.errors import InvalidInput

_MAX_EXPANDED = 65536
_RANGE = re.compile(r"^(?P<lo>\d+)(?:-(?P<hi>\d+))?$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise InvalidInput(f"unbalanced ']' in host list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise InvalidInput(f"unbalanced '[' in host list {text!r}")
    parts.append(text[start:])
    return [p for p in (part.strip() for part in parts) if p]


def _expand_one(item: str, out: list[str]) -> None:
    open_at = item.find("[")
    if open_at < 0:
        out.append(item)
        return
    close_at = item.find("]", open_at)
    prefix, body, rest = item[:open_at], item[open_at + 1:close_at], item[close_at + 1:]
    for spec in body.split(","):
        match = _RANGE.match(spec.strip())
        if not match:
            raise InvalidInput(f"bad range {spec!r} in host list item {item!r}")
        lo_text, hi_text = match["lo"], match["hi"] or match["lo"]
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo or hi - lo >= _MAX_EXPANDED:
            raise InvalidInput(f"bad range {spec!r} in host list item {item!r}")
        width = len(lo_text) if lo_text.startswith("0") else 0
        for n in range(lo, hi + 1):
            _expand_one(f"{prefix}{n:0{width}d}{rest}", out)
            if len(out) > _MAX_EXPANDED:
                raise InvalidInput(f"host list expands to more than {_MAX_EXPANDED} names")


def expand(text: str) -> list[str]:
    """Every name in a Slurm host list, in order."""
    out: list[str] = []
    for item in _split_top_level(text):
        _expand_one(item, out)
    return out
