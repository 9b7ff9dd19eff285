"""Metric families filled with ready label dicts.

prometheus_client's ``*MetricFamily.add_metric`` zips label names with values into a new dict
for every sample; with ~250 samples a scrape that was a fifth of the collectors' time. Here the
caller passes the label dict, and may share one dict between the samples of one device (the
exposition only reads them).
"""

from __future__ import annotations

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

NO_LABELS: dict[str, str] = {}


class Family(Metric):
    """A family of type ``typ`` whose samples are named ``name`` (for a counter, ``name`` ends in
    ``_total``, which prometheus_client keeps off the family name and adds back when exposing)."""

    def __init__(self, name: str, documentation: str, typ: str = "gauge") -> None:
        base = name[: -len("_total")] if typ == "counter" and name.endswith("_total") else name
        super().__init__(base, documentation, typ)
        self.sample_name = name

    def add(self, labels: dict[str, str], value: float) -> None:
        self.samples.append(Sample(self.sample_name, labels, value))


def single(name: str, documentation: str, value: float, typ: str = "gauge") -> Family:
    """A family with one unlabelled sample."""
    family = Family(name, documentation, typ)
    family.samples.append(Sample(name, NO_LABELS, value))
    return family
