"""`build(args)` and `add_arguments(parser)`: what `jobsight agent` reuses; and the metric docs
are complete."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporters.gpu import cli
from jobsight.errors import ConfigError
from jobsight.serving import CollectorSet
from tests.support import FIXTURES, REPO_ROOT, wait_until

SCENARIOS = FIXTURES / "gpu" / "scenarios"


def parse(*argv: str, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    parser = parser or argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_add_arguments_shares_hostname_and_procfs_with_other_exporters() -> None:
    parser = argparse.ArgumentParser()
    # What another exporter of `jobsight agent` may have added first, with the same dests.
    parser.add_argument("--hostname", dest="hostname", default=None)
    parser.add_argument("--path.procfs", dest="path_procfs", default="/proc")
    args = parse("--hostname", "n7", "--path.procfs", "/host/proc", "--simulate", "2", parser=parser)
    assert (args.hostname, args.path_procfs, args.simulate) == ("n7", "/host/proc", 2)
    assert not hasattr(args, "web_listen_address")


def test_gpu_processes_trust_the_environment_only_when_asked() -> None:
    assert not cli.process_resolver(parse("--simulate", "1")).trust_environment
    args = parse("--simulate", "1", "--collector.jobs.trust-environment", "--path.procfs", "/host/proc")
    resolver = cli.process_resolver(args)
    assert resolver.trust_environment and str(resolver.proc_root) == "/host/proc"


def test_a_real_flag_clash_still_fails() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hostname", dest="node_name")
    with pytest.raises(argparse.ArgumentError):
        cli.add_arguments(parser)


def test_gpm_can_be_switched_off() -> None:
    assert parse("--simulate", "1").gpu_gpm is True
    assert parse("--simulate", "1", "--no-collector.gpu.gpm").gpu_gpm is False


def test_build_gives_the_gpu_collector_and_its_health(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    shutil.copy(SCENARIOS / "lost-gpu.yaml", path)
    args = parse("--scenario", str(path), "--hostname", "n7", "--job-map-dir", str(tmp_path / "none"),
                 "--collector.gpu.interval", "0.1", "--collector.gpu.stale-after", "5")
    parts = cli.build(args)
    try:
        assert set(parts.collectors) == {"gpu"} and parts.prefix == "jobsight"
        ok, message = parts.health()
        assert ok and "7/8 GPUs up" in message
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CollectorSet(parts.collectors, prefix=parts.prefix))
        text = wait_until(lambda: (t := generate_latest(registry).decode()) and "xid=" in t and t,
                          timeout=10, message="the scenario's XID")
        assert 'Hostname="n7"' in text and 'Hostname="node1"' not in text  # the flag wins
    finally:
        parts.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--simulate", "2", "--collector.gpu.interval", "0.01"], "outside 0.05-3600"),
        (["--simulate", "2", "--collector.gpu.interval", "5", "--collector.gpu.stale-after", "6"],
         "at least twice"),
        (["--simulate", "65"], "1-64 GPUs"),
    ],
)
def test_build_rejects_bad_flags(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cli.build(parse(*argv))


def test_every_published_metric_is_documented(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text((SCENARIOS / "lost-gpu.yaml").read_text().replace(
        'gpus: [0, 1, 2, 3]}', 'gpus: [0, 1, 2, 3]}\n  - {job_id: "x", gpus: [0]}'))
    parts = cli.build(parse("--scenario", str(path), "--collector.gpu.interval", "0.1"))
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CollectorSet(parts.collectors, prefix=parts.prefix))
        text = wait_until(lambda: (t := generate_latest(registry).decode()) and "xid=" in t and t,
                          timeout=10, message="the scenario's XID")
    finally:
        parts.close()
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    docs = (REPO_ROOT / "docs" / "metrics" / "gpu.md").read_text()
    undocumented = sorted(name for name in names if f"`{name}`" not in docs)
    assert not undocumented, f"add to docs/metrics/gpu.md: {undocumented}"
    assert len(names) > 45


def test_scenario_examples_in_the_docs_are_valid() -> None:
    import re

    import yaml

    from exporters.gpu.scenario import parse_scenario

    docs = (REPO_ROOT / "docs" / "gpu-exporter.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", docs, flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        scenario = parse_scenario(yaml.safe_load(block), "docs/gpu-exporter.md")
        assert scenario.gpu_count == 8
