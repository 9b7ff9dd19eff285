"""The test world: job ``demo-fail`` on node1+node2 (XID 79 on node2 GPU 3, then NCCL watchdog
timeouts in other ranks, then a non-zero exit), job ``ok-job`` on node3 (GPU 1 a straggler), and
``disc-1`` on node4, seen by the exporters but never registered, and ``train-hang`` on node1+node2,
a running job whose four ranks report their steps (jobsight.training): rank 1 steps 1.5x slower
than the others, rank 3 stops first and the others 30 s later (a hang). Times are relative to
``base``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobsight.logstore import LogRecord, SQLiteLogStore
from tests.api.promdata import SeriesBook, gpu_labels

STEP = 15.0


@dataclass(frozen=True)
class Scenario:
    base: float
    now: float

    # demo-fail
    @property
    def demo_start(self) -> float:
        return self.base

    @property
    def xid_at(self) -> float:
        return self.base + 40 * 60

    @property
    def nccl_at(self) -> float:
        return self.base + 50 * 60

    @property
    def demo_end(self) -> float:
        return self.base + 52 * 60

    @property
    def ok_end(self) -> float:
        return self.base + 60 * 60

    # train-hang
    @property
    def train_start(self) -> float:
        return self.base + 60 * 60

    @property
    def train_hang_at(self) -> float:
        """When the last ranks stepped; rank 3 stopped 30 s before."""
        return self.base + 90 * 60


DEMO_GPUS = [("node1", g) for g in range(4)] + [("node2", g) for g in range(4)]
OK_GPUS = [("node3", 0), ("node3", 1)]
DISC_GPUS = [("node4", 0)]
TRAIN_JOB = "train-hang"
TRAIN_RANKS = {0: "node1", 1: "node1", 2: "node2", 3: "node2"}
TRAIN_SLOW_RANK = 1
TRAIN_STOPPED_RANK = 3
BROKEN = ("node2", 3)
ECC_GPU = ("node3", 0)  # two double-bit ECC errors 30 minutes into ok-job


def make_scenario(now: float) -> Scenario:
    base = (int(now) // 60) * 60 - 2 * 3600
    return Scenario(base=float(base), now=now)


def _times(start: float, end: float) -> list[float]:
    n = int((end - start) // STEP)
    return [start + i * STEP for i in range(n + 1)]


def build_series(s: Scenario) -> SeriesBook:
    book = SeriesBook()
    t_all = _times(s.base - 600, s.ok_end + 600)

    def gpu(
        host: str, index: int, job: str, start: float, end: float, util: float, lost_at: float | None = None
    ) -> None:
        labels = gpu_labels(host, index)
        info = {"Hostname": host, "gpu": str(index), "UUID": labels["UUID"], "job_id": job}
        book.add_range(
            "jobsight_gpu_job_info",
            info,
            t_all + _times(s.ok_end + 615, s.now + 3600) if job == "disc-1" else t_all,
            lambda t: 1.0 if start <= t <= end else None,
        )

        def alive(t: float) -> bool:
            return lost_at is None or t < lost_at

        book.add_range(
            "jobsight_gpu_info",
            {**labels, "driver_version": "550.54", "cuda_version": "12.4", "backend": "test"},
            t_all,
            lambda t: 1.0,
        )
        book.add_range("jobsight_gpu_up", labels, t_all, lambda t: 1.0 if alive(t) else 0.0)
        book.add_range(
            "DCGM_FI_DEV_GPU_UTIL",
            labels,
            t_all,
            lambda t: (util if start <= t <= end else 0.0) if alive(t) else None,
        )
        book.add_range(
            "DCGM_FI_DEV_FB_USED",
            labels,
            t_all,
            lambda t: (40000.0 + 100 * index if start <= t <= end else 0.0) if alive(t) else None,
        )
        book.add_range(
            "DCGM_FI_DEV_POWER_USAGE",
            labels,
            t_all,
            lambda t: (300.0 + index if start <= t <= end else 60.0) if alive(t) else None,
        )
        book.add_range("DCGM_FI_DEV_GPU_TEMP", labels, t_all, lambda t: 60.0 if alive(t) else None)
        book.add_range("DCGM_FI_DEV_SM_CLOCK", labels, t_all, lambda t: 1980.0 if alive(t) else None)
        book.add_range("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", labels, t_all, lambda t: 0.5 if alive(t) else None)
        # mJ counter: 300 W while busy.
        book.add_range(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            labels,
            t_all,
            lambda t: (t - t_all[0]) * 300_000.0 if alive(t) else None,
        )
        throttle = host == "node1" and index == 0
        book.add_range(
            "DCGM_FI_DEV_POWER_VIOLATION",
            labels,
            t_all,
            lambda t: (
                (max(0.0, min(t, start + 600) - start) * 1e8 if throttle else 0.0) if alive(t) else None
            ),
        )
        ecc_at = s.base + 30 * 60 if (host, index) == ECC_GPU else None
        book.add_range(
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
            labels,
            t_all,
            lambda t: (2.0 if ecc_at is not None and t >= ecc_at else 0.0) if alive(t) else None,
        )
        if lost_at is not None:
            xid_labels = {**labels, "xid": "79"}
            book.add_range(
                "jobsight_gpu_xid_errors_total", xid_labels, t_all, lambda t: 1.0 if t >= lost_at else None
            )
            book.add_range("DCGM_FI_DEV_XID_ERRORS", labels, t_all, lambda t: 79.0 if t >= lost_at else 0.0)

    for host, index in DEMO_GPUS:
        lost = s.xid_at if (host, index) == BROKEN else None
        gpu(host, index, "demo-fail", s.demo_start, s.demo_end, 80.0 + index, lost_at=lost)
    for host, index in OK_GPUS:
        gpu(host, index, "ok-job", s.base, s.ok_end, 90.0 if index == 0 else 20.0)
    for host, index in DISC_GPUS:
        gpu(host, index, "disc-1", s.base, s.now + 3600, 50.0)

    for host in ("node1", "node2", "node3"):
        port = {"Hostname": host, "device": "mlx5_0", "port": "1"}
        book.add_range(
            "node_infiniband_port_data_received_bytes_total", port, t_all, lambda t: (t - t_all[0]) * 1e9
        )
        book.add_range(
            "node_infiniband_port_data_transmitted_bytes_total", port, t_all, lambda t: (t - t_all[0]) * 2e9
        )
        book.add_range("node_infiniband_link_downed_total", port, t_all, lambda t: 0.0)
        book.add_range("node_infiniband_symbol_error_total", port, t_all, lambda t: 0.0)
        book.add_range(
            "node_cpu_seconds_total",
            {"Hostname": host, "cpu": "0", "mode": "idle"},
            t_all,
            lambda t: (t - t_all[0]) * 0.25,
        )
    for host in ("node1", "node2"):
        job = {"Hostname": host, "job_id": "demo-fail"}
        book.add_range(
            "jobsight_job_cpu_seconds_total",
            job,
            t_all,
            lambda t: max(0.0, min(t, s.demo_end) - s.demo_start) * 4.0,
        )
        book.add_range(
            "jobsight_job_memory_rss_bytes",
            job,
            t_all,
            lambda t: 64 * 2**30 if s.demo_start <= t <= s.demo_end else None,
        )
    train_series(book, s)
    return book


def train_series(book: SeriesBook, s: Scenario) -> None:
    """``train-hang``'s step telemetry, as the agent's OTLP receiver publishes it, sampled every
    scrape until an hour after ``now`` (a running job: the receiver keeps exporting the last-step
    gauge of a live rank)."""
    times = _times(s.train_start, s.now + 3600)
    for rank, host in TRAIN_RANKS.items():
        labels = {"job_id": TRAIN_JOB, "rank": str(rank), "Hostname": host}
        seconds = 1.5 if rank == TRAIN_SLOW_RANK else 1.0
        stop = s.train_hang_at - (30.0 if rank == TRAIN_STOPPED_RANK else 0.0)

        def steps(t: float, stop: float = stop, seconds: float = seconds) -> float:
            return (min(t, stop) - s.train_start) / seconds

        def last(t: float, stop: float = stop) -> float:
            return min(t, stop)

        def step_sum(t: float, stop: float = stop) -> float:
            return min(t, stop) - s.train_start

        def samples(t: float, steps: Callable[[float], float] = steps) -> float:
            return 8 * steps(t)

        def bucket(within: bool, steps: Callable[[float], float] = steps) -> Callable[[float], float]:
            return lambda t: steps(t) if within else 0.0

        book.add_range("jobsight_train_rank_info", {**labels, "gpu": str(rank % 2)}, times, lambda t: 1.0)
        book.add_range("jobsight_train_steps_total", labels, times, steps)
        book.add_range("jobsight_train_samples_total", labels, times, samples)
        book.add_range("jobsight_train_last_step_timestamp_seconds", labels, times, last)
        for le in ("1.0", "2.5", "+Inf"):
            book.add_range("jobsight_train_step_seconds_bucket", {**labels, "le": le}, times,
                           bucket(le != "1.0" or seconds <= 1.0))
        book.add_range("jobsight_train_step_seconds_sum", labels, times, step_sum)
        book.add_range("jobsight_train_step_seconds_count", labels, times, steps)


def demo_log_records(s: Scenario) -> list[LogRecord]:
    nccl = (
        "[rank{r}]:[E ProcessGroupNCCL.cpp:607] [Rank {r}] Watchdog caught collective operation timeout: "
        "WorkNCCL(SeqNum=7753, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600061 "
        "milliseconds before timing out."
    )
    records = [
        LogRecord(
            timestamp=s.base + 60,
            host="node1",
            job_id="demo-fail",
            path="/logs/demo-fail/rank0.log",
            offset=0,
            message="step 100 loss 2.31",
            rank=0,
            record_id="t-1",
        ),
        LogRecord(
            timestamp=s.xid_at + 2,
            host="node2",
            job_id=None,
            path="kmsg",
            offset=1001,
            message="NVRM: Xid (PCI:0000:69:00): 79, pid=4242, name=python, GPU has fallen off the bus.",
            source="kmsg",
            event_kind="gpu_xid",
            event_severity="critical",
            event_fields={"xid": "79", "pci": "0000:69:00"},
            record_id="t-2",
        ),
        LogRecord(
            timestamp=s.nccl_at + 5,
            host="node1",
            job_id="demo-fail",
            path="/logs/demo-fail/rank0.log",
            offset=100,
            message=nccl.format(r=0),
            rank=0,
            event_kind="nccl_timeout",
            event_severity="error",
            record_id="t-3",
        ),
        LogRecord(
            timestamp=s.nccl_at,
            host="node1",
            job_id="demo-fail",
            path="/logs/demo-fail/rank1.log",
            offset=100,
            message=nccl.format(r=1),
            rank=1,
            event_kind="nccl_timeout",
            event_severity="error",
            record_id="t-4",
        ),
        LogRecord(
            timestamp=s.nccl_at + 9,
            host="node2",
            job_id="demo-fail",
            path="/logs/demo-fail/rank4.log",
            offset=100,
            message=nccl.format(r=4),
            rank=4,
            event_kind="nccl_timeout",
            event_severity="error",
            record_id="t-5",
        ),
        LogRecord(
            timestamp=s.demo_end - 30,
            host="node1",
            job_id="demo-fail",
            path="/logs/demo-fail/launcher.log",
            offset=10,
            message="torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
            event_kind="child_failed",
            event_severity="error",
            record_id="t-6",
        ),
        # Another host's kernel log: must not appear in demo-fail's diagnosis.
        LogRecord(
            timestamp=s.xid_at,
            host="node9",
            job_id=None,
            path="kmsg",
            offset=7,
            message="NVRM: Xid (PCI:0000:18:00): 48, pid=1, name=x, DBE",
            source="kmsg",
            event_kind="gpu_xid",
            event_severity="critical",
            event_fields={"xid": "48", "pci": "0000:18:00"},
            record_id="t-7",
        ),
    ]
    return records


def write_logs(store_dir: Path, s: Scenario) -> None:
    store = SQLiteLogStore(store_dir)
    try:
        store.write(demo_log_records(s))
    finally:
        store.close()
