"""One XID table (jobsight/xid.py, from NVIDIA's XID catalog) drives the alert rules, the log rules'
severities, the diagnosis's classes and the runbook's table; this keeps the four in agreement
(issue 16, defect 4)."""

from __future__ import annotations

import re

import pytest

from alerts.config import load_alert_rules
from alerts.xid import RULES_PATH, RUNBOOK_PATH, render_xid_rules, runbook_table, with_runbook_table
from api.diagnosis import Finding, diagnose
from collectors.logs.rules import RuleSet
from jobsight import xid as xid_table

# The codes the issue found classified four different ways, and what NVIDIA's catalog says they are.
EXPECTED_CLASSES = {
    13: "application",
    31: "application",
    43: "info",
    45: "info",
    48: "hardware",
    63: "info",
    74: "hardware",
    79: "hardware",
    92: "info",
    94: "hardware",
    109: "hardware",
    119: "driver",
    120: "driver",
    121: "info",
    136: "hardware",
    137: "application",
    154: "recovery",
    155: "driver",
    156: "info",
    157: "info",
    160: "info",
    162: "info",
    165: "info",
    **{code: "hardware" for code in range(144, 151)},
}


def kernel_line(code: int) -> str:
    return f"NVRM: Xid (PCI:0000:3b:00): {code}, pid=4242, name=python, Ch 00000008, details"


def test_the_table_classes_the_disputed_codes_as_the_catalog_does() -> None:
    for code, cls in EXPECTED_CLASSES.items():
        entry = xid_table.lookup(code)
        assert entry is not None and entry.cls == cls, (code, entry)
    assert xid_table.lookup(79) is not None and xid_table.lookup(79).immediate == "RESTART_BM"  # type: ignore[union-attr]
    assert xid_table.lookup(94).immediate == "RESTART_APP"  # type: ignore[union-attr]
    assert len(xid_table.BY_CODE) == len(xid_table.TABLE), "a code is in the table twice"


def test_committed_rule_file_is_what_the_table_generates() -> None:
    assert RULES_PATH.read_text(encoding="utf-8") == render_xid_rules(), (
        "alerts/rules/xid.yaml is out of date: run `python -m alerts.xid`"
    )


def test_alert_rules_carry_each_codes_severity_and_class() -> None:
    rules = [rule for rule in load_alert_rules() if rule.alert == "GPUXidError"]
    by_code = {int(rule.labels["xid"]): rule for rule in rules if "xid" in rule.labels}
    assert set(by_code) == set(xid_table.BY_CODE)
    for code, rule in by_code.items():
        entry = xid_table.BY_CODE[code]
        assert rule.labels["severity"] == entry.severity and rule.labels["xid_class"] == entry.cls, code
        assert f'xid="{code}"' in rule.expr
        assert entry.immediate in rule.annotations["description"]
    (unknown,) = [rule for rule in rules if "xid" not in rule.labels]
    listed = re.search(r'xid!~"([0-9|]+)"', unknown.expr)
    assert listed is not None and {int(c) for c in listed.group(1).split("|")} == set(xid_table.BY_CODE)


def test_log_rule_severities_follow_the_table() -> None:
    rules = RuleSet.build()
    for entry in xid_table.TABLE:
        event = rules.match(kernel_line(entry.code), "kmsg")
        assert event is not None and event.kind == "gpu_xid", entry.code
        assert event.severity == entry.severity, (entry.code, event.severity, entry.severity)
        assert event.fields["xid_class"] == xid_table.class_of(entry.code, kernel_line(entry.code))
    unknown = rules.match(kernel_line(999), "kmsg")
    assert unknown is not None and unknown.severity == xid_table.UNKNOWN_SEVERITY


@pytest.mark.parametrize(
    ("action", "severity", "cls"),
    [
        ("0x0 (None)", "info", "info"),
        ("0x3 (Drain P2P)", "critical", "hardware"),
        ("0x4 (Drain and Reset)", "critical", "hardware"),
        ("0x1 (GPU Reset Required)", "critical", "hardware"),
        ("0x2 (Node Reboot Required)", "critical", "hardware"),
    ],
)
def test_xid_154_takes_its_severity_from_the_recovery_action(action: str, severity: str, cls: str) -> None:
    line = f"NVRM: Xid (PCI:0000:4b:00): 154, GPU recovery action changed from 0x0 (None) to {action}"
    event = RuleSet.build().match(line, "kmsg")
    assert event is not None and event.severity == severity and event.fields["xid_class"] == cls
    assert event.fields["recovery_action"] == action.split("(")[1].rstrip(")")


def test_diagnosis_makes_a_cause_of_exactly_the_non_info_classes() -> None:
    for entry in xid_table.TABLE:
        if entry.cls == "recovery":
            continue
        finding = Finding(
            time=100.0,
            source="log",
            kind="gpu_xid",
            detail=kernel_line(entry.code),
            host="h",
            gpu=0,
            xid=entry.code,
        )
        d = diagnose([finding], started_at=0.0, failed_at=200.0)
        kinds = [c.kind for c in d.causes]
        expected = {"hardware": "gpu_xid", "driver": "gpu_xid", "application": "gpu_xid_application"}.get(
            entry.cls
        )
        if expected is None:
            assert kinds == ["child_failed"], entry.code  # information only: the generic failure remains
        else:
            assert kinds[0] == expected, entry.code


def test_runbook_table_is_generated_from_the_table() -> None:
    text = RUNBOOK_PATH.read_text(encoding="utf-8")
    assert with_runbook_table(text) == text, (
        "docs/runbooks/GPUXidError.md is out of date: run python -m alerts.xid"
    )
    table = runbook_table()
    for entry in xid_table.TABLE:
        assert f"| {entry.code} | `{entry.mnemonic}` |" in table
    assert xid_table.CATALOG_URL in text
