"""The one XID table: what each NVIDIA XID code means and what to do about it.

Source: NVIDIA's "XID Errors" catalog for Ampere and newer GPUs,
https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html — its columns "Resolution
Bucket (Immediate Action)" and "(Investigatory Action)" are :attr:`Xid.immediate` and
:attr:`Xid.investigatory`. The page carries no version number; this table follows the catalog as
stored on 2026-11-29 (rows 1-172, driver branches up to R580), transcribed in
/work/shared/research/gpu.md §6 and cross-checked against a second public transcription of the same
page. Where the catalog is silent (171/172 are qualifiers of 48) the row says so. Mnemonics are
``nverror.h`` of NVIDIA/open-gpu-kernel-modules; Xid 154's recovery actions are NVML's
``nvmlGpuRecoveryAction_t`` (field ``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`` = 230).

Everything that classifies an XID is generated from or checked against this table: the alert rules'
code lists (``alerts/xid.py`` writes them into ``alerts/rules/gpu.yaml``), the severity of the log
collector's ``gpu_xid`` events (``collectors/logs/rules.py``), the classes the failure diagnosis
uses (``api/diagnosis.py``) and the table in ``docs/runbooks/GPUXidError.md``. A test keeps them in
agreement (``tests/alerts/test_xid_table.py``).

Classes (what a code says about *why a job failed*):
- ``hardware``: the GPU (memory, NVLink, bus, micro-controller) failed; a cause of the job's failure.
- ``driver``: the driver or GSP firmware failed (119, 120): look at the driver first, then the GPU.
- ``application``: the job's own fault (13, 31 illegal access / page fault, 137 illegal peer access);
  a cause, but a bug to fix in the application, not a GPU to drain.
- ``info``: bookkeeping or a follow-up of another XID (43, 45, 63, 92, power smoothing, retirement
  events): never a cause on its own.
- ``recovery``: 154, which states the action another XID needs; its severity is in the line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

XidClass = Literal["hardware", "driver", "application", "info", "recovery"]
Severity = Literal["critical", "warning", "info"]

CATALOG_URL = "https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html"
CATALOG_VERSION = "NVIDIA XID catalog (Ampere+), as stored 2026-11-29, rows 1-172"


@dataclass(frozen=True)
class Xid:
    code: int
    mnemonic: str
    description: str
    immediate: str  # catalog: Resolution Bucket (Immediate Action)
    investigatory: str  # catalog: Resolution Bucket (Investigatory Action)
    cls: XidClass
    severity: Severity
    action: str  # what an operator does, in one sentence


def _x(
    code: int,
    mnemonic: str,
    description: str,
    immediate: str,
    investigatory: str,
    cls: XidClass,
    severity: Severity,
    action: str,
) -> Xid:
    return Xid(code, mnemonic, description, immediate, investigatory, cls, severity, action)


_RESET = "Drain the GPU, reset it (`nvidia-smi -r -i N`) and rerun the job; replace it if the XID recurs."
_APP = "Fix or restart the application (the pid and name in the kernel line say which); the GPU is fine."

TABLE: tuple[Xid, ...] = (
    _x(
        8,
        "ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT",
        "GPU stopped processing",
        "RESTART_APP",
        "CONTACT_SUPPORT",
        "application",
        "warning",
        _APP,
    ),
    _x(
        11,
        "ROBUST_CHANNEL_FIFO_ERROR_PTE_ERR",
        "Invalid or corrupted push buffer stream",
        "RESTART_APP",
        "CHECK_APP",
        "application",
        "warning",
        _APP,
    ),
    _x(
        13,
        "ROBUST_CHANNEL_GR_EXCEPTION",
        "Graphics Engine Exception",
        "RESTART_APP",
        "WORKFLOW_XID_13",
        "application",
        "warning",
        _APP,
    ),
    _x(
        25,
        "ROBUST_CHANNEL_PUSHBUFFER_ERR",
        "Invalid or illegal push buffer stream",
        "RESTART_APP",
        "CHECK_APP",
        "application",
        "warning",
        _APP,
    ),
    _x(
        31,
        "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT",
        "GPU memory page fault",
        "RESTART_APP",
        "WORKFLOW_XID_31",
        "application",
        "warning",
        _APP,
    ),
    _x(
        32,
        "ROBUST_CHANNEL_PBDMA_ERROR",
        "Invalid or corrupted push buffer stream",
        "RESTART_APP",
        "CHECK_APP",
        "application",
        "warning",
        _APP,
    ),
    _x(
        43,
        "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR",
        "GPU stopped processing",
        "IGNORE",
        "CONTACT_SUPPORT",
        "info",
        "info",
        "Nothing on its own: it follows the application fault or XID logged just before it.",
    ),
    _x(
        45,
        "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL",
        "Preemptive cleanup, due to previous errors",
        "WORKFLOW_XID_45",
        "IGNORE",
        "info",
        "info",
        "Follow the XID before it; alone (no other XID) on an NVSwitch system, restart the fabric manager.",
    ),
    _x(
        46,
        "ROBUST_CHANNEL_GPU_TIMEOUT_ERROR",
        "GPU stopped processing",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET,
    ),
    _x(
        48,
        "ROBUST_CHANNEL_GPU_ECC_DBE",
        "Double Bit ECC Error",
        "WORKFLOW_XID_48",
        "WORKFLOW_XID_48",
        "hardware",
        "critical",
        "Drain and reset the GPU (with 63/64 it retires the page or activates the remapped row); "
        "if SRAM and the SRAM threshold flag is set, RMA.",
    ),
    _x(
        62,
        "PMU_HALT_ERROR",
        "Internal micro-controller halt",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET,
    ),
    _x(
        63,
        "INFOROM_DRAM_RETIREMENT_EVENT",
        "ECC page retirement or row remapping recording event",
        "IGNORE",
        "IGNORE",
        "info",
        "warning",
        "On Ampere and newer a row remap is now pending: reset the GPU when its job ends "
        "(GPURowRemapPending says when); count the rate.",
    ),
    _x(
        64,
        "INFOROM_DRAM_RETIREMENT_FAILURE",
        "ECC page retirement or row remapping failure",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        "Drain the GPU and open an RMA: memory could not be repaired.",
    ),
    _x(
        74,
        "NVLINK_ERROR",
        "NVLink Error",
        "WORKFLOW_NVLINK_ERR",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        "Drain the node; check `nvidia-smi nvlink -e`, reset the GPUs (or reboot) and replace on recurrence.",
    ),
    _x(
        79,
        "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS",
        "GPU has fallen off the bus",
        "RESTART_BM",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        "Drain and reboot the node (a GPU reset cannot reach a GPU that left the bus); "
        "check PCIe/power/cabling and replace on recurrence.",
    ),
    _x(
        92,
        "EXCESSIVE_SBE_INTERRUPTS",
        "High single-bit ECC error rate",
        "IGNORE",
        "CONTACT_SUPPORT",
        "info",
        "info",
        "Nothing now: corrected errors. Watch for 48/63/64 on the same GPU.",
    ),
    _x(
        94,
        "ROBUST_CHANNEL_CONTAINED_ERROR",
        "Contained memory error",
        "RESTART_APP",
        "IGNORE",
        "hardware",
        "warning",
        "Restart the application: the error was contained to it. A later GPU reset remaps the row "
        "(GPURowRemapPending).",
    ),
    _x(
        95,
        "ROBUST_CHANNEL_UNCONTAINED_ERROR",
        "Uncontained memory error",
        "RESET_GPU",
        "IGNORE",
        "hardware",
        "critical",
        _RESET,
    ),
    _x(
        109,
        "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR",
        "Context Switch Timeout Error",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET + " Right after an XID 31 of the same process it is the application's fault.",
    ),
    _x(
        110,
        "SEC_FAULT_ERROR",
        "Security Fault Error",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET,
    ),
    _x(
        119,
        "GSP_RPC_TIMEOUT",
        "GSP RPC Timeout",
        "RESET_GPU",
        "INVESTIGATE_SW",
        "driver",
        "critical",
        "Reset the GPU; on recurrence check the driver/GSP firmware version (known driver bugs) "
        "before suspecting the GPU.",
    ),
    _x(
        120,
        "GSP_ERROR",
        "GSP Error",
        "RESET_GPU",
        "INVESTIGATE_SW",
        "driver",
        "critical",
        "Reset the GPU; on recurrence check the driver/GSP firmware version before suspecting the GPU.",
    ),
    _x(
        121,
        "C2C_ERROR",
        "C2C Link corrected error",
        "IGNORE",
        "CONTACT_SUPPORT",
        "info",
        "info",
        "Nothing now: the chip-to-chip link corrected it. Repeated events: contact support.",
    ),
    _x(
        136,
        "ALI_TRAINING_FAIL",
        "Link Training Failed",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET,
    ),
    _x(
        137,
        "NVLINK_PRIV_ERR",
        "NVLink Privilege Error",
        "IGNORE",
        "XID_137_FLOW",
        "application",
        "warning",
        "An illegal peer-to-peer access by the application, reported over NVLink: fix the application.",
    ),
    _x(
        140,
        "UNRECOVERABLE_ECC_ERROR_ESCAPE",
        "ECC Unrecovered Error",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET,
    ),
    _x(
        143,
        "GPU_INIT_ERROR",
        "GPU Initialization Error",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET,
    ),
    *(
        _x(
            code,
            f"NVLINK_{unit}_ERR",
            f"NVLINK: {unit} Error",
            "WORKFLOW_NVLINK5_ERR",
            "CONTACT_SUPPORT",
            "hardware",
            "critical",
            "Decode intrInfo/errorStatus with the catalog's 'XID 144-150 Decode' table; a fatal error on a "
            "link that stays down: drain and reset, replace on recurrence. A nonfatal one alone: watch.",
        )
        for code, unit in (
            (144, "SAW"),
            (145, "RLW"),
            (146, "TLW"),
            (147, "TREX"),
            (148, "NVLPW_CTRL"),
            (149, "NETIR"),
            (150, "MSE"),
        )
    ),
    _x(
        151,
        "KEY_ROTATION_ERROR",
        "Key rotation Error",
        "RESTART_VM",
        "CONTACT_SUPPORT",
        "driver",
        "critical",
        "Restart the VM (confidential computing key rotation failed).",
    ),
    _x(
        154,
        "GPU_RECOVERY_ACTION_CHANGED",
        "GPU Recovery Action Changed",
        "XID_154",
        "XID_154",
        "recovery",
        "warning",
        "Do what the line says: None: nothing; Drain P2P / Drain and Reset / GPU Reset Required: drain and "
        "reset the GPU; Node Reboot Required: drain and reboot the node.",
    ),
    _x(
        155,
        "NVLINK_SW_DEFINED_ERROR",
        "NVLINK: SW Defined Error",
        "RESET_GPU",
        "INVESTIGATE_SW_USER",
        "driver",
        "warning",
        "Also logged when a link is put to sleep on purpose; reset only if the links stay down.",
    ),
    _x(
        156,
        "RESOURCE_RETIREMENT_EVENT",
        "Resource Retirement Event",
        "RESET_GPU",
        "IGNORE",
        "info",
        "warning",
        "Reset the GPU when its job ends to activate the retirement.",
    ),
    _x(
        157,
        "RESOURCE_RETIREMENT_FAILURE",
        "Resource Retirement Failure",
        "IGNORE",
        "CONTACT_SUPPORT",
        "info",
        "warning",
        "Nothing now, but the GPU has no retirement capacity left: plan an RMA with support.",
    ),
    _x(
        158,
        "GPU_FATAL_TIMEOUT",
        "GPU Fatal Timeout",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET,
    ),
    _x(
        160,
        "CHANNEL_RETIREMENT_EVENT",
        "Channel Retirement Event",
        "RESET_GPU",
        "IGNORE",
        "info",
        "warning",
        "Reset the GPU when its job ends to activate the retirement.",
    ),
    _x(
        161,
        "CHANNEL_RETIREMENT_FAILURE",
        "Channel Retirement Failure",
        "IGNORE",
        "CONTACT_SUPPORT",
        "info",
        "warning",
        "Nothing now; plan an RMA with support.",
    ),
    *(
        _x(
            code,
            f"POWER_SMOOTHING_{name.upper().replace(' ', '_')}",
            f"Power Smoothing HW Circuitry {name}",
            "IGNORE",
            "IGNORE",
            "info",
            "info",
            "Nothing for the job: a power-smoothing notice. Lifetime exhausted: plan a replacement "
            "if power smoothing is needed.",
        )
        for code, name in (
            (162, "capability reengaged"),
            (163, "capability disengaged"),
            (164, "low lifetime reached"),
            (165, "lifetime exhausted"),
        )
    ),
    _x(
        167,
        "PCIE_FATAL_TIMEOUT",
        "PCIe Fatal Timeout",
        "RESET_GPU",
        "CONTACT_SUPPORT",
        "hardware",
        "critical",
        _RESET,
    ),
    _x(
        171,
        "UNCORRECTABLE_DRAM_ERROR",
        "Uncorrectable DRAM Error",
        "(qualifier of 48)",
        "(qualifier of 48)",
        "hardware",
        "critical",
        "The XID 48 was in DRAM: drain and reset the GPU to retire the page / activate the remapped row.",
    ),
    _x(
        172,
        "UNCORRECTABLE_SRAM_ERROR",
        "Uncorrectable SRAM Error",
        "(qualifier of 48)",
        "(qualifier of 48)",
        "hardware",
        "critical",
        "The XID 48 was in SRAM: check `nvidia-smi -q -d ECC` SRAM Threshold Exceeded; Yes means RMA.",
    ),
)

BY_CODE: Mapping[int, Xid] = {x.code: x for x in TABLE}

# A code missing from the table (newer driver, older catalog): reported as "unclassified", never
# silently hardware or silently ignored.
UNKNOWN_SEVERITY: Severity = "warning"

# XID 154: NVML's nvmlGpuRecoveryAction_t (nvml.h) and the words the driver logs for it.
RECOVERY_ACTIONS: Mapping[int, str] = {
    0: "None",
    1: "GPU Reset Required",
    2: "Node Reboot Required",
    3: "Drain P2P",
    4: "Drain and Reset",
}
_RECOVERY_SEVERITY: Mapping[int, Severity] = {
    0: "info",
    1: "critical",
    2: "critical",
    3: "critical",
    4: "critical",
}
_RECOVERY_RE = re.compile(
    r"to\s+(?:0x(?P<code>[0-9a-fA-F]+)\s*)?\(?(?P<name>None|GPU Reset Required|"
    r"Node Reboot Required|Drain P2P|Drain and Reset)\)?"
)
_NVLINK5_FATAL_RE = re.compile(r"\b(?P<fatal>fatal|nonfatal|non-fatal)\b", re.IGNORECASE)


def lookup(code: int) -> Xid | None:
    return BY_CODE.get(code)


def codes(cls: XidClass | None = None, severity: Severity | None = None) -> tuple[int, ...]:
    """The table's codes of one class and/or severity, ascending."""
    return tuple(
        x.code
        for x in TABLE
        if (cls is None or x.cls == cls) and (severity is None or x.severity == severity)
    )


def recovery_action(message: str) -> int | None:
    """The action an XID 154 line moves *to* (``... from 0x0 (None) to 0x2 (Node Reboot Required)``),
    as NVML's number, or None when the line does not say."""
    found = _RECOVERY_RE.search(message)
    if found is None:
        return None
    if found.group("code") is not None:
        return int(found.group("code"), 16)
    name = found.group("name")
    return next(number for number, text in RECOVERY_ACTIONS.items() if text == name)


def severity_of(code: int, message: str = "") -> Severity:
    """The severity of one XID occurrence: the table's, refined by what the line itself says for the
    codes whose catalog action depends on it (154: the recovery action; 144-150: fatal/nonfatal)."""
    entry = BY_CODE.get(code)
    if entry is None:
        return UNKNOWN_SEVERITY
    if code == 154:
        action = recovery_action(message)
        return _RECOVERY_SEVERITY.get(action, "warning") if action is not None else entry.severity
    if 144 <= code <= 150:
        found = _NVLINK5_FATAL_RE.search(message)
        if found is not None and found.group("fatal").lower() != "fatal":
            return "warning"
    return entry.severity


def class_of(code: int, message: str = "") -> XidClass | Literal["unclassified"]:
    """The class of one XID occurrence; a 154 whose action is None is only information, and a 154
    that asks for a reset or reboot counts as the hardware fault it summarises."""
    entry = BY_CODE.get(code)
    if entry is None:
        return "unclassified"
    if code == 154:
        return "hardware" if severity_of(code, message) == "critical" else "info"
    return entry.cls


def regex_alternation(numbers: tuple[int, ...]) -> str:
    """``48|62|64`` for a PromQL ``=~`` matcher."""
    return "|".join(str(n) for n in numbers)
