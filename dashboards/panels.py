"""Small builders on top of grafana-foundation-sdk for the panels jobsight's dashboards use: every
panel queries the Prometheus datasource, every target gets a refId, every panel a fixed size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import gauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

# The datasource uid the committed JSON refers to; `jobsight dashboards push --datasource-uid`
# substitutes another one.
DATASOURCE_UID = "prometheus"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


@dataclass(frozen=True)
class Q:
    """One PromQL target: expression and legend."""

    expr: str
    legend: str = ""


def _targets(
    queries: Sequence[Q], *, instant: bool = False, table_format: bool = False
) -> list[prometheus.Dataquery]:
    targets = []
    for index, query in enumerate(queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DATASOURCE)
        if query.legend:
            target = target.legend_format(query.legend)
        if instant:
            target = target.instant()
        if table_format:
            target = target.format(pm.PromQueryFormat.TABLE)
        targets.append(target)
    return targets


def timeseries_panel(
    title: str,
    queries: Sequence[Q],
    *,
    unit: str = "short",
    description: str = "",
    width: int = 12,
    height: int = 8,
    min_value: float | None = None,
    max_value: float | None = None,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets(_targets(queries))  # type: ignore[arg-type]
        .unit(unit)
        .span(width)
        .height(height)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .line_width(1)
        .fill_opacity(10)
    )
    if description:
        panel = panel.description(description)
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def _thresholds(steps: Sequence[tuple[float | None, str]]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def stat_panel(
    title: str,
    query: Q,
    *,
    unit: str = "short",
    description: str = "",
    width: int = 4,
    height: int = 4,
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
    decimals: float | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets(_targets([query], instant=True))  # type: ignore[arg-type]
        .unit(unit)
        .span(width)
        .height(height)
        .thresholds(_thresholds(thresholds))
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if description:
        panel = panel.description(description)
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def gauge_panel(
    title: str,
    query: Q,
    *,
    unit: str,
    min_value: float,
    max_value: float,
    thresholds: Sequence[tuple[float | None, str]],
    width: int = 6,
    height: int = 8,
) -> gauge.Panel:
    return (
        gauge.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets(_targets([query], instant=True))  # type: ignore[arg-type]
        .unit(unit)
        .min(min_value)
        .max(max_value)
        .span(width)
        .height(height)
        .thresholds(_thresholds(thresholds))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def table_panel(
    title: str,
    queries: Sequence[Q],
    *,
    description: str = "",
    width: int = 12,
    height: int = 8,
    links: Sequence[tuple[str, str]] = (),
) -> table.Panel:
    """An instant query shown as a table; ``links`` are (title, url) data links on its cells."""
    panel = (
        table.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=True, table_format=True))  # type: ignore[arg-type]
        .span(width)
        .height(height)
        .show_header(True)
        # Instant table queries carry a Time column that says nothing here.
        .with_transformation(
            dm.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
        )
    )
    if description:
        panel = panel.description(description)
    if links:
        panel = panel.data_links([db.DashboardLink(text).url(url) for text, url in links])
    return panel


def query_variable(
    name: str, query: str, *, label: str = "", multi: bool = True, include_all: bool = True
) -> db.QueryVariable:
    """A Prometheus ``label_values(...)`` variable, refreshed with the time range."""
    variable = (
        db.QueryVariable(name)
        .label(label or name)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    return variable


def jobsight_links() -> db.DashboardLink:
    """A drop-down linking every jobsight dashboard, keeping the time range and variables."""
    return (
        db.DashboardLink("jobsight")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(["jobsight"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )


def base_dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["jobsight"])
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .editable()
        .link(jobsight_links())
    )


@dataclass(frozen=True)
class Board:
    """A dashboard under construction, plus the fields of its Prometheus annotation queries that the
    SDK's AnnotationQuery has no setter for (``titleFormat``, ``tagKeys``, ``textFormat``, ``step``),
    keyed by annotation name; :mod:`dashboards.render` merges them into the JSON."""

    builder: db.Dashboard
    annotation_fields: dict[str, dict[str, str]]


def xid_events_in_range(selector: str = "") -> str:
    """XID events within the dashboard's time range. The XID counter's series may appear only with
    the first event of a code, and increase() cannot see an increase on a new series, so count
    series that did not exist at the start of the range from zero."""
    xid = f"jobsight_gpu_xid_errors_total{{{selector}}}" if selector else "jobsight_gpu_xid_errors_total"
    return f"sum(clamp_min({xid} - ({xid} offset $__range or {xid} * 0), 0)) or vector(0)"


def prometheus_annotation(name: str, expr: str, color: str) -> db.AnnotationQuery:
    return db.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True).icon_color(color).expr(expr)
