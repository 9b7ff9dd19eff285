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

# Every panel queries the datasource picked in the ``$datasource`` variable; its default is the uid
# below, which `jobsight dashboards push --datasource-uid` replaces.
DATASOURCE_UID = "prometheus"
DATASOURCE_VARIABLE = "datasource"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Every selector also takes ``cluster=~"$cluster"``: with one Prometheus per cluster behind one
# Grafana (or a global Thanos/Mimir) the label tells clusters apart; where no series has it, "All"
# is ``.*``, which matches the empty label too.
CLUSTER = 'cluster=~"$cluster"'

# Legend tables with these values are what users of dcgm dashboard 12239 / node-exporter-full expect.
LEGEND_CALCS = ["mean", "max", "lastNotNull"]


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
    no_value: str = "",
    interval: str = "",
    bars: bool = False,
    links: Sequence[tuple[str, str]] = (),
) -> timeseries.Panel:
    """A graph with a legend table (mean, max, last). ``interval`` is the panel's minimum step
    (Grafana's "min interval"): with ``increase(x[$__interval])`` each point then counts the events
    of its own step, where overlapping ``[$__rate_interval]`` windows would count one event in
    several points. ``bars`` draws such counts as bars. ``links`` are (title, url) data links on
    the series (``${__field.labels.<label>}`` names the clicked series' labels)."""
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
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .calcs(LEGEND_CALCS)
        )
        .line_width(1)
        .fill_opacity(10)
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if description:
        panel = panel.description(description)
    if no_value:
        panel = panel.no_value(no_value)
    if interval:
        panel = panel.interval(interval)
    if links:
        panel = panel.data_links([db.DashboardLink(text).url(url) for text, url in links])
    if min_value is not None:
        panel = panel.min(min_value)
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


def _thresholds(
    steps: Sequence[tuple[float | None, str]], *, percentage: bool = False
) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.PERCENTAGE if percentage else dm.ThresholdsMode.ABSOLUTE)
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
    no_value: str = "",
    links: Sequence[tuple[str, str]] = (),
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
    if no_value:
        panel = panel.no_value(no_value)
    if links:
        panel = panel.data_links([db.DashboardLink(text).url(url) for text, url in links])
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
    max_query: Q | None = None,
    description: str = "",
) -> gauge.Panel:
    """A gauge. With ``max_query`` its maximum comes from that query (Grafana's "config from query
    results", field named by the query's legend) and ``thresholds`` are percentages of it;
    ``max_value`` stays the fallback."""
    queries = [query] if max_query is None else [query, max_query]
    panel = (
        gauge.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=True))  # type: ignore[arg-type]
        .unit(unit)
        .min(min_value)
        .max(max_value)
        .span(width)
        .height(height)
        .thresholds(_thresholds(thresholds, percentage=max_query is not None))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if max_query is not None:
        panel = panel.with_transformation(
            dm.DataTransformerConfig(
                id_val="configFromData",
                options={
                    "configRefId": "B",
                    "mappings": [{"fieldName": max_query.legend, "handlerKey": "max"}],
                },
            )
        )
    if description:
        panel = panel.description(description)
    return panel


def table_panel(
    title: str,
    queries: Sequence[Q],
    *,
    description: str = "",
    width: int = 12,
    height: int = 8,
    links: Sequence[tuple[str, str]] = (),
    unit: str = "",
    no_value: str = "",
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
    if unit:
        panel = panel.unit(unit)
    if no_value:
        panel = panel.no_value(no_value)
    return panel


ALL = dm.VariableOption(selected=True, text="All", value="$__all")


def query_variable(
    name: str,
    query: str,
    *,
    label: str = "",
    multi: bool = True,
    include_all: bool = True,
    all_value: str | None = ".+",
    regex: str = "",
    hidden: bool = False,
    default_all: bool = False,
) -> db.QueryVariable:
    """A Prometheus ``label_values(...)`` or ``query_result(...)`` variable, refreshed with the time
    range. "All" is ``all_value`` (``.+``: one short regex, not a 250-host alternation) unless
    ``all_value`` is None, when Grafana joins every option (what a hidden job-scoped list needs).
    Without ``default_all`` Grafana opens on the first option: one host, not the fleet."""
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
    if include_all and all_value is not None:
        variable = variable.all_value(all_value)
    if regex:
        variable = variable.regex(regex)
    if hidden:
        variable = variable.hide(dm.VariableHide.HIDE_VARIABLE)
    if default_all:
        variable = variable.current(ALL)
    return variable


def datasource_variable() -> db.DatasourceVariable:
    """``$datasource``: any Prometheus-compatible datasource (Prometheus, Thanos, Mimir, VM)."""
    return (
        db.DatasourceVariable(DATASOURCE_VARIABLE)
        .label("Data source")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text=DATASOURCE_UID, value=DATASOURCE_UID))
    )


def cluster_variable() -> db.QueryVariable:
    """``$cluster``: the ``cluster`` label, All (``.*``, so series without it match) by default."""
    return query_variable(
        "cluster", "label_values(up, cluster)", label="Cluster", all_value=".*", default_all=True
    )


def series_link(title: str, uid: str, **variables: str) -> tuple[str, str]:
    """A data link to the jobsight dashboard ``uid`` with ``var-<name>`` set from the clicked
    series' labels (``label`` -> ``${__field.labels.label}``), keeping the time range."""
    query = "&".join(f"var-{name}=${{__field.labels.{label}}}" for name, label in variables.items())
    return title, f"/d/{uid}/{uid}?{query}&${{__url_time_range}}"


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
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(jobsight_links())
        .with_variable(datasource_variable())
        .with_variable(cluster_variable())
    )


@dataclass(frozen=True)
class Board:
    """A dashboard under construction, plus the fields of its Prometheus annotation queries that the
    SDK's AnnotationQuery has no setter for (``titleFormat``, ``tagKeys``, ``textFormat``, ``step``),
    keyed by annotation name; :mod:`dashboards.render` merges them into the JSON."""

    builder: db.Dashboard
    annotation_fields: dict[str, dict[str, object]]


def new_events(series: str, window: str) -> str:
    """Per series, the events counted by the counter ``series`` (a selector) within ``window``,
    from the first one: an event counter's series is born with its first event, at 1, where
    ``increase()`` sees nothing; a series that did not exist ``window`` ago counts from zero."""
    return f"clamp_min({series} - ({series} offset {window} or {series} * 0), 0)"


def xid_events_in_range(selector: str = "") -> str:
    """XID events within the dashboard's time range, the first of each code included."""
    xid = f"jobsight_gpu_xid_errors_total{{{selector}}}" if selector else "jobsight_gpu_xid_errors_total"
    return f"sum({new_events(xid, '$__range')}) or vector(0)"


def prometheus_annotation(name: str, expr: str, color: str) -> db.AnnotationQuery:
    return db.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True).icon_color(color).expr(expr)


# Board power limit (W) by GPU model, most specific first (NVIDIA data sheets: SXM/HBM3 parts
# 700 W, PCIe parts less); a model not listed counts as 700 W. Without a power-limit field in the
# exporter, this is what lets "GPU Power Total" turn red near what the GPUs can draw instead of at
# dcgm dashboard 12239's fixed 2,200 W, which an 8-GPU H100 node passes at 40 % load.
POWER_LIMIT_W: tuple[tuple[str, int], ...] = (
    (".*GB200.*", 1200),
    (".*B200.*", 1000),
    (".*H100.*PCIe.*", 350),
    (".*H100 NVL.*", 400),
    (".*H200 NVL.*", 600),
    (".*(H100|H200|H800|H20).*", 700),
    (".*A100.*PCIE.*40GB.*|.*A100-PCIE-40GB.*", 250),
    (".*A100.*PCIe.*|.*A100.*PCIE.*", 300),
    (".*A100.*", 400),
    (".*L40S.*|.*L40.*", 350),
    (".*A40.*|.*A6000.*", 300),
    (".*A10.*", 150),
    (".*L4.*", 72),
    (".*V100.*", 300),
    (".*T4.*", 70),
)
DEFAULT_POWER_LIMIT_W = 700


def power_limit_w(selector: str) -> str:
    """The summed power limit of the GPUs matching ``selector``, by model (see POWER_LIMIT_W)."""
    def gpus(matchers: str) -> str:
        return f"count by (Hostname, gpu) (DCGM_FI_DEV_POWER_USAGE{{{matchers}}})"

    parts = [f'{watts} * {gpus(f"{selector}, modelName=~{chr(34)}{regex}{chr(34)}")}'
             for regex, watts in POWER_LIMIT_W]
    parts.append(f"{DEFAULT_POWER_LIMIT_W} * {gpus(selector)}")
    return "sum(" + " or ".join(parts) + ")"
