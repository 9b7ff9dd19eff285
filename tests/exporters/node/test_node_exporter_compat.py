"""Our exporter against Debian's node_exporter 1.5 on the same fixture roots: every sample it
publishes for the collectors we share must be in ours with the same labels and value.

Free space and free inodes are read live by statfs on the filesystem that holds the fixture root,
which other processes write to between the two scrapes; only those three series are compared
with a tolerance (0.1 %), everything else exactly.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

import httpx
import pytest

from exporters.node.filesystem import DEFAULT_MOUNT_POINTS_EXCLUDE
from tests.exporters.node.helpers import fixture_flags, samples, types
from tests.support import (
    REPO_ROOT,
    Proc,
    free_port,
    jobsight_command,
    promtool_check_metrics,
    require_binary,
    wait_for_http,
)

SHARED = ("cpu", "diskstats", "filesystem", "loadavg", "meminfo", "netdev", "pressure", "stat", "uname",
          "vmstat")
LIVE_FILESYSTEM = ("node_filesystem_free_bytes", "node_filesystem_avail_bytes", "node_filesystem_files_free")
# Theirs only, by design: the Go runtime and HTTP handler, the build info and the durations.
NOT_COMPARED = ("go_", "process_", "promhttp_", "node_exporter_build_info", "node_scrape_collector_duration")


def help_lines(exposition: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in exposition.splitlines():
        if line.startswith("# HELP "):
            name, _, text = line[len("# HELP "):].partition(" ")
            found[name] = text
    return found


def node_exporter_version(binary: str) -> str:
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"version (\d+\.\d+\.\d+)", result.stdout + result.stderr)
    assert match, f"cannot tell the version of {binary}: {result.stdout}{result.stderr}"
    return match.group(1)


def test_same_samples_as_node_exporter(spawn: Callable[..., Proc]) -> None:
    binary = require_binary("prometheus-node-exporter")
    version = node_exporter_version(binary)
    if not version.startswith("1.5."):
        # Later releases changed label sets (the filesystem metrics gained a `device_error`
        # label in 1.8, node_disk_info a `rotational` one): our target is 1.5, Debian 12's.
        pytest.skip(f"the comparison targets node_exporter 1.5 (Debian 12); {binary} is {version}")
    their_port, our_port = free_port(), free_port()
    theirs = spawn(
        [binary, "--collector.disable-defaults", *(f"--collector.{name}" for name in SHARED),
         # 1.5 reads interface counters over netlink by default (the live host); the file
         # under --path.procfs is what both can be given.
         "--no-collector.netdev.netlink",
         # Debian changes two upstream defaults (lo excluded, more mount points excluded); pin
         # both to upstream's, which are ours.
         "--collector.netdev.device-exclude=^$",
         f"--collector.filesystem.mount-points-exclude={DEFAULT_MOUNT_POINTS_EXCLUDE}",
         *fixture_flags(), f"--web.listen-address=127.0.0.1:{their_port}"],
        name="node_exporter",
    )
    ours = spawn(
        jobsight_command("exporter", "node", f"--web.listen-address=127.0.0.1:{our_port}", *fixture_flags()),
        name="jobsight", cwd=REPO_ROOT,
    )
    their_text = wait_for_http(f"http://127.0.0.1:{their_port}/metrics", proc=theirs).text
    our_text = wait_for_http(f"http://127.0.0.1:{our_port}/metrics", proc=ours).text
    promtool_check_metrics(our_text, allow=["node_memory_"])  # the kernel's camelCase meminfo names
    their_samples, our_samples = samples(their_text), samples(our_text)

    compared = 0
    problems: list[str] = []
    for key, value in sorted(their_samples.items()):
        name = key[0]
        if name.startswith(NOT_COMPARED):
            continue
        compared += 1
        if key not in our_samples:
            problems.append(f"missing {key} = {value}")
        elif name in LIVE_FILESYSTEM:
            if abs(our_samples[key] - value) > 0.001 * max(abs(value), 1.0):
                problems.append(f"{key}: node_exporter {value}, ours {our_samples[key]}")
        elif our_samples[key] != value:
            problems.append(f"{key}: node_exporter {value}, ours {our_samples[key]}")
    assert not problems, "\n".join(problems)
    # A guard against comparing nothing: the fixtures produce well over a hundred shared samples,
    # across every shared collector.
    assert compared > 150
    for name in SHARED:
        assert their_samples[("node_scrape_collector_success", (("collector", name),))] == 1.0, name
        assert our_samples[("node_scrape_collector_success", (("collector", name),))] == 1.0, name

    their_types, our_types = types(their_text), types(our_text)
    for family, kind in their_types.items():
        if family in our_types:
            assert our_types[family] == kind, f"{family}: node_exporter says {kind}, ours {our_types[family]}"
    # HELP texts too, so dashboards' tooltips read the same (the self metrics' HELP is the kernel's).
    their_help, our_help = help_lines(their_text), help_lines(our_text)
    for name, text in their_help.items():
        if name in our_help and not name.startswith("node_scrape_collector_"):
            assert our_help[name] == text, f"HELP of {name}: node_exporter {text!r}, ours {our_help[name]!r}"

    # Nothing of ours under node_exporter's names that it does not publish on the same input.
    ours_only = {
        key for key in our_samples
        if key[0].startswith("node_") and not key[0].startswith("node_scrape_") and key not in their_samples
    }
    assert not ours_only, sorted(ours_only)
    assert httpx.get(f"http://127.0.0.1:{our_port}/healthz", timeout=5).status_code == 200
