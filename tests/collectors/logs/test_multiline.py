"""Multi-line blocks: tracebacks (also interleaved by rank), CUDA/NCCL blocks, torchrun's
ChildFailedError report, the NVRM off-bus sentence, and the bounds (lines, bytes, timeout)."""

from __future__ import annotations

from collectors.logs.multiline import Block, Multiline
from collectors.logs.parsing import TextDecoder
from collectors.logs.rules import RuleSet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(lines: list[str], clock: Clock | None = None, **kwargs: object) -> tuple[list[Block], Multiline]:
    clock = clock or Clock()
    ml = Multiline(clock=clock, **kwargs)  # type: ignore[arg-type]
    decoder = TextDecoder("auto")
    out: list[Block] = []
    offset = 0
    for text in lines:
        raw = text.encode()
        line = decoder.decode(raw, offset, offset + len(raw) + 1)
        assert line is not None
        out.extend(ml.push(line))
        offset += len(raw) + 1
    return out, ml


TRACEBACK = [
    "2026-11-29 05:00:00,000 INFO step 10",
    "Traceback (most recent call last):",
    '  File "/workspace/train.py", line 88, in <module>',
    "    main()",
    '  File "/workspace/train.py", line 80, in main',
    "    loss.backward()",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.15 GiB",
    "2026-11-29 05:00:01,000 INFO after",
]


def test_python_traceback_is_one_record() -> None:
    out, ml = run(TRACEBACK)
    out += ml.finish()
    assert [b.lines for b in out] == [1, 6, 1]
    assert out[1].text == "\n".join(TRACEBACK[1:7])
    assert out[1].offset == len(TRACEBACK[0]) + 1
    event = RuleSet.build().match(out[1].text)
    assert event is not None and event.kind == "cuda_oom"


def test_chained_traceback_stays_together() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "a.py", line 1, in f',
        "KeyError: 'x'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "a.py", line 3, in g',
        "RuntimeError: CUDA error: an illegal memory access was encountered",
        "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
        "might be incorrect.",
        "For debugging consider passing CUDA_LAUNCH_BLOCKING=1",
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
        "next record",
    ]
    out, ml = run(lines)
    assert len(out) == 1 and out[0].lines == 12
    rest = ml.finish()
    assert [b.text for b in rest] == ["next record"]


def test_interleaved_rank_tracebacks_are_rebuilt_per_rank() -> None:
    lines = [
        "[rank3]: Traceback (most recent call last):",
        "[rank5]: Traceback (most recent call last):",
        '[rank3]:   File "train.py", line 10, in <module>',
        '[rank5]:   File "train.py", line 10, in <module>',
        "[rank3]: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error, "
        "NCCL version 2.20.5",
        "[rank5]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB. GPU 5 has",
        "[rank3]: ncclSystemError: System call (e.g. socket, malloc) or external library call failed",
        "[rank3]: done",
        "[rank5]: done",
    ]
    out, ml = run(lines)
    out += ml.finish()
    by_rank = {(b.rank, b.lines): b for b in out}
    assert set(by_rank) == {(3, 4), (5, 3), (3, 1), (5, 1)}
    rules = RuleSet.build()
    nccl = rules.match(by_rank[(3, 4)].text, rank=3)
    oom = rules.match(by_rank[(5, 3)].text, rank=5)
    assert nccl is not None and nccl.kind == "nccl_error" and nccl.fields["rank"] == "3"
    assert oom is not None and oom.kind == "cuda_oom" and oom.fields["rank"] == "5"
    assert by_rank[(3, 4)].offset == 0


def test_nccl_watchdog_block() -> None:
    lines = [
        "[rank1]:[E1206 18:44:12.715298746 ProcessGroupNCCL.cpp:607] [Rank 1] Watchdog caught collective "
        "operation timeout: WorkNCCL(SeqNum=7753, OpType=ALLREDUCE, NumelIn=5, NumelOut=5, "
        "Timeout(ms)=600000) "
        "ran for 600061 milliseconds before timing out.",
        "[rank1]: Exception (either an error or timeout) detected by watchdog at work: 7753, last "
        "enqueued NCCL "
        "work: 7753, last completed NCCL work: 7752.",
        "[rank1]: Some NCCL operations have failed or timed out. Due to the asynchronous nature of "
        "CUDA kernels, "
        "subsequent GPU operations might run on corrupted/incomplete data.",
        "[rank1]: To avoid data inconsistency, we are taking the entire process down.",
        "[rank1]: terminate called after throwing an instance of 'c10::DistBackendError'",
        "[rank1]:   what():  [PG ID 0 PG GUID 0(default_pg) Rank 1] Process group watchdog thread terminated",
        "[rank1]: Exception raised from ncclCommWatchdog at "
        "../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1521",
        "[rank1]: frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x96 (0x7f in libc10.so)",
        "[rank1]: INFO next",
    ]
    out, _ml = run(lines)
    assert len(out) == 1 and out[0].lines == 8 and out[0].rank == 1
    event = RuleSet.build().match(out[0].text, rank=1)
    assert event is not None and event.kind == "nccl_timeout" and event.fields["timeout_ms"] == "600000"


def test_torchrun_child_failed_report() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "/usr/local/bin/torchrun", line 8, in <module>',
        "    sys.exit(main())",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "train.py FAILED",
        "------------------------------------------------------------",
        "Failures:",
        "  <NO_OTHER_FAILURES>",
        "------------------------------------------------------------",
        "Root Cause (first observed failure):",
        "[0]:",
        "  time      : 2023-05-19_16:39:58",
        "  host      : gpu-node-1",
        "  rank      : 5 (local_rank: 5)",
        "  exitcode  : -6 (pid: 78970)",
        "  error_file: <N/A>",
        "  traceback : Signal 6 (SIGABRT) received by PID 78970",
        "============================================================",
        "srun: error: gpu-node-1: task 0: Exited with exit code 1",
    ]
    out, ml = run(lines)
    assert len(out) == 1 and out[0].lines == 19
    event = RuleSet.build().match(out[0].text)
    assert event is not None and event.kind == "child_failed"
    assert (event.fields["exit_code"], event.fields["failed_rank"], event.fields["failed_host"]) == \
        ("-6", "5", "gpu-node-1")
    assert [b.text for b in ml.finish()] == [lines[-1]]


def test_nvrm_fallen_off_the_bus_sentence() -> None:
    lines = [
        "NVRM: The NVIDIA GPU 0000:b3:00.0",
        "NVRM: (PCI ID: 10de:26b5) installed in this system has",
        "NVRM: fallen off the bus and is not responding to commands.",
        "nvidia-modeset: something else",
    ]
    out, _ml = run(lines)
    assert len(out) == 1 and out[0].lines == 3
    event = RuleSet.build().match(out[0].text, "kmsg")
    assert event is not None and event.kind == "gpu_fallen_off_bus" and event.fields["pci"] == "0000:b3:00.0"


def test_json_records_are_never_joined() -> None:
    out, ml = run(['{"message": "Traceback (most recent call last):"}', '{"message": "  File x"}'])
    assert [b.text for b in out] == ["Traceback (most recent call last):", "  File x"]
    assert ml.pending_offset() is None


def test_max_lines_cuts_the_block() -> None:
    lines = ["Traceback (most recent call last):"] + [f'  File "f{i}.py", line {i}' for i in range(10)]
    out, ml = run(lines, max_lines=4)
    out += ml.finish()
    assert [b.lines for b in out] == [4, 4, 3]
    assert out[0].truncated and out[1].truncated and not out[2].truncated
    assert ml.truncated_blocks == 2


def test_max_bytes_cuts_the_block() -> None:
    lines = ["Traceback (most recent call last):"] + ["  " + "x" * 600 for _ in range(5)]
    out, ml = run(lines, max_bytes=1024)
    out += ml.finish()
    assert all(len(b.text) <= 1024 for b in out)
    assert sum(b.lines for b in out) == 6 and out[0].truncated


def test_flush_timeout_emits_an_idle_block() -> None:
    clock = Clock()
    out, ml = run(TRACEBACK[:3], clock=clock, flush_timeout=2.0)
    assert [b.lines for b in out] == [1]
    assert ml.pending_offset() == len(TRACEBACK[0]) + 1
    clock.now += 1.0
    assert ml.expire() == []
    clock.now += 1.5
    expired = ml.expire()
    assert [b.lines for b in expired] == [2] and ml.pending_offset() is None


def test_disabled_multiline_passes_lines_through() -> None:
    out, ml = run(TRACEBACK, enabled=False)
    assert len(out) == len(TRACEBACK) and ml.pending_offset() is None


def test_user_continuation_pattern() -> None:
    out, _ml = run(["ERROR request failed", "... caused by: timeout", "next"],
                  extra_patterns=[r"\.\.\. caused by:"])
    assert [b.lines for b in out] == [2]


def test_consecutive_tracebacks_of_one_rank_are_separate_records() -> None:
    one = ["[rank2]: Traceback (most recent call last):", '[rank2]:   File "a.py", line 1, in f',
           "[rank2]: ValueError: first"]
    two = ["[rank2]: Traceback (most recent call last):", '[rank2]:   File "a.py", line 2, in g',
           "[rank2]: KeyError: second"]
    out, ml = run(one + two)
    out += ml.finish()
    assert [b.lines for b in out] == [3, 3]
    assert out[1].text.endswith("KeyError: second") and out[1].rank == 2
