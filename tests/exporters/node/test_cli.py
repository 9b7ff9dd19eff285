"""The command line: flags, switches, shared options inside ``jobsight agent``, bad input."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from exporters.node import cli
from jobsight.errors import BackendUnavailable, ConfigError
from tests.exporters.node.helpers import fixture_flags
from tests.support import REPO_ROOT, jobsight_command


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_and_dests_shared_with_the_other_exporters() -> None:
    args = _parse()
    assert (args.path_procfs, args.path_sysfs, args.path_rootfs) == ("/proc", "/sys", "/")
    assert all(getattr(args, f"collector_{name}") for name, _ in cli.COLLECTORS)


def test_switches_select_collectors() -> None:
    parts = cli.build(_parse(*fixture_flags(), "--no-collector.jobs", "--no-collector.filesystem"))
    assert parts.prefix == "node"
    assert "jobs" not in parts.collectors and "filesystem" not in parts.collectors
    assert "cpu" in parts.collectors


def test_add_arguments_tolerates_a_parser_that_already_has_the_shared_paths() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path.sysfs", dest="path_sysfs", default="/sys")  # as the RDMA exporter does
    cli.add_arguments(parser)
    assert parser.parse_args(["--path.sysfs=/x"]).path_sysfs == "/x"
    clashing = argparse.ArgumentParser()
    clashing.add_argument("--path.sysfs", dest="something_else")
    with pytest.raises(argparse.ArgumentError):
        cli.add_arguments(clashing)


def test_bad_flags_are_config_errors(tmp_path: Path) -> None:
    # (a missing root is BackendUnavailable: the CLI's exit 3)
    with pytest.raises(BackendUnavailable, match=r"--path\.procfs"):
        cli.build(_parse(f"--path.procfs={tmp_path / 'missing'}"))
    with pytest.raises(ConfigError, match="not a valid regex"):
        cli.build(_parse(*fixture_flags(), "--collector.netdev.device-include=("))
    with pytest.raises(ConfigError, match="mutually exclusive"):
        cli.build(_parse(*fixture_flags(), "--collector.netdev.device-include=a",
                         "--collector.netdev.device-exclude=b"))


def test_health_follows_procfs(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text("cpu 1 2 3 4\n")
    parts = cli.build(_parse(f"--path.procfs={tmp_path / 'proc'}", "--path.sysfs=/sys", "--path.rootfs=/"))
    assert parts.health()[0] is True
    (tmp_path / "proc" / "stat").unlink()
    ok, message = parts.health()
    assert not ok and "not readable" in message


def test_command_exits_3_with_a_clear_message_on_a_missing_root(tmp_path: Path) -> None:
    result = subprocess.run(
        jobsight_command("exporter", "node", "--web.listen-address=127.0.0.1:0",
                         f"--path.sysfs={tmp_path / 'nope'}"),
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert result.returncode == 3
    assert "--path.sysfs" in result.stderr and "is not a directory" in result.stderr
