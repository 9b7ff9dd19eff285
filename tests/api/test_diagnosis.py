"""The ranking rule of the failure diagnosis, on hand-built findings."""

from __future__ import annotations

from api.diagnosis import Finding, diagnose

T = 1_000_000.0


def f(kind: str, dt: float, source: str = "log", **kw: object) -> Finding:
    return Finding(time=T + dt, source=source, kind=kind, detail=kind, **kw)  # type: ignore[arg-type]


def test_first_hardware_fault_ranks_first_and_nccl_is_its_symptom() -> None:
    findings = [
        f("nccl_timeout", 600, host="node1", rank=2),
        f("nccl_timeout", 590, host="node1", rank=1),
        f("gpu_xid", 100, host="node2", xid=79, pci="0000:69:00"),
        f("gpu_xid", 110, source="prometheus", host="node2", gpu=3, xid=79),
        f("gpu_lost", 120, source="prometheus", host="node2", gpu=3),
        f("ib_link_down", 300, host="node1", extra={"device": "mlx5_0"}),
        f("cuda_oom", 650, host="node1", rank=0),
        f("child_failed", 700, host="node1"),
    ]
    d = diagnose(findings, started_at=T, failed_at=T + 720, exit_code=1)
    titles = [c.title for c in d.causes]
    assert titles[0] == "XID 79 on node2 GPU 3 (GPU has fallen off the bus)"
    assert d.causes[0].gpu == 3 and {e.source for e in d.causes[0].evidence} >= {"log", "prometheus"}
    assert titles[1] == "InfiniBand link down on node1 (mlx5_0)"
    assert titles[2] == "CUDA out of memory on node1 rank 0"
    assert titles[3].startswith("child process failed on node1 (exit code 1")
    assert [c.rank for c in d.causes] == [1, 2, 3, 4]
    assert d.symptoms == [
        "NCCL watchdog timeouts in ranks 1, 2; rank 1 on node1 timed out first at "
        "1970-01-12 13:56:30 UTC (a symptom of the hardware fault above)"
    ]


def test_nccl_without_hardware_fault_is_a_cause_naming_the_first_rank() -> None:
    d = diagnose(
        [f("nccl_timeout", 50, host="n2", rank=5), f("nccl_timeout", 40, host="n1", rank=3)],
        started_at=T,
        failed_at=T + 100,
    )
    assert d.causes[0].title == "NCCL collective timeout (rank 3 timed out first)"
    assert d.causes[0].kind == "nccl_timeout" and d.symptoms == []
    assert len(d.causes) == 1  # no exit code, no child failure: nothing generic to add


def test_faults_after_the_failure_or_other_jobs_windows_are_ignored() -> None:
    d = diagnose(
        [
            f("gpu_xid", 5000, host="n1", gpu=0, xid=48),
            f("gpu_xid", -9000, host="n1", gpu=0, xid=79),
            f("oom_killed", 50, host="n1"),
        ],
        started_at=T,
        failed_at=T + 100,
    )
    assert [c.kind for c in d.causes] == ["oom_killed"]


def test_application_xids_are_not_hardware() -> None:
    d = diagnose(
        [f("gpu_xid", 10, host="n1", gpu=0, xid=13), f("nan_loss", 20, host="n1", rank=0)],
        started_at=T,
        failed_at=T + 30,
        exit_code=1,
    )
    assert [c.kind for c in d.causes] == ["nan_loss", "child_failed"]


def test_no_evidence_still_says_something() -> None:
    d = diagnose(
        [], started_at=None, failed_at=T, exit_code=137, reason="killed", missing_sources=["prometheus"]
    )
    (only,) = d.causes
    assert only.title == "process failed (exit code 137; killed)"
    assert only.explanation.startswith("generic failure") and d.missing_sources == ["prometheus"]


def test_pci_only_log_line_takes_the_gpu_from_another_source_only_if_unambiguous() -> None:
    one = diagnose(
        [f("gpu_xid", 1, host="h", xid=79), f("gpu_lost", 2, source="prometheus", host="h", gpu=6)],
        started_at=T,
        failed_at=T + 10,
    )
    assert one.causes[0].title.startswith("XID 79 on h GPU 6")
    two = diagnose(
        [
            f("gpu_xid", 1, host="h", xid=79),
            f("gpu_lost", 2, source="prometheus", host="h", gpu=6),
            f("gpu_lost", 3, source="prometheus", host="h", gpu=7),
        ],
        started_at=T,
        failed_at=T + 10,
    )
    assert two.causes[0].title.startswith("XID 79 on h (")
