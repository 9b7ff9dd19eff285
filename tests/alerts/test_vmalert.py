"""Every rule file also loads in VictoriaMetrics' vmalert (``-dryRun`` parses each group and each
expression as MetricsQL, which is close to PromQL but not the same language): a site that evaluates
jobsight's alerts and rollups with vmalert against VictoriaMetrics gets no surprise at start-up."""

from __future__ import annotations

import subprocess
from pathlib import Path

from alerts.config import RULES_DIR, rule_files
from tests.support import require_binary


def dry_run(files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("vmalert"), "-dryRun", "-loggerLevel=ERROR", *(f"-rule={path}" for path in files)],
        capture_output=True, text=True, timeout=120,
    )


def test_vmalert_dry_run_accepts_every_rule_file() -> None:
    files = rule_files()
    assert any(path.name == "rollups.yaml" for path in files)
    for path in files:
        result = dry_run([path])
        assert result.returncode == 0, f"vmalert -dryRun refused {path.name}:\n{result.stdout}{result.stderr}"


def test_vmalert_dry_run_fails_on_a_broken_expression(tmp_path: Path) -> None:
    good = (RULES_DIR / "rollups.yaml").read_text()
    expression = "avg by (cluster, Hostname, gpu) (avg_over_time(DCGM_FI_DEV_GPU_UTIL[5m]))"
    assert expression in good
    assert dry_run([RULES_DIR / "rollups.yaml"]).returncode == 0
    broken = tmp_path / "broken.yaml"
    # One parenthesis missing in an otherwise real rule file.
    broken.write_text(good.replace(expression, expression[:-1], 1))
    result = dry_run([broken])
    assert result.returncode != 0
    assert "broken.yaml" in result.stdout + result.stderr
