"""Event rules: turn a log record's message into an event (kind, severity, fields).

A rules file is YAML with a top-level ``rules`` list; each rule has ``kind``, ``severity``
(info|warning|error|critical), ``patterns`` (regexes; the first that matches decides and its named
groups become fields), optional ``extract`` (more regexes whose named groups are added when they
match), optional ``contains`` (substrings: the regexes run only when one occurs, which keeps the
cost per line low), optional ``sources`` (file|cri|docker|kmsg) and optional ``severity_from:
xid_table``, which takes the severity of each event from the one XID table (``jobsight.xid``: the
code in the ``xid`` field, refined by the line for 154's recovery action and 144-150's fatal flag)
and adds the fields ``xid_class`` (and ``recovery_action`` for 154). The defaults ship as package
data (``default_rules.yaml``, next to this module, where the ``*.yaml`` package-data glob of
pyproject.toml includes it); user files are tried first, so a user rule can override a default.

Hardware kinds (:data:`jobsight.trust.HARDWARE_KINDS`) are believed only from the kernel's
log: for any other source their rules are skipped (the next rule may still match, as an
application event) and the refusal is counted (:attr:`RuleSet.refused`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobsight import xid as xid_table
from jobsight.config import load_yaml_file, parse_model
from jobsight.errors import ConfigError
from jobsight.trust import HARDWARE_KINDS, TRUSTED_SOURCES

Severity = Literal["info", "warning", "error", "critical"]
SourceKind = Literal["file", "cri", "docker", "kmsg"]
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    severity: Severity = "error"
    patterns: list[str] = Field(min_length=1)
    extract: list[str] = Field(default_factory=list)
    contains: list[str] = Field(default_factory=list)
    sources: list[SourceKind] = Field(default_factory=list)
    severity_from: Literal["xid_table"] | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if not _KIND_RE.match(value):
            raise ValueError("kind must be lower_snake_case (a-z, 0-9, _), at most 64 characters")
        return value

    @field_validator("patterns", "extract")
    @classmethod
    def _regexes(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return values


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[RuleModel] = Field(default_factory=list)


@dataclass(frozen=True)
class EventMatch:
    kind: str
    severity: str
    fields: dict[str, str]


@dataclass(frozen=True)
class Rule:
    kind: str
    severity: str
    patterns: tuple[re.Pattern[str], ...]
    extract: tuple[re.Pattern[str], ...]
    contains: tuple[str, ...]
    sources: frozenset[str]
    severity_from: str | None = None

    @classmethod
    def from_model(cls, model: RuleModel) -> Rule:
        return cls(
            kind=model.kind, severity=model.severity,
            patterns=tuple(re.compile(p) for p in model.patterns),
            extract=tuple(re.compile(p) for p in model.extract),
            contains=tuple(model.contains), sources=frozenset(model.sources),
            severity_from=model.severity_from,
        )

    def match(self, message: str) -> dict[str, str] | None:
        for pattern in self.patterns:
            found = pattern.search(message)
            if found is None:
                continue
            fields = {k: v for k, v in found.groupdict().items() if v is not None}
            for extra in self.extract:
                more = extra.search(message)
                if more is not None:
                    for key, value in more.groupdict().items():
                        if value is not None:
                            fields.setdefault(key, value)
            return fields
        return None


def default_rules_text() -> str:
    return resources.files("collectors.logs").joinpath("default_rules.yaml").read_text(encoding="utf-8")


def load_rules_file(path: Path | str) -> list[Rule]:
    model = parse_model(RulesFile, load_yaml_file(path), str(path))
    return [Rule.from_model(rule) for rule in model.rules]


def default_rules() -> list[Rule]:
    import yaml

    model = parse_model(RulesFile, yaml.safe_load(default_rules_text()), "default rules")
    return [Rule.from_model(rule) for rule in model.rules]


class RuleSet:
    """Rules in order; :meth:`match` returns the first event a message makes, or None.

    Rules whose ``contains`` strings all miss are skipped without running a regex: with ~1 % of
    lines being events, that is the difference between one substring scan and fifteen regexes
    per line.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        literals = sorted({s for rule in self.rules for s in rule.contains}, key=len, reverse=True)
        # One regex over every rule's `contains` strings: a line that has none of them (the 99 %)
        # costs one search (about 1 µs) instead of a substring scan per rule.
        self._prefilter = re.compile("|".join(re.escape(s) for s in literals)) if literals else None
        self._unfiltered = any(not rule.contains for rule in self.rules)
        # (source, kind) → hardware events a user-writable source claimed and was not believed
        # for; the collector moves these into its metrics.
        self.refused: dict[tuple[str, str], int] = {}

    @classmethod
    def build(cls, files: Iterable[Path | str] = (), use_defaults: bool = True,
              disable: Iterable[str] = ()) -> RuleSet:
        rules: list[Rule] = []
        for file in files:
            rules.extend(load_rules_file(file))
        if use_defaults:
            rules.extend(default_rules())
        disabled = set(disable)
        known = {rule.kind for rule in rules}
        unknown = disabled - known
        if unknown:
            raise ConfigError(f"rules.disable: unknown event kind(s) {sorted(unknown)}; "
                              f"known: {sorted(known)}")
        return cls([rule for rule in rules if rule.kind not in disabled])

    def match(self, message: str, source: str = "file", rank: int | None = None) -> EventMatch | None:
        if not self._unfiltered and (self._prefilter is None or self._prefilter.search(message) is None):
            return None
        refused: str | None = None
        for rule in self.rules:
            if rule.contains and not any(s in message for s in rule.contains):
                continue
            if rule.sources and source not in rule.sources:
                continue
            fields = rule.match(message)
            if fields is None:
                continue
            if rule.kind in HARDWARE_KINDS and source not in TRUSTED_SOURCES:
                # A user can write this text; only the kernel's log is believed about hardware.
                refused = refused or rule.kind
                continue
            if refused is not None:
                self._refuse(source, refused)
            # The rank from a launcher prefix ([rank3]:) is the best we have when the text has none.
            if rank is not None and "rank" not in fields:
                fields["rank"] = str(rank)
            severity = rule.severity
            if rule.severity_from == "xid_table" and fields.get("xid", "").isdigit():
                severity = _xid_severity(int(fields["xid"]), message, fields)
            return EventMatch(rule.kind, severity, fields)
        if refused is not None:
            self._refuse(source, refused)
        return None

    def _refuse(self, source: str, kind: str) -> None:
        key = (source, kind)
        self.refused[key] = self.refused.get(key, 0) + 1


def _xid_severity(code: int, message: str, fields: dict[str, str]) -> str:
    """Severity and class of one XID line from the one table; 154 also names its recovery action."""
    fields["xid_class"] = xid_table.class_of(code, message)
    if code == 154:
        action = xid_table.recovery_action(message)
        if action is not None:
            fields["recovery_action"] = xid_table.RECOVERY_ACTIONS.get(action, str(action))
    return xid_table.severity_of(code, message)


def take_refused(rules: RuleSet) -> dict[tuple[str, str], int]:
    """The refusal counts since the last call, reset."""
    out, rules.refused = rules.refused, {}
    return out


def kinds(rules: RuleSet) -> Mapping[str, str]:
    """kind → severity of its first rule (for documentation and tests)."""
    out: dict[str, str] = {}
    for rule in rules.rules:
        out.setdefault(rule.kind, rule.severity)
    return out
