"""jobsight.exposition renders byte-for-byte what prometheus_client renders, scrape after scrape."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import generate_latest as pc_text
from prometheus_client.openmetrics import exposition as pc_om
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Timestamp
from prometheus_client.utils import floatToGoString

from jobsight.exposition import (
    OPENMETRICS,
    TEXT,
    BoundedCache,
    ExpositionFormat,
    Renderer,
    go_float,
)

pc_openmetrics: Callable[..., bytes] = pc_om.generate_latest  # untyped upstream
float_to_go: Callable[[float], str] = floatToGoString

ESCAPINGS = ("underscores", "allow-utf-8", "dots", "values")
FORMATS = [ExpositionFormat(openmetrics=om, escaping=e) for om in (False, True) for e in ESCAPINGS] + [
    ExpositionFormat(openmetrics=True, escaping="underscores", version="2.0.0")
]


class Families:
    """A collector returning fixed families (what a registry yields, without its checks)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> list[Metric]:
        return self.families


def upstream(registry: Collector, fmt: ExpositionFormat) -> bytes:
    if fmt.openmetrics:
        return pc_openmetrics(registry, escaping=fmt.escaping, version=fmt.version)
    return pc_text(registry, escaping=fmt.escaping)


def outcome(fn: Callable[[], bytes]) -> bytes | tuple[str, str]:
    """The bytes, or the exception's type and first argument (upstream appends the family)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - compared between the two renderers
        return type(exc).__name__, str(exc.args[0] if exc.args else "")


def assert_same(renderer: Renderer, registry: Collector, fmt: ExpositionFormat) -> None:
    expected = outcome(lambda: upstream(registry, fmt))
    assert outcome(lambda: renderer.render(registry, fmt)) == expected


# -- strategies ---------------------------------------------------------------------------------

legacy_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
utf8_names = st.sampled_from(["my.metric", "temp °C", 'q"uote', "0starts_with_digit", "ünï:côdé"])
metric_names = st.one_of(legacy_names, legacy_names, utf8_names)
label_names = st.one_of(
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True),
    st.sampled_from(["__reserved", "la.bel", "läbel", "with space", "9x"]),
)
label_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['quo"te', "back\\slash", "new\nline", "ünïcödé ✓", "", "\\n", '\\"', "tab\t"]),
)
labelsets = st.dictionaries(label_names, label_values, max_size=4)
values = st.one_of(
    st.floats(),  # NaN, ±Inf, -0.0, subnormals, huge
    st.sampled_from(
        [0.0, -0.0, 1.0, math.nan, math.inf, -math.inf, 1e16, 123456789.0, 1234567.0, 999999.5, 1.5e-7,
         2.0**63]
    ),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
)
timestamps = st.one_of(
    st.none(),
    st.none(),
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.builds(Timestamp, st.integers(0, 2**32), st.integers(0, 999_999_999)),
)
documentation = st.one_of(
    st.text(max_size=20), st.sampled_from(["Help.", 'with "quotes"', "back\\slash\nnl"])
)
types = st.sampled_from(
    ["counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset"]
)
suffixes = st.sampled_from(
    ["", "", "_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_gcount", "_info"]
)


@st.composite
def raw_families(draw: st.DrawFn) -> Metric:
    """Any family shape prometheus_client's renderers accept, and some they reject (exemplars
    on gauges, odd values): both renderers must then fail alike."""
    name = draw(metric_names)
    unit = draw(st.sampled_from(["", "", "seconds", "bytes"]))
    metric = Metric(name, draw(documentation), draw(types), unit)
    for _ in range(draw(st.integers(0, 6))):
        exemplar = None
        if draw(st.integers(0, 9)) == 0:
            exemplar = Exemplar(draw(labelsets), draw(values), draw(timestamps))
        sample_name = metric.name + draw(suffixes)
        metric.add_sample(sample_name, draw(labelsets), draw(values), draw(timestamps), exemplar)
    return metric


@st.composite
def typed_families(draw: st.DrawFn) -> Metric:
    """Families built the way collectors build them, with the helper classes."""
    name = draw(legacy_names.filter(lambda n: not n.endswith(("_total", "_info", "_created"))))
    doc = draw(documentation)
    labels = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), max_size=3, unique=True))
    rows = draw(st.lists(st.lists(label_values, min_size=len(labels), max_size=len(labels)), max_size=4))
    kind = draw(st.sampled_from(["gauge", "counter", "histogram", "summary", "info", "stateset", "unknown",
                                 "gaugehistogram"]))
    family: Metric
    if kind == "gauge":
        family = GaugeMetricFamily(name, doc, labels=labels)
        for row in rows:
            family.add_metric(row, draw(values), draw(timestamps))
    elif kind == "counter":
        family = CounterMetricFamily(name, doc, labels=labels)
        for row in rows:
            created = draw(st.one_of(st.none(), st.floats(0, 2e9)))
            family.add_metric(row, draw(values), created=created, timestamp=draw(timestamps))
    elif kind == "histogram":
        family = HistogramMetricFamily(name, doc, labels=labels)
        for row in rows:
            family.add_metric(row, [("0.1", 1.0), ("1", 3.0), ("+Inf", draw(values))], draw(values))
    elif kind == "gaugehistogram":
        family = GaugeHistogramMetricFamily(name, doc, labels=labels)
        for row in rows:
            family.add_metric(row, [("1e-3", 2.0), ("+Inf", 5.0)], draw(values))
    elif kind == "summary":
        family = SummaryMetricFamily(name, doc, labels=labels)
        for row in rows:
            family.add_metric(row, count_value=draw(st.integers(0, 2**40)), sum_value=draw(values))
    elif kind == "info":
        family = InfoMetricFamily(name, doc, labels=labels)
        for row in rows:
            family.add_metric(row, {"version": draw(label_values), "build": "x"})
    elif kind == "stateset":
        family = StateSetMetricFamily(name, doc, labels=labels)
        for row in rows:
            family.add_metric(row, {"on": draw(st.booleans()), "off": True})
    else:
        family = UnknownMetricFamily(name, doc, labels=labels)
        for row in rows:
            family.add_metric(row, draw(values))
    return family


# -- equality -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(raw_families(), typed_families()), max_size=5), st.sampled_from(FORMATS))
def test_same_bytes_as_prometheus_client(families: list[Metric], fmt: ExpositionFormat) -> None:
    registry = Families(families)
    renderer = Renderer()
    assert_same(renderer, registry, fmt)
    assert_same(renderer, registry, fmt)  # second scrape: every prefix from the cache


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(typed_families(), min_size=1, max_size=5), st.data())
def test_same_bytes_when_values_change_between_scrapes(families: list[Metric], data: st.DataObject) -> None:
    """The cache holds prefixes only: new values, timestamps and a new series come out right."""
    renderer = Renderer()
    for fmt in (TEXT, OPENMETRICS):
        assert_same(renderer, Families(families), fmt)
    assert renderer.fallbacks == 0  # the fast path rendered all of it
    for family in families:
        family.samples = [
            s._replace(value=data.draw(values), timestamp=data.draw(timestamps)) for s in family.samples
        ]
    families.append(data.draw(typed_families()))
    for fmt in (TEXT, OPENMETRICS):
        assert_same(renderer, Families(families), fmt)


def test_same_bytes_for_a_real_registry_with_every_metric_type() -> None:
    registry = CollectorRegistry()
    counter = Counter("requests", "Requests.", ["path"], registry=registry)
    counter.labels('/a"b').inc(3)
    counter.labels("/ü\n\\").inc()
    Gauge("temperature_celsius", "Temp.", registry=registry).set(-0.0)
    Histogram("latency_seconds", "Latency.", ["op"], registry=registry).labels("get").observe(0.3)
    Summary("size_bytes", "Size.", registry=registry).observe(2**70)
    Info("build", "Build info.", registry=registry).info({"version": "1.2", "commit": 'a"b'})
    Enum("state", "State.", states=["up", "down"], registry=registry).state("down")
    registry.set_target_info({"host": "n1"})
    renderer = Renderer()
    for fmt in FORMATS:
        for _ in range(2):
            assert renderer.render(registry, fmt) == upstream(registry, fmt)
    assert renderer.fallbacks == 0


def test_empty_registry_and_empty_families() -> None:
    renderer = Renderer()
    empty = Families([])
    assert renderer.render(empty, TEXT) == pc_text(empty) == b""
    assert renderer.render(empty, OPENMETRICS) == pc_openmetrics(empty) == b"# EOF\n"
    families = Families([GaugeMetricFamily("g", "Nothing yet.", labels=["a"]), CounterMetricFamily("c", "")])
    for fmt in FORMATS:
        assert renderer.render(families, fmt) == upstream(families, fmt)


def test_openmetrics_exemplars_fall_back_to_prometheus_client() -> None:
    family = CounterMetricFamily("hits", "Hits.", labels=["a"])
    family.add_metric(["x"], 2.0)
    family.samples[0] = family.samples[0]._replace(exemplar=Exemplar({"trace_id": "abc"}, 1.0, 12.5))
    gauge = GaugeMetricFamily("g", "G.", value=1.0)
    gauge.add_sample("g", {}, 2.0, exemplar=Exemplar({}, 1.0))  # invalid: gauges have no exemplars
    renderer = Renderer()
    good = Families([family])
    assert renderer.render(good, OPENMETRICS) == pc_openmetrics(good)
    assert b"# {trace_id=" in renderer.render(good, OPENMETRICS)
    with pytest.raises(ValueError, match="exemplars"):
        renderer.render(Families([gauge]), OPENMETRICS)


def test_a_bad_value_raises_what_prometheus_client_raises() -> None:
    family = GaugeMetricFamily("g", "G.", labels=["a"])
    family.add_sample("g", {"a": "x"}, "not a number")  # type: ignore[arg-type]
    with pytest.raises(ValueError) as ours:
        Renderer().render(Families([family]), TEXT)
    with pytest.raises(ValueError) as theirs:
        pc_text(Families([family]))
    assert ours.value.args == theirs.value.args


@settings(max_examples=500)
@given(st.one_of(st.floats(), st.integers(-(2**200), 2**200), st.booleans()))
def test_go_float_is_float_to_go_string(value: float) -> None:
    assert outcome(lambda: go_float(value).encode()) == outcome(lambda: float_to_go(value).encode())


# -- content negotiation ------------------------------------------------------------------------

ACCEPT_HEADERS = [
    None,
    "",
    "*/*",
    "text/plain",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=values",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=0.0.1",
    "application/openmetrics-text;version=2.0.0",
    # Prometheus 2.x
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    # Prometheus 3.x
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
]


@pytest.mark.parametrize("accept", ACCEPT_HEADERS)
def test_negotiation_is_prometheus_clients(accept: str | None) -> None:
    family = CounterMetricFamily("my.requests", 'Req "x".', labels=["code"], created=1.5)
    family.add_metric(["200"], 7.0, created=1700000000.25)
    registry = Families([family])
    upstream_encoder, upstream_type = choose_encoder(accept or "")
    encoder, content_type = Renderer().encoder_for(accept)
    assert content_type == upstream_type
    assert encoder is not upstream_encoder  # served by the fast renderer, not delegated
    assert encoder(registry) == upstream_encoder(registry)


# -- bounded cache ------------------------------------------------------------------------------


def test_cache_stays_bounded_as_series_come_and_go() -> None:
    renderer = Renderer(max_series=50)
    for scrape in range(40):
        family = GaugeMetricFamily("job_gpu_util", "Per job.", labels=["job", "gpu"])
        for gpu in range(8):
            family.add_metric([f"job-{scrape}", str(gpu)], float(gpu))  # every scrape: new job ids
        registry = Families([family])
        for fmt in (TEXT, OPENMETRICS):
            assert renderer.render(registry, fmt) == upstream(registry, fmt)
        assert renderer.cache_size() <= 2 * (2 * 50 + 1)  # two formats, two generations each


def test_bounded_cache_keeps_hot_keys_across_rotations() -> None:
    cache = BoundedCache(max_entries=4)
    cache.put("hot", "H")
    for i in range(100):
        assert cache.get("hot") == "H"  # a hit promotes it into the current generation
        cache.put(f"cold-{i}", "c")
        assert len(cache) <= 2 * 4 + 1
    assert cache.get("cold-0") is None
    with pytest.raises(ValueError):
        BoundedCache(0)


def test_concurrent_scrapes_share_one_renderer() -> None:
    """Request threads render at once, with the cache rotating under them (tiny bound)."""
    family = GaugeMetricFamily("util", "Util.", labels=["gpu", "job"])
    for gpu in range(40):
        family.add_metric([str(gpu), f'job "{gpu % 7}"'], gpu / 3)
    registry = Families([family, CounterMetricFamily("c", "C.", value=1.0, created=5.0)])
    expected = {fmt: upstream(registry, fmt) for fmt in (TEXT, OPENMETRICS)}
    renderer = Renderer(max_series=16)

    def scrape(i: int) -> bool:
        fmt = (TEXT, OPENMETRICS)[i % 2]
        return renderer.render(registry, fmt) == expected[fmt]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(scrape, range(400)))
    assert renderer.fallbacks == 0
