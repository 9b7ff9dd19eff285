"""Every PromQL query of a dashboard - panel targets, annotation queries and query variables - with
the template variables filled in the way Grafana's Prometheus datasource fills them, so that tests
(and the end-to-end check) can run each one against a real Prometheus."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
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
# Grafana's value for "All" (what `var-x=$__all` in a URL or a saved "All" selection holds).
ALL = "$__all"
# One instant query: PromQL in, Prometheus' `data.result` list out.
InstantQuery = Callable[[str], Sequence[Mapping[str, Any]]]


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

    A variable that is not given, or is given as ``$__all``, and whose "All" has an ``allValue``
    (``.*``, ``.+``) is filled with that regex unescaped, as Grafana does. Hidden variables without
    one (the job dashboard's host and GPU lists) need values: see :func:`resolve_variables`.

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
        definition = definitions.get(name, {})
        all_value = definition.get("allValue") if definition.get("includeAll") else None
        if name in variables:
            value = variables[name]
        elif name in BUILTIN_DEFAULTS:
            return BUILTIN_DEFAULTS[name]
        elif all_value and _current_value(definition) == ALL:
            return str(all_value)
        else:
            raise InvalidInput(f"query of {title!r} uses ${name}, but no value was given for it")
        if name.startswith("__"):
            return str(value)
        if value == ALL or (not isinstance(value, str) and list(value) == [ALL]):
            if not all_value:
                raise InvalidInput(f"${name} is All, which has no allValue: give its values")
            return str(all_value)
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


def _current_value(definition: Mapping[str, Any]) -> object:
    current = definition.get("current") or {}
    value = current.get("value") if isinstance(current, Mapping) else None
    return value[0] if isinstance(value, list) and len(value) == 1 else value


_SELECTOR = re.compile(r"^\s*[A-Za-z_:][\w:]*\s*(\{.*\})?\s*$|^\s*\{.*\}\s*$", re.DOTALL)


def resolve_variables(
    dashboard: Mapping[str, Any], variables: Mapping[str, VariableValue], instant: InstantQuery
) -> dict[str, VariableValue]:
    """``variables`` plus the values Grafana would compute for the query variables not given, in
    dashboard order, each from an instant query at the end of the time range (``instant``; give
    ``__range`` etc. in ``variables`` to match the range):

    - ``query_result(<expr>)``: each result rendered as Grafana does (``name{a="b"} value ts``),
      the variable's ``/regex/`` applied (its first group, else the whole match);
    - ``label_values(<selector>, label)``: the label's values among the selector's series that had
      samples in ``$__range`` (Grafana asks the series API over the range);
    - a saved "All" with an ``allValue`` stays ``$__all``.

    A variable whose queries give nothing gets an empty list (Grafana shows "None")."""
    resolved: dict[str, VariableValue] = dict(variables)
    definitions = [v for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "query"]
    by_name = {str(v.get("name")): v for v in dashboard.get("templating", {}).get("list", [])}
    for definition in definitions:
        name = str(definition.get("name"))
        if name in resolved:
            continue
        if definition.get("includeAll") and definition.get("allValue") and _current_value(definition) == ALL:
            resolved[name] = ALL  # a saved "All" with an allValue stays All: no query needed
            continue
        query = definition.get("query")
        if isinstance(query, Mapping):
            query = query.get("query")
        text = str(query or "")
        values: list[str] = []
        result_match = _QUERY_RESULT.match(text)
        label_match = _LABEL_VALUES.match(text)
        if result_match:
            expr = _interpolate(result_match.group("expr"), f"variable: {name}", resolved, by_name)
            lines = [_result_text(item) for item in instant(expr)]
            values = _apply_regex(lines, str(definition.get("regex") or ""))
        elif label_match and _SELECTOR.match(label_match.group("expr")):
            label = label_match.group("label")
            selector = _interpolate(label_match.group("expr"), f"variable: {name}", resolved, by_name)
            expr = f"count by ({label}) (last_over_time({selector}[{resolved.get('__range', '1h')}]))"
            values = sorted({str(item.get("metric", {}).get(label, "")) for item in instant(expr)} - {""})
        else:
            raise InvalidInput(f"variable ${name}: cannot resolve query {text!r}; give its value")
        resolved[name] = values
    return resolved


def _result_text(item: Mapping[str, Any]) -> str:
    metric = dict(item.get("metric") or {})
    name = metric.pop("__name__", "")
    labels = ",".join(f'{key}="{value}"' for key, value in sorted(metric.items()))
    timestamp, value = (item.get("value") or [0, ""])[:2]
    return f"{name}{{{labels}}} {value} {int(float(timestamp) * 1000)}"


def _apply_regex(lines: Sequence[str], regex: str) -> list[str]:
    if not regex:
        return sorted(set(lines))
    pattern = re.compile(regex[1:regex.rindex("/")] if regex.startswith("/") else regex)
    found: set[str] = set()
    for line in lines:
        match = pattern.search(line)
        if match:
            found.add(match.group(1) if match.groups() else match.group(0))
    return sorted(found)
