"""iter_queries fills template variables the way Grafana's Prometheus datasource does."""

from __future__ import annotations

from typing import Any

import pytest

from dashboards.queries import PanelQuery, iter_queries, resolve_variables
from jobsight.errors import InvalidInput


def _dashboard(*exprs: str, variables: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "panels": [
            {
                "type": "row",
                "title": "r",
                "panels": [{"title": "inner", "targets": [{"expr": exprs[0], "refId": "A"}]}],
            },
            *({"title": f"p{i}", "targets": [{"expr": e, "refId": "A"}]} for i, e in enumerate(exprs[1:])),
        ],
        "templating": {"list": variables or []},
    }


MULTI = {
    "name": "Hostname",
    "type": "query",
    "multi": True,
    "includeAll": True,
    "query": 'label_values(up{Hostname!=""}, Hostname)',
}
SINGLE = {
    "name": "job_id",
    "type": "query",
    "multi": False,
    "includeAll": False,
    "query": "label_values(x, job_id)",
}


def test_multi_value_variables_are_regex_escaped_and_joined() -> None:
    board = _dashboard('up{Hostname=~"$Hostname"}', variables=[MULTI])
    queries = iter_queries(board, {"Hostname": ["node.1", "node2"]})
    assert queries[0] == PanelQuery("inner", 'up{Hostname=~"(node\\\\.1|node2)"}')
    single = iter_queries(board, {"Hostname": "node2"})
    assert single[0].expr == 'up{Hostname=~"node2"}'


def test_single_value_variables_all_syntaxes_and_escaping() -> None:
    board = _dashboard(
        'a{job_id="$job_id"}', 'b{job_id="${job_id}"}', 'c{job_id="[[job_id]]"}', variables=[SINGLE]
    )
    queries = iter_queries(board, {"job_id": "47"})
    assert [q.expr for q in queries[:3]] == ['a{job_id="47"}', 'b{job_id="47"}', 'c{job_id="47"}']
    tricky = iter_queries(board, {"job_id": 'x"} or up{a="'})
    assert tricky[0].expr == 'a{job_id="x\\"} or up{a=\\""}'
    with pytest.raises(InvalidInput, match="several values"):
        iter_queries(board, {"job_id": ["1", "2"]})


def test_builtin_intervals_have_defaults_and_can_be_overridden() -> None:
    board = _dashboard("rate(x[$__rate_interval])", "increase(x[$__range])")
    assert [q.expr for q in iter_queries(board, {})] == ["rate(x[1m])", "increase(x[1h])"]
    assert iter_queries(board, {"__rate_interval": "30s"})[0].expr == "rate(x[30s])"


def test_a_missing_variable_is_named() -> None:
    board = _dashboard('up{Hostname=~"$Hostname"}', variables=[MULTI])
    with pytest.raises(InvalidInput, match=r"'inner' uses \$Hostname"):
        iter_queries(board, {})


def test_annotations_and_variables_are_listed_with_their_inner_expression() -> None:
    board = _dashboard('up{job_id="$job_id"}', variables=[MULTI, SINGLE])
    board["annotations"] = {
        "list": [
            {"name": "Alerts", "expr": 'ALERTS{job_id="$job_id"}'},
            {"name": "Lifecycle", "target": {"type": "tags", "tags": ["job_id:$job_id"]}},
        ]
    }
    queries = iter_queries(board, {"job_id": "9", "Hostname": ["a"]})
    assert queries[1:] == [
        PanelQuery("annotation: Alerts", 'ALERTS{job_id="9"}'),
        PanelQuery("variable: Hostname", 'up{Hostname!=""}'),
        PanelQuery("variable: job_id", "x"),
    ]


CLUSTER = {
    "name": "cluster",
    "type": "query",
    "multi": True,
    "includeAll": True,
    "allValue": ".*",
    "current": {"text": "All", "value": "$__all"},
    "query": "label_values(up, cluster)",
}


def test_all_is_the_variables_all_value_unescaped_and_a_saved_all_needs_no_value() -> None:
    board = _dashboard('up{cluster=~"$cluster", Hostname=~"$Hostname"}', variables=[CLUSTER, MULTI])
    assert iter_queries(board, {"Hostname": ["a"]})[0].expr == 'up{cluster=~".*", Hostname=~"a"}'
    assert (
        iter_queries(board, {"Hostname": ["a"], "cluster": "$__all"})[0].expr
        == 'up{cluster=~".*", Hostname=~"a"}'
    )
    assert (
        iter_queries(board, {"Hostname": ["a"], "cluster": ["eu"]})[0].expr
        == 'up{cluster=~"eu", Hostname=~"a"}'
    )
    # Hostname's All has no allValue here: Grafana would join every option, which only Prometheus knows
    with pytest.raises(InvalidInput, match=r"\$Hostname is All, which has no allValue"):
        iter_queries(board, {"Hostname": "$__all"})


HOSTS = {
    "name": "job_hosts",
    "type": "query",
    "multi": True,
    "includeAll": True,
    "hide": 2,
    "current": {"text": "All", "value": "$__all"},
    "regex": '/Hostname="([^"]+)"/',
    "query": 'query_result(max by (Hostname) (max_over_time(x{job_id="$job_id"}[$__range])))',
}


def test_resolve_variables_runs_query_result_with_the_regex_and_label_values_over_the_range() -> None:
    board = _dashboard('y{Hostname=~"$job_hosts"}', variables=[CLUSTER, SINGLE, HOSTS, MULTI])
    asked: list[str] = []

    def instant(expr: str) -> list[dict[str, object]]:
        asked.append(expr)
        if expr.startswith("max by (Hostname)"):
            return [
                {"metric": {"Hostname": "n.2"}, "value": [1700000000.5, "1"]},
                {"metric": {"Hostname": "n1"}, "value": [1700000000.5, "1"]},
            ]
        return [{"metric": {"Hostname": "h1"}, "value": [1700000000.5, "2"]}]

    resolved = resolve_variables(board, {"job_id": "7", "__range": "40m"}, instant)
    assert resolved["cluster"] == "$__all"  # a saved All with an allValue: nothing asked
    assert resolved["job_hosts"] == ["n.2", "n1"]
    assert resolved["Hostname"] == ["h1"]
    assert asked == [
        'max by (Hostname) (max_over_time(x{job_id="7"}[40m]))',
        'count by (Hostname) (last_over_time(up{Hostname!=""}[40m]))',
    ]
    assert iter_queries(board, resolved)[0].expr == 'y{Hostname=~"(n\\\\.2|n1)"}'
    with pytest.raises(InvalidInput, match="cannot resolve"):
        resolve_variables(_dashboard("z", variables=[{**SINGLE, "query": "metrics(up)"}]), {}, instant)
