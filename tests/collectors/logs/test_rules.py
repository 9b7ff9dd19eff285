"""Every default event rule against a real-looking line, plus the rules-file format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors.logs.rules import RuleSet, kinds, take_refused
from jobsight.errors import ConfigError
from jobsight.trust import HARDWARE_KINDS
from tests.support import FIXTURES

CASES: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "logs" / "event_lines.yaml").read_text())
REQUIRED_KINDS = {
    "nccl_timeout", "nccl_error", "cuda_oom", "cuda_illegal_access", "nan_loss", "loss_scale_overflow",
    "child_failed", "oom_killed", "kernel_oom_kill", "gpu_xid", "gpu_fallen_off_bus", "ecc_error",
    "ib_link_down", "host_edac", "nccl_watchdog", "nccl_heartbeat", "cuda_launch_failure", "nvlink_error",
    "slurm_oom", "nvswitch_sxid", "ib_port_error", "checkpoint_error",
}
# Ordinary training output that must not become an event.
QUIET_LINES = [
    "2026-11-29 05:00:00,123 INFO step 100 | loss 2.3451 | lr 3.0e-04 | grad_norm 1.02 | 812 tokens/s",
    "{'loss': 1.2345, 'grad_norm': 0.87, 'learning_rate': 2e-05, 'epoch': 1.0}",
    "NCCL INFO Channel 00/32 :    0   1   2   3   4   5   6   7",
    "NCCL INFO Using network IB",
    "[rank3]: INFO: saving checkpoint to /ckpt/step_1000 (inference mode off)",
    "Epoch 3: 100%|██████████| 500/500 [01:23<00:00,  6.01it/s, loss=0.412]",
    "mlx5_core 0000:08:00.0 mlx5_0: Port: 1 Link ACTIVE",
    "mlx5_core 0000:3b:00.0 ens1f0np0: Link up",
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15",
    "Memory usage: 71.2 GiB of 80 GiB, info: nominal",
    "nanoGPT: using dataset openwebtext, infinite iterator",
]


# Issue 16: signatures added with the fault knowledge, in the formats the tools print today.
SIGNATURES: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "logs" / "fault_signatures.yaml").read_text())
# Not faults: a running minimum that starts at inf, and corrected host memory errors are no GPU ECC error.
NOT_FAULTS = [
    "step 10 | best val loss: inf | val loss 2.81",
    "min_loss = inf",
]


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.build()


def test_defaults_cover_every_kind_the_other_components_use(rules: RuleSet) -> None:
    assert set(kinds(rules)) == REQUIRED_KINDS
    assert {case["kind"] for case in CASES} | {case["kind"] for case in SIGNATURES} == REQUIRED_KINDS


@pytest.mark.parametrize("case", CASES, ids=[f"{c['kind']}-{i}" for i, c in enumerate(CASES)])
def test_default_rule_matches_real_line(rules: RuleSet, case: dict[str, Any]) -> None:
    # Hardware kinds are believed from the kernel's log only (jobsight/trust.py).
    source = "kmsg" if case["kind"] in HARDWARE_KINDS else "file"
    event = rules.match(case["line"], source, case.get("rank"))
    assert event is not None, f"no event for {case['line']!r}"
    assert event.kind == case["kind"]
    for key, value in case["fields"].items():
        assert event.fields.get(key) == value, (key, event.fields)
    if "severity" in case:
        assert event.severity == case["severity"]


@pytest.mark.parametrize("source", ["file", "cri", "docker"])
def test_hardware_kinds_are_not_believed_from_user_writable_sources(source: str) -> None:
    rules = RuleSet.build()
    hardware = [case for case in CASES if case["kind"] in HARDWARE_KINDS]
    assert {case["kind"] for case in hardware} >= {"gpu_xid", "gpu_fallen_off_bus", "ecc_error",
                                                   "ib_link_down", "kernel_oom_kill"}
    for case in hardware:
        event = rules.match(case["line"], source, case.get("rank"))
        assert event is None or event.kind not in HARDWARE_KINDS, (case["line"], event)
        assert rules.match(case["line"], "kmsg", case.get("rank")) is not None
    refused = take_refused(rules)
    assert sum(count for (src, _kind), count in refused.items() if src == source) == len(hardware)
    assert take_refused(rules) == {}
    # Application events still come from the same source.
    oom = rules.match("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 3 has",
                      source)
    assert oom is not None and oom.kind == "cuda_oom"


def test_a_user_rule_cannot_make_a_hardware_kind_from_a_file(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("rules:\n  - kind: gpu_xid\n    sources: [file]\n"
                    "    patterns: ['FAKE XID (?P<xid>\\d+)']\n")
    rules = RuleSet.build([user])
    assert rules.match("FAKE XID 79", "file") is None
    assert take_refused(rules) == {("file", "gpu_xid"): 1}


@pytest.mark.parametrize("case", SIGNATURES, ids=[f"{c['kind']}-{i}" for i, c in enumerate(SIGNATURES)])
def test_issue_16_signatures(rules: RuleSet, case: dict[str, Any]) -> None:
    event = rules.match(case["line"], "kmsg")
    assert event is not None, case["line"]
    assert (event.kind, event.severity) == (case["kind"], case["severity"])
    for key, value in case["fields"].items():
        assert event.fields.get(key) == value, (key, event.fields)


@pytest.mark.parametrize("line", NOT_FAULTS)
def test_running_minimum_of_inf_is_no_nan_loss(rules: RuleSet, line: str) -> None:
    assert rules.match(line) is None


def test_host_edac_correctable_error_is_information_not_a_gpu_ecc_error(rules: RuleSet) -> None:
    line = "EDAC MC0: 1 CE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 (channel:1)"
    event = rules.match(line, "kmsg")
    assert event is not None and event.kind == "host_edac" and event.severity == "info"
    # A corrected single-bit GPU ECC line is no event either: the exporter counts those.
    assert rules.match("GPU 0: Correctable ECC error count 3 (single-bit)", "kmsg") is None


@pytest.mark.parametrize("line", QUIET_LINES)
def test_ordinary_lines_are_not_events(rules: RuleSet, line: str) -> None:
    assert rules.match(line) is None


def test_user_rules_come_first_and_defaults_can_be_disabled(tmp_path: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(
        "rules:\n"
        "  - kind: checkpoint_failed\n"
        "    severity: warning\n"
        "    contains: ['checkpoint']\n"
        "    patterns: ['failed to save checkpoint (?P<step>\\d+)']\n"
        "  - kind: cuda_oom\n"
        "    severity: critical\n"
        "    patterns: ['CUDA out of memory']\n"
    )
    rules = RuleSet.build([user], disable=["nan_loss"])
    event = rules.match("ERROR failed to save checkpoint 1200: disk full")
    assert event is not None and event.kind == "checkpoint_failed" and event.fields == {"step": "1200"}
    oom = rules.match("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1 GiB")
    assert oom is not None and oom.severity == "critical"
    assert rules.match("{'loss': nan}") is None


def test_rule_restricted_to_sources(tmp_path: Path) -> None:
    user = tmp_path / "kernel.yaml"
    user.write_text("rules:\n  - kind: hung_task\n    sources: [kmsg]\n"
                    "    patterns: ['blocked for more than']\n")
    rules = RuleSet.build([user], use_defaults=False)
    line = "INFO: task python:1234 blocked for more than 120 seconds."
    assert rules.match(line, "file") is None
    matched = rules.match(line, "kmsg")
    assert matched is not None and matched.kind == "hung_task"


@pytest.mark.parametrize(("text", "message"), [
    ("rules:\n  - kind: x\n    patterns: ['(unclosed']\n", "rules.0.patterns"),
    ("rules:\n  - kind: Bad-Kind\n    patterns: ['a']\n", "rules.0.kind"),
    ("rules:\n  - kind: x\n    severity: fatal\n    patterns: ['a']\n", "rules.0.severity"),
    ("rules:\n  - kind: x\n    patterns: []\n", "rules.0.patterns"),
    ("rules:\n  - kind: x\n    pattern: 'a'\n    patterns: ['a']\n", "rules.0.pattern"),
])
def test_bad_rules_file_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        RuleSet.build([bad])
    assert str(bad) in str(info.value)


def test_disable_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nccl_timeot"):
        RuleSet.build(disable=["nccl_timeot"])
