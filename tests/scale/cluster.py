"""A synthetic cluster's history for the scale tests and benchmarks/api_scale.py: ``gpus`` GPUs,
eight per host, written as OpenMetrics and turned into TSDB blocks by the real ``promtool``.

The job under test, ``train-7`` (:data:`JOB`), holds the last four GPUs of ``h0000`` and the first
four of ``h0001``; the other GPUs of those two hosts belong to ``neighbour`` (a host shared by two
jobs), and every further host runs a ``bystander-<host>`` job. Values depend only on the host and
GPU index, so the job's own answers are the same whatever the cluster's size. GPUs of ``h0000``
are Hopper (they have tensor-pipe counters); those of ``h0001`` are Ampere (none).
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.api.promdata import run_prometheus
from tests.support import Proc, require_binary

JOB = "train-7"
JOB_GPUS = [("h0000", g) for g in range(4, 8)] + [("h0001", g) for g in range(4)]
JOB_HOSTS = ["h0000", "h0001"]
GPUS_PER_HOST = 8


def host(index: int) -> str:
    return f"h{index:04d}"


def util(hostname: str, gpu: int) -> float:
    return float((int(hostname[1:]) * 7 + gpu * 11) % 90 + 5)


@dataclass(frozen=True)
class Cluster:
    gpus: int
    start: float  # first sample
    end: float  # last sample
    step: float
    # Utilisation and power rise and fall over an hour (else constant): rollups are then compared
    # with raw answers on data whose mean differs from any single sample.
    wave: bool = False
    # The job's GPUs (the benchmark's long case uses a 16-GPU job).
    job: tuple[tuple[str, int], ...] = tuple(JOB_GPUS)
    # Hosts without the job carry only what the old, unbounded queries read most (job info,
    # utilisation, power): a month of a full cluster does not fit this machine's disk and time.
    light_bystanders: bool = False

    @property
    def job_hosts(self) -> list[str]:
        return sorted({h for h, _ in self.job})

    def util_at(self, hostname: str, gpu: int, t: float) -> float:
        base = util(hostname, gpu)
        return base + 4.0 * math.sin(2 * math.pi * (t - self.start) / 3600.0) if self.wave else base

    @property
    def hosts(self) -> list[str]:
        return [host(i) for i in range(self.gpus // GPUS_PER_HOST)]

    def owner(self, hostname: str, gpu: int) -> str:
        if (hostname, gpu) in self.job:
            return JOB
        if hostname in self.job_hosts:
            return "neighbour"
        return f"bystander-{hostname}"

    def lines(self, since: float | None = None, until: float | None = None) -> Iterator[str]:
        """OpenMetrics text, one metric family after another, each series' samples in time order
        (those in ``[since, until)`` where given)."""
        every = [self.start + i * self.step for i in range(int((self.end - self.start) // self.step) + 1)]
        times = [t for t in every if (since is None or t >= since) and (until is None or t < until)]
        n = len(times)
        devices = [(h, g) for h in self.hosts for g in range(GPUS_PER_HOST)]
        full = [(h, g) for h, g in devices if not self.light_bystanders or h in self.job_hosts]
        full_hosts = [h for h in self.hosts if not self.light_bystanders or h in self.job_hosts]

        def family(name: str, kind: str, series: Iterator[tuple[str, list[float]]]) -> Iterator[str]:
            yield f"# TYPE {name} {kind}"
            for labels, values in series:
                for t, v in zip(times, values, strict=True):
                    yield f"{name}{{{labels}}} {v!r} {t:.3f}"

        def gpu_labels(h: str, g: int) -> str:
            return f'Hostname="{h}",UUID="GPU-{h}-{g}",gpu="{g}"'

        yield from family("jobsight_gpu_job_info", "gauge", (
            (f'{gpu_labels(h, g)},job_id="{self.owner(h, g)}"', [1.0] * n) for h, g in devices))
        yield from family("jobsight_gpu_info", "gauge", (
            (f'{gpu_labels(h, g)},pci_bus_id="00000000:{0x18 + g:02X}:00.0"', [1.0] * n) for h, g in full))
        yield from family("DCGM_FI_DEV_GPU_UTIL", "gauge", (
            (gpu_labels(h, g), [self.util_at(h, g, t) for t in times]) for h, g in devices))
        yield from family("DCGM_FI_DEV_FB_USED", "gauge", (
            (gpu_labels(h, g), [1000.0 * (g + 1)] * n) for h, g in full))
        yield from family("DCGM_FI_DEV_POWER_USAGE", "gauge", (
            (gpu_labels(h, g), [100.0 + self.util_at(h, g, t) for t in times]) for h, g in devices))
        # mJ: (100 + util) W for every second of the history.
        yield from family("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", (
            (gpu_labels(h, g), [1000.0 * (100.0 + util(h, g)) * (t - self.start) for t in times])
            for h, g in full))
        yield from family("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", (
            (gpu_labels(h, g), [0.5] * n) for h, g in devices if h == "h0000"))
        yield from family("jobsight_gpu_up", "gauge", ((gpu_labels(h, g), [1.0] * n) for h, g in full))
        yield from family("node_infiniband_port_data_received_bytes_total", "counter", (
            (f'Hostname="{h}",device="mlx5_0",port="1"', [1e6 * (t - self.start) for t in times])
            for h in full_hosts))
        yield from family("node_cpu_seconds_total", "counter", (
            (f'Hostname="{h}",cpu="0",mode="idle"', [0.25 * (t - self.start) for t in times])
            for h in full_hosts))
        yield "# EOF"

    def write_tsdb(self, workdir: Path, chunk_hours: float | None = None) -> Path:
        """TSDB blocks of the history. promtool (2.42) reads its whole input once per 2-hour block,
        so a long history goes in chunks of ``chunk_hours`` (multiples of 2 keep the blocks
        apart): one file of 14 days would be read 168 times."""
        tsdb = workdir / "tsdb"
        tsdb.mkdir(parents=True, exist_ok=True)
        bounds: list[tuple[float | None, float | None]] = [(None, None)]
        if chunk_hours is not None:
            size = chunk_hours * 3600
            first = self.start - self.start % 7200
            bounds = [(first + i * size, first + (i + 1) * size)
                      for i in range(int((self.end - first) // size) + 1)]
        source = workdir / "cluster.om"
        for since, until in bounds:
            with open(source, "w") as fh:
                for line in self.lines(since, until):
                    fh.write(line + "\n")
            promtool = require_binary("promtool")
            argv = [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)]
            result = subprocess.run(argv, capture_output=True, timeout=3600)
            said = result.stderr.decode(errors="replace")[-2000:]
            assert result.returncode == 0, f"promtool failed: {said}"
        source.unlink()
        return tsdb


@dataclass(frozen=True)
class LoggedPrometheus:
    url: str
    query_log: Path
    proc: Proc


@contextmanager
def prometheus_with_query_log(tsdb: Path, workdir: Path, rules: list[Path] | None = None,
                              extra_args: tuple[str, ...] = ()) -> Iterator[LoggedPrometheus]:
    """Prometheus over ``tsdb`` that writes every query it evaluates to ``query_log``
    (``query_log_file``): what the API really asked is read back from there."""
    query_log = workdir / "queries.jsonl"
    with run_prometheus(tsdb, workdir, max_samples=None, ready_timeout=180,
                        global_extra=f"  query_log_file: {query_log}\n", rule_files=rules or (),
                        extra_args=extra_args) as running:
        yield LoggedPrometheus(running.url, query_log, running.proc)
