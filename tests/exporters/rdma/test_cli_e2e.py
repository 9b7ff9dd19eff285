"""End-to-end, in node_exporter's style: ``jobsight exporter rdma`` runs as a process against the
fixture trees; its scrape is compared with checked-in golden files (regenerate them with
``JOBSIGHT_UPDATE_GOLDEN=1``), linted by promtool, and compared sample by sample with Debian's
node_exporter on the same tree."""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporters.rdma import cli, names
from tests.support import (
    FIXTURES,
    Proc,
    free_port,
    jobsight_command,
    promtool_check_metrics,
    require_binary,
    wait_for_http,
)

GOLDEN = FIXTURES / "rdma"
# Volatile lines, as node_exporter's end-to-end test drops node_scrape_collector_duration_seconds.
VOLATILE = ("jobsight_scrape_collector_duration_seconds{",)
# What node_exporter 1.11 publishes and Debian's 1.5 does not yet: the mlx5 hw_counters (#2827).
NAMES_SINCE_1_11 = {names.LIFESPAN_METRIC} | {spec.metric for spec in names.HW_COUNTERS}

Spawn = Callable[..., Proc]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _serve_ours(spawn: Spawn, root: Path, *extra: str) -> tuple[Proc, str]:
    port = free_port()
    proc = spawn(
        jobsight_command(
            "exporter", "rdma", f"--web.listen-address=127.0.0.1:{port}", f"--path.sysfs={root}", *extra
        ),
        name="rdma",
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", proc=proc)
    return proc, base


def _scrape(base: str) -> str:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def _stable(exposition: str) -> str:
    return "".join(line + "\n" for line in exposition.splitlines() if not line.startswith(VOLATILE))


def _samples(exposition: str, prefix: str = "") -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name.startswith(prefix)
    }


def _families(exposition: str, prefix: str) -> dict[str, tuple[str, str]]:
    return {
        family.name: (family.type, family.documentation)
        for family in text_string_to_metric_families(exposition)
        if family.name.startswith(prefix)
    }


@pytest.mark.parametrize("tree", ["good", "broken"])
def test_golden_scrape(spawn: Spawn, tree: str) -> None:
    _, base = _serve_ours(spawn, GOLDEN / tree / "sys")
    scraped = _scrape(base)
    assert promtool_check_metrics(scraped) == []
    assert 'jobsight_scrape_collector_success{collector="rdma"} 1.0' in scraped
    golden = GOLDEN / f"{tree}.prom"
    if os.environ.get("JOBSIGHT_UPDATE_GOLDEN") == "1":
        golden.write_text(_stable(scraped))
    assert _stable(scraped) == golden.read_text(), (
        f"scrape differs from {golden}; JOBSIGHT_UPDATE_GOLDEN=1 updates it"
    )


def _serve_node_exporter(spawn: Spawn, root: Path) -> str:
    binary = require_binary("prometheus-node-exporter")
    port = free_port()
    proc = spawn(
        [binary, "--collector.disable-defaults", "--collector.infiniband", f"--path.sysfs={root}",
         f"--web.listen-address=127.0.0.1:{port}"],
        name="node-exporter",
    )  # fmt: skip
    return wait_for_http(f"http://127.0.0.1:{port}/metrics", proc=proc).text


def test_same_samples_as_node_exporter(spawn: Spawn) -> None:
    root = GOLDEN / "good" / "sys"
    theirs_text = _serve_node_exporter(spawn, root)
    _, base = _serve_ours(spawn, root)
    ours_text = _scrape(base)
    theirs = _samples(theirs_text, "node_infiniband_")
    ours = _samples(ours_text, "node_infiniband_")
    assert len(theirs) > 150  # the comparison is not vacuous: node_exporter read the tree
    assert 'node_scrape_collector_success{collector="infiniband"} 1' in theirs_text
    different = {key: (value, ours.get(key)) for key, value in theirs.items() if ours.get(key) != value}
    assert different == {}
    # Same type and HELP for every family both publish.
    their_families = _families(theirs_text, "node_infiniband_")
    our_families = _families(ours_text, "node_infiniband_")
    assert {name: our_families.get(name) for name in their_families} == their_families
    # Everything we publish beyond 1.5 is exactly what 1.11 added; no sample of ours is invented.
    extra_names = {name for name, _ in ours.keys() - theirs.keys()}
    assert extra_names == NAMES_SINCE_1_11 & {name for name, _ in ours}
    assert extra_names  # the fixture does exercise hw_counters


def test_simulated_fabric_reads_the_same_in_node_exporter(spawn: Spawn, tmp_path: Path) -> None:
    from exporters.rdma.simulate import advance, set_link, write_fabric

    root = tmp_path / "sys"
    write_fabric(root, hcas=2, ports=2, link_layer="Ethernet", rate_gbps=400)
    advance(root, 60, utilisation=0.3, congestion=0.1, errors=1)
    set_link(root, "mlx5_1", 2, up=False)
    theirs = _samples(_serve_node_exporter(spawn, root), "node_infiniband_")
    _, base = _serve_ours(spawn, root)
    ours = _samples(_scrape(base), "node_infiniband_")
    assert len(theirs) > 50
    assert {key: (value, ours.get(key)) for key, value in theirs.items() if ours.get(key) != value} == {}
    assert theirs[("node_infiniband_link_downed_total", (("device", "mlx5_1"), ("port", "2")))] == 1


def test_broken_tree_node_exporter_loses_everything_we_keep_the_rest(spawn: Spawn) -> None:
    root = GOLDEN / "broken" / "sys"
    theirs_text = _serve_node_exporter(spawn, root)
    _, base = _serve_ours(spawn, root)
    ours = _samples(_scrape(base), "node_infiniband_")
    assert _samples(theirs_text, "node_infiniband_") == {}
    assert 'node_scrape_collector_success{collector="infiniband"} 0' in theirs_text
    assert ours[(names.STATE_METRIC, (("device", "mlx5_2"), ("port", "1")))] == 4


def test_stops_cleanly_on_sigterm(spawn: Spawn) -> None:
    proc, base = _serve_ours(spawn, GOLDEN / "good" / "sys")
    assert "node_infiniband_info" in _scrape(base)
    assert proc.stop() == 0


def test_device_filter_flags(spawn: Spawn) -> None:
    _, base = _serve_ours(spawn, GOLDEN / "good" / "sys", "--collector.infiniband.device-include=^mlx5_1$")
    devices = {dict(labels).get("device") for _, labels in _samples(_scrape(base), "node_infiniband_")}
    assert devices == {"mlx5_1"}


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        jobsight_command("exporter", "rdma", *args), capture_output=True, text=True, timeout=60
    )


def test_bad_flags_exit_2_with_a_message() -> None:
    result = _run_cli("--collector.infiniband.device-include=(", "--web.listen-address=127.0.0.1:0")
    assert result.returncode == 2
    assert "--collector.infiniband.device-include='(' is not a valid regular expression" in result.stderr
    result = _run_cli("--collector.infiniband.device-include=a", "--collector.infiniband.device-exclude=b")
    assert result.returncode == 2
    assert "mutually exclusive" in result.stderr
    result = _run_cli("--web.listen-address=nonsense")
    assert result.returncode == 2
    assert "listen address" in result.stderr


def test_missing_sysfs_root_exits_3(tmp_path: Path) -> None:
    result = _run_cli(f"--path.sysfs={tmp_path / 'nope'}", "--web.listen-address=127.0.0.1:0")
    assert result.returncode == 3
    assert "is not a directory" in result.stderr


def test_add_arguments_shares_path_sysfs_with_a_sibling() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path.sysfs", dest="path_sysfs", default="/sys")  # as the node exporter adds it
    cli.add_arguments(parser)
    args = parser.parse_args(["--path.sysfs=/host/sys", "--collector.infiniband.device-exclude=^i40iw"])
    assert args.path_sysfs == "/host/sys"
    assert args.infiniband_device_exclude == "^i40iw"
    alone = argparse.ArgumentParser()
    cli.add_arguments(alone)
    assert alone.parse_args([]).path_sysfs == "/sys"


def test_build_gives_the_rdma_collector_under_jobsight_prefix() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    parts = cli.build(parser.parse_args([f"--path.sysfs={GOLDEN / 'good' / 'sys'}"]))
    assert parts.prefix == "jobsight"
    assert list(parts.collectors) == ["rdma"]
    ok, message = parts.health()
    assert ok and "5 devices" in message
    families = {family.name for family in parts.collectors["rdma"].collect()}
    assert names.PORT_INFO_METRIC in families
