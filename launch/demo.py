"""The demo ``jobsight up`` runs on a machine without GPUs: a simulated cluster and two jobs.

- Cluster: ``node1`` and ``node2``, 8 simulated H100-class GPUs each (GPU exporter scenario
  files), 2 RoCE ports each (a simulated sysfs fabric whose counters advance with traffic), and
  one kernel-message file each (``/dev/kmsg`` format).
- ``demo-ok``: a healthy job on node1 GPUs 0-3, 4 ranks, TensorBoard scalars, runs until stopped.
- ``demo-fail``: 12 ranks on node1 GPUs 4-7 and node2 GPUs 0-7. ``fault_after`` seconds in, GPU 3
  of node2 (rank 7) reports XID 79 and falls off the bus (scenario rewrite + an ``NVRM: Xid``
  kernel line); the other ranks' NCCL watchdogs time out, the launcher reports ChildFailedError,
  and the job is marked failed with exit code 1 — as a scheduler epilog would do — through the API.
  With the ``hang`` scenario instead, rank 7 stops stepping (stuck before its all-reduce) while the
  other ranks wait in the all-reduce and every GPU stays busy; JobHung fires and names rank 7.

Every rank reports its steps through ``jobsight.training`` (phases data, compute, sync) to the
OTLP receiver of its node's agent.

Ranks are real processes (``python -m launch.demo rank …``) carrying ``JOBSIGHT_JOB_ID``, so
per-job accounting sees them, and they write the log lines a PyTorch job writes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

NODES = ("node1", "node2")
GPUS_PER_NODE = 8
# The PCI bus ids of an HGX H100 board, in GPU index order; kernel lines name GPUs by these.
PCI_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
FAULT_NODE, FAULT_GPU, FAULT_XID = "node2", 3, 79


def pci_bus_id(index: int) -> str:
    return f"00000000:{PCI_BUSES[index]:02X}:00.0"


@dataclass(frozen=True)
class Rank:
    job_id: str
    rank: int
    node: str
    gpu: int


@dataclass(frozen=True)
class DemoJob:
    job_id: str
    name: str
    user: str
    ranks: tuple[Rank, ...]

    @property
    def nodes(self) -> list[str]:
        return sorted({r.node for r in self.ranks})


def demo_jobs() -> tuple[DemoJob, DemoJob]:
    ok = DemoJob(
        "demo-ok", "llama-finetune", "alice", tuple(Rank("demo-ok", i, "node1", i) for i in range(4))
    )
    placement = [("node1", g) for g in range(4, 8)] + [("node2", g) for g in range(8)]
    fail = DemoJob(
        "demo-fail",
        "gpt-pretrain",
        "bob",
        tuple(Rank("demo-fail", i, node, gpu) for i, (node, gpu) in enumerate(placement)),
    )
    return ok, fail


@dataclass
class DemoPaths:
    state: Path

    def node(self, node: str) -> Path:
        return self.state / "nodes" / node

    def scenario(self, node: str) -> Path:
        return self.node(node) / "scenario.yaml"

    def sysfs(self, node: str) -> Path:
        return self.node(node) / "sys"

    def kmsg(self, node: str) -> Path:
        return self.node(node) / "kmsg"

    @property
    def jobs(self) -> Path:
        return self.state / "jobs"

    def rank_log(self, rank: Rank) -> Path:
        return self.jobs / rank.job_id / rank.node / f"rank-{rank.rank}.log"

    def launcher_log(self, job_id: str, node: str) -> Path:
        return self.jobs / job_id / node / "launcher.log"

    def tensorboard(self, job_id: str) -> Path:
        return self.jobs / job_id / "tensorboard"

    def abort_flag(self, job_id: str) -> Path:
        return self.jobs / job_id / "abort"

    def hang_flag(self, job_id: str) -> Path:
        return self.jobs / job_id / "hang"


def write_cluster(paths: DemoPaths) -> None:
    """Scenario files, RDMA sysfs trees and empty kmsg files for both nodes (fresh every start)."""
    from exporters.gpu.scenario import GpuSpec, JobAssignment, Scenario, Utilization, write_scenario
    from exporters.rdma.simulate import write_fabric

    ok, fail = demo_jobs()
    for seed, node in enumerate(NODES, start=1):
        assignments: dict[str, list[int]] = {}
        for job in (ok, fail):
            for rank in job.ranks:
                if rank.node == node:
                    assignments.setdefault(job.job_id, []).append(rank.gpu)
        scenario = Scenario(
            hostname=node,
            seed=seed,
            gpus=[GpuSpec(pci_bus_id=pci_bus_id(i)) for i in range(GPUS_PER_NODE)],
            jobs=[JobAssignment(job_id=job, gpus=gpus, memory_gib=62.0) for job, gpus in assignments.items()],
            utilization=[Utilization(gpus="all", pattern="sine", min=70, max=97, period=90)],
        )
        paths.node(node).mkdir(parents=True, exist_ok=True)
        write_scenario(paths.scenario(node), scenario)
        write_fabric(paths.sysfs(node), hcas=2, ports=1, link_layer="Ethernet", rate_gbps=200)
        paths.kmsg(node).write_bytes(b"")


def kmsg_record(seq: int, message: str, level: int = 3, monotonic_us: int | None = None) -> bytes:
    """One /dev/kmsg record: ``<facility*8+level>,<seq>,<usec since boot>,<flags>;<message>``."""
    usec = monotonic_us if monotonic_us is not None else int(time.monotonic() * 1e6)
    return f"{level},{seq},{usec},-;{message}\n".encode()


def inject_fault(paths: DemoPaths, seq: int) -> None:
    """XID 79 on GPU 3 of node2: the GPU exporter's scenario and the node's kernel log."""
    from exporters.gpu.scenario import GpuLostFault, XidFault, load_scenario, write_scenario

    scenario_path = paths.scenario(FAULT_NODE)
    write_scenario(
        scenario_path,
        load_scenario(scenario_path).with_faults(
            XidFault(gpu=FAULT_GPU, xid=FAULT_XID), GpuLostFault(gpu=FAULT_GPU)
        ),
    )
    pci = pci_bus_id(FAULT_GPU)[4:-2].lower()  # "0000:5d:00", as NVRM prints it
    line = f"NVRM: Xid (PCI:{pci}): {FAULT_XID}, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
    with open(paths.kmsg(FAULT_NODE), "ab") as fh:
        fh.write(kmsg_record(seq, line))
        fh.write(kmsg_record(seq + 1, f"NVRM: GPU at PCI:{pci}: GPU has fallen off the bus.", level=4))


# --- one training rank (a child process) -------------------------------------------------------


def run_rank(args: argparse.Namespace) -> int:
    """Write a PyTorch-like log and report steps until the abort flag appears; then fail like
    NCCL does. Once the hang flag appears the rank stops stepping: the faulty rank inside its
    compute phase, the others inside the all-reduce ("sync"), as in a real hang."""
    import jobsight.training

    log_path, flag = Path(args.log), Path(args.abort_flag)
    hang = Path(args.hang_flag) if args.hang_flag else None
    # Job id, rank, local rank (the GPU) and the agent's OTLP endpoint come from the environment
    # the driver sets, as torchrun and a scheduler would set them.
    tracker = jobsight.training.start(export_interval_s=5.0)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    if args.tensorboard:
        from tensorboard.summary import Writer

        writer = Writer(args.tensorboard)
    prefix = f"[rank{args.rank}]:"
    step = 0
    # A rank never outlives `jobsight up`, however that ends (SIGKILL included, where its stop
    # code does not run): once the driver is gone the rank is reparented, and it leaves.
    driver = args.driver_pid or os.getppid()

    def orphaned() -> bool:
        return os.getppid() != driver

    with open(log_path, "a", buffering=1) as out:
        out.write(f"{prefix} initialising process group: world_size={args.world_size} backend=nccl\n")
        while not flag.exists():
            if orphaned():
                tracker.close(timeout_s=0.5)
                return 0
            if hang is not None and hang.exists():
                with tracker.phase("compute" if args.faulty else "sync"):
                    while not flag.exists() and not orphaned():
                        time.sleep(0.2)
                if orphaned():
                    tracker.close(timeout_s=0.5)
                    return 0
                break
            loss = 4.0 * math.exp(-step / 200.0) + 0.05 * math.sin(step)
            out.write(
                f"{prefix} step {step} loss {loss:.4f} lr 3.0e-04 tokens/s {41000 + 37 * (step % 11)}\n"
            )
            if writer is not None:
                writer.add_scalar("train/loss", loss, step)
                writer.add_scalar("train/lr", 3e-4, step)
                writer.flush()
            step += 1
            with tracker.phase("data"):
                time.sleep(0.1 * args.step_seconds)
            with tracker.phase("compute"):
                time.sleep(0.6 * args.step_seconds)
            with tracker.phase("sync"):
                time.sleep(0.3 * args.step_seconds)
            tracker.step(samples=32, tokens=32 * 2048, loss=loss)
        if writer is not None:
            writer.close()
        tracker.close(timeout_s=1.0)
        if args.faulty:
            out.write(
                f"{prefix} RuntimeError: CUDA error: unspecified launch failure\n"
                f"{prefix} CUDA kernel errors might be asynchronously reported at some other API call\n"
            )
            return 1
        seq = 1000 + step
        out.write(
            f"{prefix}[E ProcessGroupNCCL.cpp:1182] [Rank {args.rank}] Watchdog caught collective "
            f"operation timeout: WorkNCCL(SeqNum={seq}, OpType=ALLREDUCE, NumelIn=262144000, "
            "NumelOut=262144000, Timeout(ms)=600000) ran for 600089 milliseconds before timing out.\n"
        )
        return 1


def rank_command(
    rank: Rank, world_size: int, paths: DemoPaths, faulty: bool, step_seconds: float, hang: bool = False
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "launch.demo",
        "rank",
        "--rank",
        str(rank.rank),
        "--world-size",
        str(world_size),
        "--log",
        str(paths.rank_log(rank)),
        "--abort-flag",
        str(paths.abort_flag(rank.job_id)),
        "--step-seconds",
        str(step_seconds),
    ]
    argv += ["--driver-pid", str(os.getpid())]  # the process that starts the rank: this one
    if rank.rank == 0:
        argv += ["--tensorboard", str(paths.tensorboard(rank.job_id))]
    if faulty:
        argv.append("--faulty")
    if hang:
        argv += ["--hang-flag", str(paths.hang_flag(rank.job_id))]
    return argv


# --- the driver (a thread inside `jobsight up`) ------------------------------------------------


@dataclass
class DemoDriver:
    """Registers the jobs, starts their ranks, injects the fault and reports the failure."""

    paths: DemoPaths
    api_url: str
    token: str
    fault_after: float
    nccl_delay: float = 3.0
    step_seconds: float = 1.0
    # "xid": GPU 3 of node2 falls off the bus and the job fails; "hang": its rank stops stepping.
    scenario: str = "xid"
    # node -> the OTLP/HTTP base URL of that node's agent, where its ranks report steps.
    otlp_endpoints: dict[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    on_event: Callable[[str], None] = print
    _stop: threading.Event = field(default_factory=threading.Event)
    _launching: threading.Lock = field(default_factory=threading.Lock)
    _procs: list[tuple[Rank, subprocess.Popen[bytes]]] = field(default_factory=list)
    fault_injected_at: float | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="demo", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        with self._launching:  # no rank starts after this: the loop below sees them all
            self._stop.set()
        for _, proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        # One deadline for all ranks, not 5 s each: sixteen ranks flushing their last training
        # steps on a loaded machine took `jobsight up` past a minute to stop.
        deadline = time.monotonic() + 5
        for _, proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _put_job(self, client: httpx.Client, job: DemoJob, **fields: object) -> None:
        body = {
            "name": job.name,
            "user": job.user,
            "tenant": "demo",
            "scheduler": "demo",
            "nodes": job.nodes,
            "gpus": [{"host": r.node, "gpu": r.gpu} for r in job.ranks],
            "tensorboard_logdir": str(self.paths.tensorboard(job.job_id)),
            "labels": {"demo": "true"},
            **fields,
        }
        response = client.put(f"{self.api_url}/v1/jobs/{job.job_id}", json=body)
        if response.status_code >= 300:
            self.on_event(
                f"demo: registering {job.job_id} failed: {response.status_code} {response.text[:200]}"
            )

    def _run(self) -> None:
        ok, fail = demo_jobs()
        started = self.clock()
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(headers=headers, timeout=10.0) as client:
            for job in (ok, fail):
                self._put_job(client, job, status="running", started_at=_iso(started))
                for rank in job.ranks:
                    faulty = job is fail and (rank.node, rank.gpu) == (FAULT_NODE, FAULT_GPU)
                    env = {
                        **os.environ,
                        "JOBSIGHT_JOB_ID": job.job_id,
                        "RANK": str(rank.rank),
                        "LOCAL_RANK": str(rank.gpu),
                        "WORLD_SIZE": str(len(job.ranks)),
                    }
                    if rank.node in self.otlp_endpoints:
                        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoints[rank.node]
                    argv = rank_command(
                        rank, len(job.ranks), self.paths, faulty, self.step_seconds,
                        hang=self.scenario == "hang" and job is fail,
                    )
                    self.paths.rank_log(rank).parent.mkdir(parents=True, exist_ok=True)
                    with self._launching:
                        if self._stop.is_set():
                            return
                        proc = subprocess.Popen(
                            argv,
                            env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        self._procs.append((rank, proc))
            fault = (
                f"rank {self._faulty_rank(fail)} hangs" if self.scenario == "hang"
                else f"XID {FAULT_XID} on {FAULT_NODE} GPU {FAULT_GPU}"
            )
            self.on_event(
                "demo: jobs demo-ok (4 ranks) and demo-fail (12 ranks) started; "
                f"{fault} in {self.fault_after:.0f}s"
            )
            if self._stop.wait(self.fault_after):
                return
            if self.scenario == "hang":
                self._hang(fail)
                return
            self.fault_injected_at = self.clock()
            inject_fault(self.paths, seq=1)
            (self.paths.state / "fault_injected_at").write_text(f"{self.fault_injected_at}\n")
            self.on_event(f"demo: injected XID {FAULT_XID} on {FAULT_NODE} GPU {FAULT_GPU}")
            # The faulty rank dies first; the NCCL watchdogs of the others fire a little later.
            if self._stop.wait(self.nccl_delay):
                return
            self.paths.abort_flag(fail.job_id).write_text("nccl timeout\n")
            fail_procs = [p for r, p in self._procs if r.job_id == fail.job_id]
            deadline = self.clock() + 30
            while any(p.poll() is None for p in fail_procs):
                if self._stop.wait(0.2) or self.clock() > deadline:
                    break
            codes = [p.returncode for p in fail_procs]
            failed_ranks = [
                r.rank
                for r, p in self._procs
                if r.job_id == fail.job_id and p.returncode
            ]
            exit_code = next((c for c in codes if c), 0)
            for node in fail.nodes:
                with open(self.paths.launcher_log(fail.job_id, node), "a") as out:
                    out.write(_child_failed_text(failed_ranks[0] if failed_ranks else 0, exit_code))
            self._put_job(
                client,
                fail,
                status="failed",
                exit_code=exit_code,
                started_at=_iso(started),
                ended_at=_iso(self.clock()),
                reason="NonZeroExitCode",
            )
            self.on_event(f"demo: demo-fail exited with code {exit_code}; marked failed")

    @staticmethod
    def _faulty_rank(job: DemoJob) -> int:
        return next(r.rank for r in job.ranks if (r.node, r.gpu) == (FAULT_NODE, FAULT_GPU))

    def _hang(self, job: DemoJob) -> None:
        """Rank 7 stops inside its compute phase; the others stop inside the all-reduce. Every
        process lives on and the simulated GPUs stay busy, as NCCL kernels spin in a real hang."""
        self.fault_injected_at = self.clock()
        self.paths.hang_flag(job.job_id).write_text("hang\n")
        (self.paths.state / "fault_injected_at").write_text(f"{self.fault_injected_at}\n")
        self.on_event(
            f"demo: rank {self._faulty_rank(job)} of {job.job_id} ({FAULT_NODE} GPU {FAULT_GPU}) stopped "
            "stepping before its all-reduce; the other ranks wait in it, every GPU stays busy. JobHung "
            "fires once no rank has stepped for 5 minutes (plus its 1 minute for)."
        )


def _child_failed_text(rank: int, exit_code: int) -> str:
    return (
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
        "============================================================\n"
        "train.py FAILED\n"
        "------------------------------------------------------------\n"
        "Root Cause (first observed failure):\n"
        "[0]:\n"
        f"  time      : {time.strftime('%Y-%m-%d_%H:%M:%S')}\n"
        f"  rank      : {rank} (local_rank: {rank % GPUS_PER_NODE})\n"
        f"  exitcode  : {exit_code} (pid: {os.getpid()})\n"
        "============================================================\n"
    )


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.demo")
    sub = parser.add_subparsers(dest="what", required=True)
    rank = sub.add_parser("rank", help="one simulated training rank")
    rank.add_argument("--rank", type=int, required=True)
    rank.add_argument("--world-size", type=int, required=True)
    rank.add_argument("--log", required=True)
    rank.add_argument("--abort-flag", required=True)
    rank.add_argument("--tensorboard", default=None)
    rank.add_argument("--faulty", action="store_true")
    rank.add_argument("--step-seconds", type=float, default=1.0)
    rank.add_argument("--hang-flag", default=None)
    rank.add_argument("--driver-pid", type=int, default=None,
                      help="the process that started the rank; the rank leaves when it is gone")
    args = parser.parse_args(argv)
    return run_rank(args)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["DemoDriver", "DemoPaths", "demo_jobs", "inject_fault", "write_cluster"]
