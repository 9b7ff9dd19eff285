"""Fast Prometheus text and OpenMetrics rendering, byte-for-byte what prometheus_client renders.

prometheus_client formats every sample from scratch on every scrape: it sorts the labels, escapes
every label name and value and joins them, although an exporter's label sets repeat scrape after
scrape and only the values change. On the GPU exporter (338 series, 6-7 labels each) that was
about two thirds of a scrape. :class:`Renderer` memoises the rendered ``name{labels}`` prefix of
each series in a bounded cache, so a scrape costs a dictionary lookup and a float format per
sample.

The output must stay identical to ``prometheus_client.exposition.generate_latest`` (text 0.0.4 and
1.0.0) and ``prometheus_client.openmetrics.exposition.generate_latest``, because the exporters'
golden tests and Prometheus's parsers are written against it. To keep that guarantee cheap to
maintain:

- every escaping decision on a cache miss calls prometheus_client's own escaping functions, in the
  same order and with the same arguments as its renderers (see ``_text_prefix``/``_om_prefix``);
- families this fast path does not handle (native histograms, OpenMetrics exemplars) and any
  family that raises while rendering are rendered by prometheus_client itself, so odd input gives
  the same bytes, or the same exception, as before;
- content negotiation is prometheus_client's ``choose_encoder``, mapped onto this renderer
  (:meth:`Renderer.encoder_for`), so the format and Content-Type chosen for an Accept header
  never differ from what ``make_wsgi_app`` would choose.

tests/jobsight/test_exposition.py checks the equality on generated registries.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import generate_latest as _pc_generate_text
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as _om
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.validation import _is_valid_legacy_metric_name

__all__ = ["DEFAULT_MAX_SERIES", "BoundedCache", "Encoder", "ExpositionFormat", "Renderer"]

Encoder = Callable[[Collector], bytes]

# prometheus_client's renderers are untyped; typed aliases keep mypy strict without ignores.
_pc_generate_openmetrics: Callable[..., bytes] = _om.generate_latest
_escape: Callable[[str, str, Callable[[str, int], bool]], str] = _om._escape
_escape_metric_name: Callable[[str, str], str] = _om.escape_metric_name
_escape_label_name: Callable[[str, str], str] = _om.escape_label_name
_labelname_rune: Callable[[str, int], bool] = _om._is_legacy_labelname_rune
ALLOWUTF8: str = _om.ALLOWUTF8
UNDERSCORES: str = _om.UNDERSCORES

_INF = math.inf
_MINUS_INF = -math.inf

# Per rendering format. A node runs a few thousand series at most (the GPU exporter 338); the
# cache holds up to twice this many prefixes (two generations, see BoundedCache), a few MB at
# worst, and a registry with more live series than this only loses some hits, never correctness.
DEFAULT_MAX_SERIES = 32_768


def go_float(value: float) -> str:
    """``prometheus_client.utils.floatToGoString``, restated for speed: same branches, same
    output for every float (tests compare the two on arbitrary floats)."""
    d = float(value)
    if d > 0:
        if d == _INF:
            return "+Inf"
        s = repr(d)
        dot = s.find(".")
        # Go switches to exponents sooner than Python (floatToGoString's comment).
        if dot > 6:
            mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
        return s
    if d != d:
        return "NaN"
    if d == _MINUS_INF:
        return "-Inf"
    return repr(d)


def _escape_label_value(value: str) -> str:
    # prometheus_client's _escape(value, ALLOWUTF8, ...): label values always allow UTF-8.
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _text_help(documentation: str) -> str:
    # The text format escapes only backslash and newline in HELP (OpenMetrics also escapes '"').
    return documentation.replace("\\", r"\\").replace("\n", r"\n")


class BoundedCache:
    """A dictionary bounded to ``2 * max_entries`` entries, with O(1) hits.

    Two generations: lookups hit ``current`` first, then ``previous`` (promoting the entry).
    When ``current`` outgrows ``max_entries`` it becomes ``previous`` and the old ``previous`` is
    dropped. Series scraped every time are promoted before their generation is dropped, so they
    stay; series that went away (a job ended, its label set never comes back) age out after two
    rotations. An LRU would need bookkeeping on every hit, which is what this avoids.

    Concurrent scrapes may use one cache: each operation is a single dict operation under the GIL,
    and a race at worst loses an insert (a later miss recomputes the same value).
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_SERIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._current: dict[Hashable, str] = {}
        self._previous: dict[Hashable, str] = {}

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def get(self, key: Hashable) -> str | None:
        value = self._current.get(key)
        if value is None:
            value = self._previous.get(key)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: Hashable, value: str) -> None:
        current = self._current
        current[key] = value
        if len(current) > self.max_entries:
            self._previous, self._current = current, {}


@dataclass(frozen=True)
class ExpositionFormat:
    """What to render: Prometheus text (0.0.4 or 1.0.0) or OpenMetrics, with a name escaping
    scheme. ``version`` matters to OpenMetrics only (2.0.0 adds native histograms)."""

    openmetrics: bool = False
    escaping: str = UNDERSCORES
    version: str = "1.0.0"


TEXT = ExpositionFormat()
OPENMETRICS = ExpositionFormat(openmetrics=True)


class _OneFamily:
    """A collector yielding one family, to hand a family to prometheus_client's renderer."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


class _NotHandled(Exception):
    """Raised inside the fast path for input it leaves to prometheus_client."""


_OM_SUFFIXES = ("_created", "_gsum", "_gcount")


class Renderer:
    """Renders collectors like prometheus_client, memoising series prefixes across scrapes.

    One renderer per served registry; it is safe to use from concurrent request threads.
    """

    def __init__(self, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        # Families handed to prometheus_client's renderer (tests check typical families never are).
        self.fallbacks = 0
        self._caches: dict[ExpositionFormat, BoundedCache] = {}

    def cache_size(self) -> int:
        """Entries held across all formats (for tests and debugging)."""
        return sum(len(cache) for cache in list(self._caches.values()))

    def _cache(self, fmt: ExpositionFormat) -> BoundedCache:
        cache = self._caches.get(fmt)
        if cache is None:
            # setdefault: two threads racing here end up sharing one cache.
            cache = self._caches.setdefault(fmt, BoundedCache(self.max_series))
        return cache

    # -- public entry points -------------------------------------------------------------------

    def render(self, registry: Collector, fmt: ExpositionFormat = TEXT) -> bytes:
        """Render every family ``registry`` collects, in ``fmt``."""
        cache = self._cache(fmt)
        out: list[str] = []
        family = self._om_family if fmt.openmetrics else self._text_family
        for metric in registry.collect():
            try:
                family(metric, fmt, cache, out)
            except Exception:  # noqa: BLE001 - rendered again below, where it raises if it must
                # Leave anything unusual (and any error) to prometheus_client: same bytes, or the
                # same exception, as without this renderer. The fast path appends a family to
                # ``out`` only once all of it rendered, so nothing half-written is left behind.
                self._fallback(metric, fmt, out)
        if fmt.openmetrics:
            out.append("# EOF\n")
        return "".join(out).encode("utf-8")

    def render_text(self, registry: Collector) -> bytes:
        return self.render(registry, TEXT)

    def render_openmetrics(self, registry: Collector) -> bytes:
        return self.render(registry, OPENMETRICS)

    def encoder_for(self, accept_header: str | None) -> tuple[Encoder, str]:
        """The renderer and Content-Type for an Accept header: prometheus_client's own choice
        (``choose_encoder``), served by this renderer when it is one of the formats it knows."""
        encoder, content_type = choose_encoder(accept_header or "")
        fmt = _format_of(encoder)
        if fmt is None:
            return encoder, content_type
        return functools.partial(self.render, fmt=fmt), content_type

    # -- per family ----------------------------------------------------------------------------

    def _fallback(self, metric: Metric, fmt: ExpositionFormat, out: list[str]) -> None:
        self.fallbacks += 1
        if fmt.openmetrics:
            text = _pc_generate_openmetrics(_OneFamily(metric), escaping=fmt.escaping, version=fmt.version)
            out.append(text.decode("utf-8").removesuffix("# EOF\n"))
        else:
            out.append(_pc_generate_text(_OneFamily(metric), escaping=fmt.escaping).decode("utf-8"))

    def _text_family(
        self, metric: Metric, fmt: ExpositionFormat, cache: BoundedCache, out: list[str]
    ) -> None:
        """One family as prometheus_client.exposition.generate_latest renders it."""
        escaping = fmt.escaping
        name = metric.name
        header_key = ("#", name, metric.type, metric.documentation)
        header = cache.get(header_key)
        if header is None:
            header = _text_header(metric, escaping)
            cache.put(header_key, header)
        lines: list[str] = [header]
        om_lines: dict[str, list[str]] | None = None
        special = {name + suffix: suffix for suffix in _OM_SUFFIXES}
        current = cache._current
        for s in metric.samples:
            if s.native_histogram is not None:
                raise _NotHandled("native histogram")
            key = (s.name, tuple(s.labels.items()))
            prefix = current.get(key)
            if prefix is None:
                prefix = cache.get(key)
                if prefix is None:
                    prefix = _text_prefix(s, escaping)
                    cache.put(key, prefix)
            value = s.value
            # floatToGoString differs from repr only for NaN, ±Inf and floats of 1e6 and more
            # (7+ digits before the point); NaN and -Inf fail the comparison. Saves a call per
            # sample, ~12 % of a render.
            text = repr(value) if type(value) is float and _MINUS_INF < value < 1e6 else go_float(value)
            timestamp = s.timestamp
            if timestamp is None:
                line = f"{prefix}{text}\n"
            else:
                line = f"{prefix}{text} {int(float(timestamp) * 1000):d}\n"
            suffix = special.get(s.name)
            if suffix is None:
                lines.append(line)
            else:
                # OpenMetrics-only samples become gauge families after this one, as upstream does.
                if om_lines is None:
                    om_lines = {}
                om_lines.setdefault(suffix, []).append(line)
        if om_lines:
            help_text = _text_help(metric.documentation)
            for suffix, suffix_lines in sorted(om_lines.items()):
                escaped = _escape_metric_name(name + suffix, escaping)
                lines.append(f"# HELP {escaped} {help_text}\n# TYPE {escaped} gauge\n")
                lines.extend(suffix_lines)
        # Appended only when the whole family rendered: a fallback never sees half a family.
        out.extend(lines)

    def _om_family(
        self, metric: Metric, fmt: ExpositionFormat, cache: BoundedCache, out: list[str]
    ) -> None:
        """One family as prometheus_client.openmetrics.exposition.generate_latest renders it."""
        escaping = fmt.escaping
        name = metric.name
        header_key = ("#", name, metric.type, metric.documentation, metric.unit)
        header = cache.get(header_key)
        if header is None:
            header = _om_header(metric, escaping)
            cache.put(header_key, header)
        lines: list[str] = [header]
        current = cache._current
        for s in metric.samples:
            if s.exemplar or s.native_histogram:
                raise _NotHandled("exemplar or native histogram")
            key = (s.name, tuple(s.labels.items()))
            prefix = current.get(key)
            if prefix is None:
                prefix = cache.get(key)
                if prefix is None:
                    prefix = _om_prefix(s, escaping)
                    cache.put(key, prefix)
            value = s.value
            if type(value) is float and _MINUS_INF < value < 1e6:  # see _text_family
                text = repr(value)
            else:
                text = "" if value is None else go_float(value)
            if s.timestamp is None:
                lines.append(f"{prefix}{text}\n")
            else:
                lines.append(f"{prefix}{text} {s.timestamp}\n")
        out.extend(lines)


def _format_of(encoder: Encoder) -> ExpositionFormat | None:
    """Which of our formats prometheus_client's ``choose_encoder`` picked, or None if unknown."""
    if encoder is _pc_generate_text:
        return TEXT
    if isinstance(encoder, functools.partial) and not encoder.args:
        keywords: dict[str, Any] = dict(encoder.keywords)
        escaping = keywords.pop("escaping", UNDERSCORES)
        if encoder.func is _pc_generate_text and not keywords:
            return ExpositionFormat(openmetrics=False, escaping=escaping)
        if encoder.func is _pc_generate_openmetrics and set(keywords) <= {"version"}:
            version = keywords.get("version", "1.0.0")
            return ExpositionFormat(openmetrics=True, escaping=escaping, version=version)
    return None


def _text_header(metric: Metric, escaping: str) -> str:
    # Munging from OpenMetrics into Prometheus format, as upstream generate_latest does.
    mname, mtype = metric.name, metric.type
    if mtype == "counter":
        mname = mname + "_total"
    elif mtype == "info":
        mname = mname + "_info"
        mtype = "gauge"
    elif mtype == "stateset":
        mtype = "gauge"
    elif mtype == "gaugehistogram":
        mtype = "histogram"
    elif mtype == "unknown":
        mtype = "untyped"
    escaped = _escape_metric_name(mname, escaping)
    return f"# HELP {escaped} {_text_help(metric.documentation)}\n# TYPE {escaped} {mtype}\n"


def _text_prefix(s: Sample, escaping: str) -> str:
    """Everything of a text sample line before the value, exactly as upstream's sample_line."""
    if s.labels:
        labelstr = ",".join(
            [
                f'{_escape_label_name(k, escaping)}="{_escape_label_value(v)}"'
                for k, v in sorted(s.labels.items())
            ]
        )
    else:
        labelstr = ""
    if escaping != ALLOWUTF8 or _is_valid_legacy_metric_name(s.name):
        if labelstr:
            labelstr = "{" + labelstr + "}"
        return f"{_escape_metric_name(s.name, escaping)}{labelstr} "
    maybe_comma = "," if labelstr else ""
    return f"{{{_escape_metric_name(s.name, escaping)}{maybe_comma}{labelstr}}} "


def _om_header(metric: Metric, escaping: str) -> str:
    escaped = _escape_metric_name(metric.name, escaping)
    header = (
        f"# HELP {escaped} {_escape(metric.documentation, ALLOWUTF8, _labelname_rune)}\n"
        f"# TYPE {escaped} {metric.type}\n"
    )
    if metric.unit:
        header += f"# UNIT {escaped} {metric.unit}\n"
    return header


def _om_prefix(s: Sample, escaping: str) -> str:
    """Everything of an OpenMetrics sample line before the value, exactly as upstream."""
    if escaping == ALLOWUTF8 and not _is_valid_legacy_metric_name(s.name):
        labelstr = _escape_metric_name(s.name, escaping)
        if s.labels:
            labelstr += ","
    else:
        labelstr = ""
    if s.labels:
        labelstr += ",".join(
            [
                f'{_escape_label_name(k, escaping)}="{_escape(v, ALLOWUTF8, _labelname_rune)}"'
                for k, v in sorted(s.labels.items())
            ]
        )
    if labelstr:
        labelstr = "{" + labelstr + "}"
    if escaping != ALLOWUTF8 or _is_valid_legacy_metric_name(s.name):
        # Upstream escapes sample names with the label-name rune set (':' becomes '_').
        return f"{_escape(s.name, escaping, _labelname_rune)}{labelstr} "
    return f"{labelstr} "
