"""The rule files, checked and unit-tested by the real promtool, and held to the house rules: every
alert has a severity, a summary, a description and a runbook that exists, and a promtool case that
fires it and one that does not."""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.config import (
    DEFAULT_JOB_STALL_SECONDS,
    JOB_STALLED_EXPR,
    RUNBOOK_BASE_URL,
    load_alert_rules,
    render_rules,
    rule_files,
    rule_test_files,
)
from jobsight.errors import ConfigError
from tests.support import REPO_ROOT, require_binary

RUNBOOKS = REPO_ROOT / "docs" / "runbooks"
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_SECTIONS = ("Meaning", "Likely causes", "What to check", "What to do")


STALL_DESCRIPTION = (
    "Job 7 has written no log record for 6m 0s and none of its GPUs has computed in that window "
    "(tensor pipes idle, or utilisation under 1%). It may be hung (deadlock, stuck I/O, dead peer)."
)


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_there_are_rule_files_and_test_files() -> None:
    assert [p.name for p in rule_files()] == [
        "gpu.yaml",
        "health.yaml",
        "jobs.yaml",
        "node.yaml",
        "rdma.yaml",
        "recording.yaml",
        "rollups.yaml",
        "training.yaml",
        "xid.yaml",
    ]
    assert len(rule_test_files()) == len(rule_files())


def test_promtool_check_rules_passes() -> None:
    result = _promtool("check", "rules", *map(str, rule_files()))
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}{result.stderr}"


def test_promtool_test_rules_passes() -> None:
    result = _promtool("test", "rules", *map(str, rule_test_files()))
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}{result.stderr}"


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path: Path) -> None:
    # The unit tests must be able to fail: the same GPULost case expecting the wrong severity.
    rules = rule_files()[0]
    case = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'jobsight_gpu_up{Hostname="n", gpu="0", UUID="G"}', "values": "0 0"}
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "1m",
                        "alertname": "GPULost",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "info", "Hostname": "n", "gpu": "0", "UUID": "G"}}
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "wrong_test.yaml"
    path.write_text(yaml.safe_dump(case))
    result = _promtool("test", "rules", str(path))
    assert result.returncode != 0
    assert "GPULost" in result.stdout + result.stderr


def test_every_rule_has_severity_annotations_and_an_existing_runbook() -> None:
    rules = load_alert_rules()
    assert len({rule.alert for rule in rules}) >= 25
    problems: list[str] = []
    for rule in rules:
        where = f"{rule.file.name}:{rule.alert}"
        if rule.labels.get("severity") not in SEVERITIES:
            problems.append(f"{where}: severity {rule.labels.get('severity')!r}")
        for key in ("summary", "description", "runbook_url"):
            if not rule.annotations.get(key, "").strip():
                problems.append(f"{where}: no {key}")
        url = rule.annotations.get("runbook_url", "")
        if url != f"{RUNBOOK_BASE_URL}{rule.alert}.md":
            problems.append(f"{where}: runbook_url {url!r} is not {RUNBOOK_BASE_URL}{rule.alert}.md")
        runbook = RUNBOOKS / f"{rule.alert}.md"
        if not runbook.is_file():
            problems.append(f"{where}: {runbook} missing")
        else:
            text = runbook.read_text(encoding="utf-8")
            if text.splitlines()[0] != f"# {rule.alert}":
                problems.append(f"{where}: {runbook} does not start with the heading '# {rule.alert}'")
            for section in RUNBOOK_SECTIONS:
                if f"\n## {section}\n" not in text:
                    problems.append(f"{where}: {runbook} has no '## {section}' section")
    assert not problems, "\n".join(problems)


def test_conventional_alert_names_and_labels_exist() -> None:
    by_name = {rule.alert: rule for rule in load_alert_rules()}
    for name in ("GPUXidError", "GPULost", "JobFailed", "NodeDown"):
        assert name in by_name, name
    assert "jobsight_gpu_xid_errors_total" in by_name["GPUXidError"].expr
    assert 'jobsight_job_status{status="failed"} == 1' in by_name["JobFailed"].expr
    assert "jobsight_gpu_up == 0" in by_name["GPULost"].expr


def _duration_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]]


def test_fault_to_notification_rules_wait_at_most_15s() -> None:
    # The demo measures fault -> notification within 60 s; the "for" of these must stay short.
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in {"GPUXidError", "GPULost", "JobFailed"}:
                    assert _duration_s(rule.get("for", "0s")) <= 15, rule["alert"]


def _test_cases() -> dict[str, dict[str, list[set[str]]]]:
    """alertname -> {"firing": [severities per firing case], "quiet": [...]} from all test files."""
    cases: dict[str, dict[str, list[set[str]]]] = defaultdict(lambda: {"firing": [], "quiet": []})
    for path in rule_test_files():
        document: dict[str, Any] = yaml.safe_load(path.read_text())
        for group in document["tests"]:
            for case in group.get("alert_rule_test") or []:
                expected = case.get("exp_alerts") or []
                kind = "firing" if expected else "quiet"
                severities = {str(alert["exp_labels"].get("severity")) for alert in expected}
                cases[case["alertname"]][kind].append(severities)
    return cases


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    cases = _test_cases()
    problems = []
    for rule in load_alert_rules():
        found = cases.get(rule.alert, {"firing": [], "quiet": []})
        severity = rule.labels["severity"]
        if not any(severity in severities for severities in found["firing"]):
            problems.append(f"{rule.alert} (severity {severity}): no promtool case fires it")
        if not found["quiet"]:
            problems.append(f"{rule.alert}: no promtool case where it stays quiet")
    assert not problems, "\n".join(problems)


def test_committed_job_stalled_expression_matches_the_template() -> None:
    stalled = [rule for rule in load_alert_rules() if rule.alert == "JobStalled"]
    assert len(stalled) == 1
    assert stalled[0].expr == JOB_STALLED_EXPR.format(seconds=DEFAULT_JOB_STALL_SECONDS)


def test_render_rules_with_default_window_copies_the_tested_files(tmp_path: Path) -> None:
    written = render_rules(tmp_path)
    assert [p.name for p in written] == [p.name for p in rule_files()]
    for source, copy in zip(rule_files(), written, strict=True):
        assert copy.read_bytes() == source.read_bytes()


def test_render_rules_with_another_stall_window_changes_when_job_stalled_fires(tmp_path: Path) -> None:
    out = tmp_path / "rules"
    render_rules(out, job_stall_after="5m")
    result = _promtool("check", "rules", *(str(p) for p in sorted(out.glob("*.yaml"))))
    assert result.returncode == 0, result.stdout + result.stderr
    stalled = [rule for rule in load_alert_rules(sorted(out.glob("*.yaml"))) if rule.alert == "JobStalled"]
    assert "> 300" in stalled[0].expr and "[300s]" in stalled[0].expr
    # With a 5-minute window a job silent since t=60s is stalled at 7m (silence 360 s) but not at 5m.
    test = {
        "rule_files": [str(out / "jobs.yaml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'jobsight_log_job_last_record_timestamp_seconds{job_id="7"}',
                        "values": "60x10",
                    },
                    {"series": 'DCGM_FI_DEV_GPU_UTIL{Hostname="n", gpu="0"}', "values": "0x10"},
                    {"series": 'jobsight_gpu_job_info{Hostname="n", gpu="0", job_id="7"}', "values": "1x10"},
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "JobStalled", "exp_alerts": []},
                    {
                        "eval_time": "7m",
                        "alertname": "JobStalled",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "job_id": "7"},
                                "exp_annotations": {
                                    "summary": "Job 7 looks stalled",
                                    "description": STALL_DESCRIPTION,
                                    "runbook_url": f"{RUNBOOK_BASE_URL}JobStalled.md",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    test_path = tmp_path / "stall_test.yaml"
    test_path.write_text(yaml.safe_dump(test))
    result = _promtool("test", "rules", str(test_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_render_rules_with_another_runbook_base_points_every_rule_there(tmp_path: Path) -> None:
    out = tmp_path / "rules"
    render_rules(out, runbook_base_url="https://wiki.example.org/runbooks")
    rendered = load_alert_rules(sorted(out.glob("*.yaml")))
    assert len(rendered) == len(load_alert_rules())
    for rule in rendered:
        assert rule.annotations["runbook_url"] == f"https://wiki.example.org/runbooks/{rule.alert}.md"
    result = _promtool("check", "rules", *(str(p) for p in sorted(out.glob("*.yaml"))))
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(ConfigError, match="invalid runbook_base_url"):
        render_rules(tmp_path / "bad", runbook_base_url="wiki/runbooks")


@pytest.mark.parametrize("window", ["", "soon", "30s", "-5m"])
def test_render_rules_rejects_a_bad_stall_window(tmp_path: Path, window: str) -> None:
    with pytest.raises(ConfigError, match=r"duration|too short"):
        render_rules(tmp_path, job_stall_after=window)
