"""Shared by the node exporter tests: the fixture roots, exposition parsing, a collector run."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jobsight.serving import Collector, CollectorSet
from tests.support import FIXTURES

NODE_FIXTURES = FIXTURES / "node"
PROCFS = NODE_FIXTURES / "proc"
SYSFS = NODE_FIXTURES / "sys"
ROOTFS = NODE_FIXTURES / "root"
UDEV = NODE_FIXTURES / "udev" / "data"

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def fixture_flags(procfs: Path = PROCFS, sysfs: Path = SYSFS) -> list[str]:
    """Flags that point an exporter (ours or node_exporter) at the fixture roots."""
    return [f"--path.procfs={procfs}", f"--path.sysfs={sysfs}", f"--path.rootfs={ROOTFS}",
            f"--path.udev.data={UDEV}"]


def samples(exposition: str) -> dict[SampleKey, float]:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    found: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def types(exposition: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(exposition)}


def scrape(collectors: Mapping[str, Collector]) -> str:
    """One scrape of ``collectors`` the way the exporter serves them (self metrics included)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorSet(collectors, prefix="node"))
    return generate_latest(registry).decode()


def copy_fixtures(tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of the fixture procfs and sysfs, for tests that break or change files."""
    procfs, sysfs = tmp_path / "proc", tmp_path / "sys"
    shutil.copytree(PROCFS, procfs)
    shutil.copytree(SYSFS, sysfs)
    return procfs, sysfs
