"""Every PromQL query of a dashboard - panel targets, annotation queries and query variables - with
the template variables filled in the way Grafana's Prometheus datasource fills them, so that tests
(and the end-to-end check) can run each one against a real Prometheus."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from jobsight.errors import InvalidInput

# Grafana's built-in interval variables, with values that suit a scrape interval of 15 s or less.
BUILTIN_DEFAULTS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_REFERENCE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<expr>.*),\s*(?P<label>\w+)\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")

VariableValue = str | Sequence[str]


class PanelQuery(NamedTuple):
    """``title`` names where the query comes from: the panel title, ``annotation: <name>`` or
    ``variable: <name>``."""

    title: str
    expr: str


def iter_queries(dashboard: Mapping[str, Any], variables: Mapping[str, VariableValue]) -> list[PanelQuery]:
    """Every query of ``dashboard`` (Grafana JSON) with ``$var`` / ``${var}`` / ``[[var]]`` replaced
    by ``variables`` (plus Grafana's ``$__rate_interval``, ``$__range``... defaults, which
    ``variables`` may override). Multi-value and include-all variables are regex-escaped and joined
    as ``(a|b)``, as Grafana does; every value is escaped for a PromQL string literal.

    Raises InvalidInput naming a variable a query uses but ``variables`` does not give."""
    definitions = {str(v.get("name")): v for v in dashboard.get("templating", {}).get("list", [])}
    found: list[PanelQuery] = []
    for title, raw in _raw_queries(dashboard):
        found.append(PanelQuery(title, _interpolate(raw, title, variables, definitions)))
    return found


def _raw_queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in _all_panels(dashboard.get("panels", [])):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if expr and not target.get("hide"):
                yield str(panel.get("title", "")), str(expr)
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("expr") or (annotation.get("target") or {}).get("expr")
        if expr:
            yield f"annotation: {annotation.get('name', '')}", str(expr)
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, Mapping):
            query = query.get("query")
        expr = _variable_expr(str(query or ""))
        if expr:
            yield f"variable: {variable.get('name', '')}", expr


def _all_panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels") or [])


def _variable_expr(query: str) -> str | None:
    """The PromQL inside a variable query: ``label_values(<expr>, label)`` and
    ``query_result(<expr>)`` have one; ``label_values(label)`` and ``metrics(...)`` do not."""
    for pattern in (_LABEL_VALUES, _QUERY_RESULT):
        match = pattern.match(query)
        if match:
            return match.group("expr").strip()
    return None


def _interpolate(
    expr: str,
    title: str,
    variables: Mapping[str, VariableValue],
    definitions: Mapping[str, Mapping[str, Any]],
) -> str:
    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name in variables:
            value = variables[name]
        elif name in BUILTIN_DEFAULTS:
            return BUILTIN_DEFAULTS[name]
        else:
            raise InvalidInput(f"query of {title!r} uses ${name}, but no value was given for it")
        if name.startswith("__"):
            return str(value)
        definition = definitions.get(name, {})
        return _format_value(value, regex=bool(definition.get("multi") or definition.get("includeAll")))

    return _REFERENCE.sub(replace, expr)


def _format_value(value: VariableValue, *, regex: bool) -> str:
    values = [value] if isinstance(value, str) else list(value)
    if not values:
        raise InvalidInput("a template variable was given an empty list of values")
    if regex:
        escaped = [_REGEX_SPECIAL.sub(r"\\\1", v) for v in values]
        text = escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    elif len(values) == 1:
        text = values[0]
    else:
        raise InvalidInput(f"several values {values!r} given for a single-value variable")
    # The value lands inside a double-quoted PromQL string.
    return text.replace("\\", "\\\\").replace('"', '\\"')
