"""The failure diagnosis through the API (issue 16): real-looking log lines go through the log
collector's own event rules into the embedded log store, the job is registered over HTTP, and the
summary route's diagnosis is checked. Prometheus is the suite's real one; these jobs' hosts have no
series in it, so the logs decide."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from collectors.logs.rules import RuleSet
from jobsight.logstore import LogRecord, SQLiteLogStore
from tests.api.conftest import ADMIN, TEAM_A, auth

NOW = time.time()
FAIL = NOW - 600.0  # every job here failed ten minutes ago
DAY = 86400.0
NCCL = (
    "[rank{r}]:[E1129 03:14:07.715298746 ProcessGroupNCCL.cpp:632] [Rank {r}] Watchdog caught collective "
    "operation timeout: WorkNCCL(SeqNum={seq}, OpType=ALLREDUCE, NumelIn=544997376, NumelOut=544997376, "
    "Timeout(ms)=600000) ran for {ran} milliseconds before timing out."
)
WATCHDOG = (
    "[rank{r}]:[E1129 03:14:07.716000000 ProcessGroupNCCL.cpp:2168] [PG ID 0 PG GUID 0(default_pg) Rank {r}] "
    "Exception (either an error or timeout) detected by watchdog at work: {seq}, "
    "last enqueued NCCL work: {seq}, last completed NCCL work: {done}."
)
OOM = (
    "[rank5]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
    "GPU 1 has a total capacity of 79.11 GiB of which 1.06 GiB is free. "
    "Including non-PyTorch memory, this process has 78.04 GiB memory in use."
)


class Lines:
    """Log lines turned into stored records by the collector's default rules, as the collector does."""

    def __init__(self) -> None:
        self.rules = RuleSet.build()
        self.records: list[LogRecord] = []

    def add(
        self,
        t: float,
        host: str,
        message: str,
        *,
        job: str | None,
        rank: int | None = None,
        source: str = "file",
    ) -> None:
        event = self.rules.match(message, source, rank)
        path = "kmsg" if source == "kmsg" else f"/logs/{job}/rank{rank}.log"
        self.records.append(
            LogRecord(
                timestamp=t,
                host=host,
                job_id=job,
                path=path,
                offset=len(self.records),
                message=message,
                rank=rank,
                source=source,
                event_kind=event.kind if event else None,
                event_severity=event.severity if event else None,
                event_fields=event.fields if event else {},
                record_id=f"diag-{len(self.records)}",
            )
        )


def _oom_then_timeouts(lines: Lines) -> None:
    """Rank 5 (host ga2) runs out of memory; ten minutes later every other rank's watchdog fires."""
    t = FAIL - 620
    lines.add(t - 30, "ga1", "[rank0]: step 1200 | loss 2.101", job="oom", rank=0)
    lines.add(t, "ga2", OOM, job="oom", rank=5)
    for r in (0, 1, 2, 3, 4, 6, 7):
        host = "ga1" if r < 4 else "ga2"
        lines.add(t + 600 + r * 0.01, host, NCCL.format(r=r, seq=7753, ran=600061), job="oom", rank=r)
        lines.add(t + 600.5, host, WATCHDOG.format(r=r, seq=7753, done=7752), job="oom", rank=r)
    lines.add(
        FAIL - 5, "ga1", "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:", job="oom"
    )


def _hang(lines: Lines) -> None:
    """Rank 3 (host gb1) stops without a word; the seven others time out at the same SeqNum."""
    for r in (0, 1, 2, 4, 5, 6, 7):
        host = "gb1" if r < 4 else "gb2"
        lines.add(FAIL - 20 + r * 0.01, host, NCCL.format(r=r, seq=4242, ran=600012), job="hang", rank=r)


def _old_and_fresh_xids(lines: Lines) -> None:
    """Host gc1: an XID 92 and an XID 48 three days before the failure, an XID 79 a minute before."""
    lines.add(
        FAIL - 3 * DAY,
        "gc1",
        "NVRM: Xid (PCI:0000:18:00): 92, pid='<unknown>', name=<unknown>, High single-bit ECC error rate",
        job=None,
        source="kmsg",
    )
    lines.add(
        FAIL - 3 * DAY + 60,
        "gc1",
        "NVRM: Xid (PCI:0000:2a:00): 48, pid='<unknown>', name=<unknown>, "
        "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, "
        "subpartition 0.",
        job=None,
        source="kmsg",
    )
    lines.add(
        FAIL - 60,
        "gc1",
        "NVRM: Xid (PCI:0000:69:00): 79, pid=4242, name=python, GPU has fallen off the bus.",
        job=None,
        source="kmsg",
    )


def _edac_and_oom_kill(lines: Lines) -> None:
    """Host gd1: a corrected host DIMM error and the kernel OOM killer taking another process; the job
    itself dies of a NaN loss."""
    lines.add(
        FAIL - 300,
        "gd1",
        "EDAC MC0: 1 CE memory read error on CPU_SrcID#0_MC#0_Chan#1_DIMM#0 "
        "(channel:1 slot:0 page:0x1234 offset:0x0 grain:32 syndrome:0x0)",
        job=None,
        source="kmsg",
    )
    lines.add(
        FAIL - 200,
        "gd1",
        "Out of memory: Killed process 4242 (node_exporter) total-vm:123456kB, "
        "anon-rss:1000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:10kB oom_score_adj:0",
        job=None,
        source="kmsg",
    )
    lines.add(
        FAIL - 100,
        "gd1",
        "{'loss': nan, 'grad_norm': nan, 'learning_rate': 2e-05, 'epoch': 1.3}",
        job="edac",
        rank=0,
    )


JOBS: dict[str, dict[str, Any]] = {
    "oom": {"nodes": ["ga1", "ga2"], "started_at": FAIL - 7200},
    "hang": {"nodes": ["gb1", "gb2"], "started_at": FAIL - 7200},
    "xids": {"nodes": ["gc1"], "started_at": FAIL - 4 * DAY},
    "edac": {"nodes": ["gd1"], "started_at": FAIL - 3600},
}


@pytest.fixture(scope="module")
def diag_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = Lines()
    for build in (_oom_then_timeouts, _hang, _old_and_fresh_xids, _edac_and_oom_kill):
        build(lines)
    path = tmp_path_factory.mktemp("diag-logs")
    store = SQLiteLogStore(path)
    try:
        store.write(lines.records)
    finally:
        store.close()
    return path


@pytest.fixture
def diag_client(make_client: Callable[..., TestClient], diag_store: Path) -> Iterator[TestClient]:
    client = make_client(settings={"log_store": str(diag_store)})
    for job_id, spec in JOBS.items():
        body = {
            "name": job_id,
            "user": "alice",
            "tenant": "team-a",
            "status": "failed",
            "exit_code": 1,
            "ended_at": FAIL,
            **spec,
        }
        response = client.put(f"/v1/jobs/{job_id}", json=body, headers=auth(ADMIN))
        assert response.status_code in (200, 201), response.text
    yield client


def diagnosis(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}/summary", headers=auth(TEAM_A))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["diagnosis"]
    return result


def test_oom_on_one_rank_is_the_cause_and_the_nccl_timeouts_its_symptoms(diag_client: TestClient) -> None:
    d = diagnosis(diag_client, "oom")
    first = d["causes"][0]
    assert "out of memory on rank 5" in first["title"], d["causes"]
    assert first["kind"] == "cuda_oom" and first["host"] == "ga2"
    assert all("NCCL" not in c["title"] for c in d["causes"])
    (symptom,) = d["symptoms"]
    assert symptom.startswith("NCCL watchdog timeouts") and "symptom of the cause above" in symptom
    assert "ranks 0-4, 6, 7 timed out in SeqNum 7753" in symptom
    assert "rank 5 missing from the timeout set" in symptom
    assert d["causes"][-1]["kind"] == "child_failed"


def test_the_rank_missing_from_the_timeout_set_is_named(diag_client: TestClient) -> None:
    d = diagnosis(diag_client, "hang")
    first = d["causes"][0]
    assert first["kind"] == "nccl_timeout"
    assert first["title"] == "NCCL collective timeout: rank 3 never joined (SeqNum 4242)"
    # The hang began when the collective did: the timeout's time minus its 600 s.
    assert "the hang began at" in first["explanation"]


def test_an_old_xid_does_not_outrank_a_fresh_xid_79(diag_client: TestClient) -> None:
    d = diagnosis(diag_client, "xids")
    titles = [c["title"] for c in d["causes"]]
    assert titles[0].startswith("XID 79 on gc1"), titles
    assert "long before the failure" in d["causes"][1]["explanation"] and titles[1].startswith(
        "XID 48 on gc1"
    )
    # XID 92 (high single-bit ECC rate) is information, never a cause.
    assert not any("XID 92" in t for t in titles)


def test_host_edac_and_another_process_oom_kill_are_no_cause(diag_client: TestClient) -> None:
    d = diagnosis(diag_client, "edac")
    kinds = [c["kind"] for c in d["causes"]]
    assert kinds == ["nan_loss", "child_failed"], d["causes"]
    assert not any("ECC" in c["title"] or "memory" in c["title"] for c in d["causes"])
    (symptom,) = d["symptoms"]
    assert "OOM killer ran on gd1" in symptom and "node_exporter pid 4242" in symptom
    assert "not shown to belong to this job" in symptom
