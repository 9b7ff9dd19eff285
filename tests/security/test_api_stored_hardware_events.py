"""A hardware event stored from a user-writable source (an older collector, or a record put into
Elasticsearch by something else) is not believed by the API either: the diagnosis takes XIDs,
ECC errors and link drops from the kernel's own log only (jobsight/trust.py)."""

from __future__ import annotations

import pytest

from api.summary import findings_from_events
from jobsight.logstore import LogRecord

pytestmark = pytest.mark.security


def _xid(source: str) -> LogRecord:
    return LogRecord(
        record_id=f"r-{source}", timestamp=1_800_000_000.0, host="node2", job_id="4711", path="/x",
        offset=0, message="NVRM: Xid (PCI:0000:5d:00): 79, pid=1, GPU has fallen off the bus.",
        source=source, event_kind="gpu_xid", event_severity="critical",
        event_fields={"xid": "79", "pci": "0000:5d:00"},
    )


def test_a_forged_xid_from_a_file_is_no_finding_and_the_kernels_is() -> None:
    assert findings_from_events([_xid("file"), _xid("cri"), _xid("docker")], {}) == []
    [finding] = findings_from_events([_xid("kmsg")], {})
    assert finding.kind == "gpu_xid" and finding.xid == 79
