"""End-to-end, in node_exporter's style (end-to-end-test.sh): run ``jobsight exporter node`` as a
process on the fixture roots, scrape it, and compare with a checked-in expected file.

``JOBSIGHT_UPDATE_GOLDEN=1`` rewrites the expected file instead of comparing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from tests.exporters.node.helpers import NODE_FIXTURES, fixture_flags
from tests.support import REPO_ROOT, Proc, free_port, jobsight_command, promtool_check_metrics, wait_for_http

GOLDEN = NODE_FIXTURES / "e2e-output.txt"

# Samples whose values depend on the machine or the moment, not on the fixtures: scrape
# durations, the uname(2) of the host, and statfs of the (host) filesystem under the fixture root.
# node_exporter's own end-to-end test skips the same kinds of series.
VOLATILE = re.compile(
    r"^(node_scrape_collector_duration_seconds|node_uname_info"
    r"|node_filesystem_(size_bytes|free_bytes|avail_bytes|files|files_free))[{ ]"
)


def stable_lines(exposition: str) -> str:
    return "".join(line + "\n" for line in exposition.splitlines() if not VOLATILE.match(line))


def test_exporter_process_matches_golden_output(spawn: Callable[..., Proc]) -> None:
    port = free_port()
    proc = spawn(
        jobsight_command("exporter", "node", f"--web.listen-address=127.0.0.1:{port}", *fixture_flags()),
        name="node-exporter", cwd=REPO_ROOT,
    )
    exposition = wait_for_http(f"http://127.0.0.1:{port}/metrics", proc=proc).text
    # meminfo keeps the kernel's field names (node_memory_MemTotal_bytes), as node_exporter does.
    promtool_check_metrics(exposition, allow=["node_memory_"])

    got = stable_lines(exposition)
    if os.environ.get("JOBSIGHT_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    expected = GOLDEN.read_text()
    assert got == expected, (
        "scrape differs from tests/fixtures/node/e2e-output.txt "
        "(JOBSIGHT_UPDATE_GOLDEN=1 regenerates it after an intended change)"
    )
    # Every collector ran and succeeded on the well-formed fixture tree.
    for name in ("cpu", "diskstats", "filesystem", "loadavg", "meminfo", "netdev", "pressure", "stat",
                 "uname", "vmstat", "jobs"):
        assert f'node_scrape_collector_success{{collector="{name}"}} 1.0' in exposition
    health = wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    assert health.status_code == 200


def test_exporter_serves_this_host(spawn: Callable[..., Proc]) -> None:
    """The real /proc and /sys of the machine running the tests: a valid exposition, and every
    collector that any Linux host supports succeeds (PSI may be compiled out, so pressure may not)."""
    port = free_port()
    proc = spawn(jobsight_command("exporter", "node", f"--web.listen-address=127.0.0.1:{port}"),
                 name="node-exporter-host", cwd=REPO_ROOT)
    exposition = wait_for_http(f"http://127.0.0.1:{port}/metrics", proc=proc).text
    promtool_check_metrics(exposition, allow=["node_memory_"])
    for name in ("cpu", "diskstats", "filesystem", "loadavg", "meminfo", "netdev", "stat", "uname", "vmstat",
                 "jobs"):
        assert f'node_scrape_collector_success{{collector="{name}"}} 1.0' in exposition, name
    assert "node_memory_MemAvailable_bytes " in exposition
