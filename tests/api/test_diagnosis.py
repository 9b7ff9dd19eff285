"""The ranking rule of the failure diagnosis, on hand-built findings (the same rules through the API
with real log lines: test_diagnosis_api.py)."""

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
    assert titles[2] == "CUDA out of memory on rank 0 (node1)"
    assert titles[3].startswith("child process failed on node1 (exit code 1")
    assert [c.rank for c in d.causes] == [1, 2, 3, 4]
    (symptom,) = d.symptoms
    assert symptom.startswith(
        "NCCL watchdog timeouts: ranks 1, 2 timed out; rank 0 missing from the timeout set"
    )
    assert "a symptom of the cause above" in symptom


def test_nccl_without_another_cause_names_the_missing_ranks_not_the_first_to_time_out() -> None:
    d = diagnose(
        # Not a cause, but it shows that rank 6 exists, and it did not time out either.
        [f("nccl_timeout", 50, host="n2", rank=r) for r in (0, 1, 2, 4, 5)]
        + [f("loss_scale_overflow", 10, host="n1", rank=6)],
        started_at=T,
        failed_at=T + 60,
    )
    assert d.causes[0].title == "NCCL collective timeout: ranks 3, 6 never joined"
    assert d.causes[0].kind == "nccl_timeout" and d.symptoms == []
    assert len(d.causes) == 1  # no exit code, no child failure: nothing generic to add


def test_the_rank_whose_seqnum_or_completed_work_lags_is_named() -> None:
    timeouts = [
        f("nccl_timeout", 50 + r, host="n1", rank=r, extra={"seq": "100", "ran_ms": "600000"})
        for r in (0, 1, 3)
    ]
    timeouts.append(f("nccl_timeout", 52, host="n1", rank=2, extra={"seq": "99", "ran_ms": "600000"}))
    d = diagnose(timeouts, started_at=T - 1000, failed_at=T + 60)
    assert d.causes[0].title == "NCCL collective timeout: rank 2 fell behind (SeqNum 100)"
    # The hang began at the first timeout minus the 600 s it ran for.
    assert d.causes[0].time is not None and d.causes[0].time.timestamp() == T + 50 - 600


def test_oom_long_before_the_timeout_still_causes_it_and_an_old_fault_ranks_last() -> None:
    d = diagnose(
        [
            f("gpu_xid", -3 * 86400, host="n1", gpu=2, xid=48),
            f("cuda_oom", 0, host="n2", rank=5),
            *(f("nccl_timeout", 600, host="n1", rank=r, extra={"ran_ms": "600050"}) for r in (0, 1, 2, 3, 4)),
        ],
        started_at=T - 4 * 86400,
        failed_at=T + 610,
    )
    assert [c.kind for c in d.causes] == ["cuda_oom", "gpu_xid"]
    assert "long before the hang's start" in d.causes[1].explanation


def test_a_rank_killed_before_the_others_timed_out_is_the_cause() -> None:
    d = diagnose(
        [
            f("child_failed", 10, host="n2", extra={"exit_code": "-9", "failed_rank": "6"}),
            *(f("nccl_timeout", 610, host="n1", rank=r) for r in range(6)),
        ],
        started_at=T - 100,
        failed_at=T + 620,
    )
    assert d.causes[0].title == (
        "a rank's process exited before the others on rank 6 (n2): "
        "exit code -9 (SIGKILL: often the host OOM killer)"
    )
    assert "NCCL" in d.symptoms[0]


def test_xid_154_counts_as_the_fault_it_asks_to_recover_from_only_when_it_asks() -> None:
    line = "NVRM: Xid (PCI:0000:4b:00): 154, GPU recovery action changed from 0x0 (None) to 0x{} ({})"
    reboot = f("gpu_xid", 10, host="h", gpu=1, xid=154, extra={"recovery_action": "Node Reboot Required"})
    reboot = Finding(**{**reboot.__dict__, "detail": line.format(2, "Node Reboot Required")})
    none = Finding(**{**reboot.__dict__, "gpu": 2, "detail": line.format(0, "None"), "extra": {}})
    d = diagnose([reboot, none], started_at=T, failed_at=T + 30)
    assert [c.title for c in d.causes] == ["XID 154 on h GPU 1 (GPU recovery action: Node Reboot Required)"]


def test_application_xids_name_the_process_and_are_no_hardware_fault() -> None:
    d = diagnose(
        [f("gpu_xid", 10, host="n1", gpu=0, xid=31, extra={"pid": "1234", "process": "python"})],
        started_at=T,
        failed_at=T + 30,
    )
    (cause,) = d.causes
    assert cause.kind == "gpu_xid_application"
    assert (
        cause.title
        == "XID 31 on n1 GPU 0 (GPU memory page fault) in process python (pid 1234): an application fault"
    )


def test_a_kernel_oom_kill_counts_only_when_its_victim_is_the_jobs() -> None:
    other = f("kernel_oom_kill", 10, host="n1", extra={"pid": "77", "process": "sshd", "job_id": ""})
    mine = f("kernel_oom_kill", 20, host="n1", extra={"pid": "88", "process": "python", "job_id": "4711"})
    d = diagnose([other, mine], started_at=T, failed_at=T + 30)
    assert [c.kind for c in d.causes] == ["kernel_oom_kill"]
    assert d.causes[0].evidence[0].detail == "kernel_oom_kill" and d.causes[0].time is not None
    assert d.causes[0].time.timestamp() == T + 20
    assert "sshd pid 77" in d.symptoms[0]


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


def test_informational_xids_and_host_edac_are_no_cause() -> None:
    d = diagnose(
        [
            f("gpu_xid", 5, host="n1", gpu=0, xid=63),
            f("gpu_xid", 6, host="n1", gpu=0, xid=92),
            f("host_edac", 7, host="n1", extra={"edac": "CE"}),
            f("nan_loss", 20, host="n1", rank=0),
        ],
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


def test_a_schedulers_out_of_memory_reason_is_the_cause() -> None:
    # Kubernetes' OOMKilled (the watcher's reason) and Slurm's OUT_OF_MEMORY job state name the
    # cause even when no log line did.
    for reason, title in (("out of memory: container worker-3 was OOMKilled (exit 137)", "out of memory"),
                          ("OUT_OF_MEMORY", "out of memory")):
        d = diagnose([], started_at=T, failed_at=T + 60, exit_code=137, reason=reason)
        assert title in d.causes[0].title.lower(), (reason, d.causes[0].title)
        assert d.causes[0].kind in ("oom_killed", "slurm_oom")
    plain = diagnose([], started_at=T, failed_at=T + 60, exit_code=1, reason="NonZeroExitCode")
    assert plain.causes[0].kind == "child_failed"
