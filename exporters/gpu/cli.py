"""``jobsight exporter gpu``: DCGM-compatible GPU metrics from NVML, or from a simulated fleet.

Only the standard library is imported at module level; the backend, prometheus_client and
pydantic are imported in :func:`build`, so ``jobsight --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporters.gpu.attribution import JobMapSource
    from exporters.gpu.collector import PodLabelsSource
    from exporters.gpu.nvml import NvmlBackend
    from jobsight.identity import ProcessJobResolver
    from jobsight.serving import ExporterParts

DEFAULT_LISTEN = ":9400"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gpu",
        help="GPU exporter (NVML, DCGM metric names; or simulated)",
        description="Serve DCGM-compatible GPU metrics read from NVML, or from a simulated fleet.",
    )
    parser.add_argument(
        "--web.listen-address", dest="web_listen_address", default=DEFAULT_LISTEN,
        help=f"address to serve /metrics and /healthz on (default {DEFAULT_LISTEN})",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def _add_shared(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> None:
    """Add an option another exporter may already have added to the same parser (``jobsight
    agent`` combines several) under the same dest, so the first definition serves both; a clash
    with a different dest still fails loudly."""
    try:
        parser.add_argument(*names, **kwargs)
    except argparse.ArgumentError:
        existing = [a for a in parser._actions if set(names) & set(a.option_strings)]
        if not existing or existing[0].dest != kwargs.get("dest"):
            raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of the GPU exporter except ``--web.listen-address`` (the agent has its own)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--simulate", dest="simulate", type=int, metavar="N", default=None,
        help="serve N simulated H100-class GPUs instead of reading NVML",
    )
    source.add_argument(
        "--scenario", dest="scenario", metavar="FILE", default=None,
        help="serve simulated GPUs described by a YAML scenario file (re-read when it changes)",
    )
    parser.add_argument(
        "--job-map-dir", dest="job_map_dir", metavar="DIR", default="/run/jobsight/jobs",
        help="directory of per-GPU job files written by a Slurm prolog (default /run/jobsight/jobs)",
    )
    _add_shared(
        parser, "--hostname", dest="hostname", metavar="NAME", default=None,
        help="value of the Hostname label (default: $NODE_NAME, else the machine's hostname)",
    )
    _add_shared(
        parser, "--path.procfs", dest="path_procfs", metavar="DIR", default="/proc",
        help="procfs root used to find the job of a GPU process (default /proc)",
    )
    _add_shared(
        parser, "--collector.jobs.trust-environment", dest="jobs_trust_environment",
        action=argparse.BooleanOptionalAction, default=False,
        help="also take a GPU process's job from its environment (JOBSIGHT_JOB_ID, SLURM_JOB_ID) when it "
        "is in no Slurm job or Kubernetes pod cgroup; any user can set these, so enable only where users "
        "are trusted (default: disabled; shared with the node exporter)",
    )
    parser.add_argument(
        "--collector.gpu.interval", dest="gpu_collect_interval", type=float, metavar="SECONDS", default=1.0,
        help="how often each GPU is read in the background (default 1)",
    )
    parser.add_argument(
        "--collector.gpu.stale-after", dest="gpu_stale_after", type=float, metavar="SECONDS", default=10.0,
        help="a GPU whose last read is older than this is reported down (default 10)",
    )
    parser.add_argument(
        "--collector.gpu.gpm", dest="gpu_gpm", action=argparse.BooleanOptionalAction, default=True,
        help="read NVML GPM profiling metrics, DCGM_FI_PROF_* (default: enabled)",
    )
    parser.add_argument(
        "--collector.gpu.hostname-label", dest="gpu_hostname_label", choices=("Hostname", "hostname"),
        default="Hostname",
        help="name of the host label on GPU series: dcgm-exporter <= 4.8.2 says Hostname, 4.8.3 and later "
        "hostname (default Hostname, the name jobsight's rules, dashboards and API join on)",
    )
    parser.add_argument(
        "--collector.gpu.hpc-job-label", dest="gpu_hpc_job_label", action="store_true", default=False,
        help="also copy every DCGM series once per job on the GPU with an hpc_job label, as dcgm-exporter's "
        "--hpc-job-mapping-dir does (multiplies series by jobs; default: off, join jobsight_gpu_job_info)",
    )
    parser.add_argument(
        "--collector.gpu.expected-count", dest="gpu_expected_count", type=int, metavar="N", default=None,
        help="GPUs this node should have: published as jobsight_node_expected_gpus, which GPUMissing "
        "compares with the GPUs enumerated (default: none; the alert then uses the node's 7-day maximum)",
    )
    parser.add_argument(
        "--wait-for-driver", dest="gpu_wait_for_driver", action="store_true", default=False,
        help="when NVML cannot be used yet (no driver loaded), serve jobsight_gpu_backend_up 0 and keep "
        "trying in the background instead of exiting 3 (always on in `jobsight agent`)",
    )
    parser.add_argument(
        "--collector.gpu.release-hold", dest="gpu_release_hold", type=float, metavar="SECONDS", default=120.0,
        help="on SIGUSR1, let go of NVML for this long so that `nvidia-smi -r` can reset a GPU (default 120)",
    )


def build(args: argparse.Namespace, wait_for_driver: bool | None = None,
          job_map: JobMapSource | None = None,
          pod_labels: PodLabelsSource | None = None) -> ExporterParts:
    """The GPU exporter's collectors (named ``gpu``, prefix ``jobsight``), health check and
    close; starts the background threads. Raises ConfigError for bad flags or a bad scenario and
    BackendUnavailable when NVML cannot be used and no simulation was asked for, unless
    ``wait_for_driver`` (default: ``--wait-for-driver``): then the GPU part waits for NVML in the
    background and serves ``jobsight_gpu_backend_up 0`` meanwhile. ``job_map`` replaces the job map
    directory and ``pod_labels`` adds namespace/pod/container to the job info (Kubernetes, from
    `jobsight agent`)."""
    import time

    from exporters.gpu.attribution import JobAttributor
    from exporters.gpu.collector import GpuCollector
    from exporters.gpu.inventory import MAX_EXPECTED_GPUS, WithExpectedGpus
    from exporters.gpu.model import GpuBackend
    from exporters.gpu.nvml import NvmlBackend
    from exporters.gpu.sampler import Sampler
    from exporters.gpu.scenario import FixedScenario, ScenarioFile, default_scenario
    from exporters.gpu.simulated import SimulatedBackend
    from exporters.gpu.waiting import DriverWait, Running
    from exporters.gpu.xid import XidLedger
    from jobsight.errors import BackendUnavailable, ConfigError
    from jobsight.host import host_key
    from jobsight.identity import JobMapDir
    from jobsight.serving import Collector, ExporterParts

    interval = float(args.gpu_collect_interval)
    stale_after = float(args.gpu_stale_after)
    if not 0.05 <= interval <= 3600:
        raise ConfigError(f"--collector.gpu.interval: {interval} is outside 0.05-3600 seconds")
    if stale_after < 2 * interval:
        raise ConfigError(
            f"--collector.gpu.stale-after ({stale_after}s) must be at least twice "
            f"--collector.gpu.interval ({interval}s)"
        )
    release_hold = float(args.gpu_release_hold)
    if not 0 < release_hold <= 3600:
        raise ConfigError(f"--collector.gpu.release-hold: {release_hold} is outside 0-3600 seconds")
    if wait_for_driver is None:
        wait_for_driver = bool(args.gpu_wait_for_driver)
    expected_gpus = args.gpu_expected_count
    if expected_gpus is not None and not 0 <= expected_gpus <= MAX_EXPECTED_GPUS:
        raise ConfigError(f"--collector.gpu.expected-count: {expected_gpus} is outside 0-{MAX_EXPECTED_GPUS}")

    extra: list[Collector] = []
    backend: GpuBackend
    hostname = args.hostname
    host_label = str(args.gpu_hostname_label)
    restore_signal: Callable[[], None] | None = None
    if args.scenario is not None:
        source = ScenarioFile(args.scenario)
        hostname = hostname or source.current().hostname or host_key()
        simulated = SimulatedBackend(source, hostname=hostname)
        scenario_metrics = simulated.scenario_collector()
        if scenario_metrics is not None:
            extra.append(scenario_metrics)
        backend = simulated
    elif args.simulate is not None:
        hostname = host_key(hostname)
        backend = SimulatedBackend(FixedScenario(default_scenario(int(args.simulate))), hostname=hostname)
    else:
        hostname = host_key(hostname)
        nvml = NvmlBackend(gpm=bool(args.gpu_gpm))
        restore_signal = install_release_signal(nvml, release_hold)
        backend = nvml

    def start(opened: GpuBackend) -> Running:
        ledger = XidLedger()
        attributor = JobAttributor(job_map or JobMapDir(args.job_map_dir), process_resolver(args),
                                   clock=time.monotonic, map_ttl_s=interval)
        sampler = Sampler(opened, attributor, ledger, interval_s=interval, stale_after_s=stale_after)
        sampler.start(wait_first_s=min(stale_after, 5.0))
        collector = GpuCollector(sampler, ledger, opened.info, hostname, extra=extra, host_label=host_label,
                                 hpc_job=bool(args.gpu_hpc_job_label), pod_labels=pod_labels)
        return Running(collector, sampler.health, sampler.close)

    def with_inventory(collector: Collector) -> Collector:
        if expected_gpus is None:
            return collector
        return WithExpectedGpus(collector, expected_gpus, hostname, host_label)

    def closing(close: Callable[[], None]) -> Callable[[], None]:
        def close_all() -> None:
            close()
            if restore_signal is not None:
                restore_signal()
        return close_all

    try:
        backend.open()
    except BackendUnavailable as exc:
        if not wait_for_driver:
            if restore_signal is not None:
                restore_signal()
            raise
        waiting = DriverWait(backend, start, exc, hostname, host_label=host_label)
        return ExporterParts(collectors={"gpu": with_inventory(waiting)}, prefix="jobsight",
                             health=waiting.health, close=closing(waiting.close))
    running = start(backend)
    return ExporterParts(collectors={"gpu": with_inventory(running.collector)}, prefix="jobsight",
                         health=running.health,
                         close=closing(running.close))


def process_resolver(args: argparse.Namespace) -> ProcessJobResolver:
    """How a GPU process's job is found when no job map file names the GPU (jobsight/identity.py:
    the scheduler's cgroup; the environment only when trusted)."""
    from jobsight.identity import ProcessJobResolver

    return ProcessJobResolver(args.path_procfs, trust_environment=bool(args.jobs_trust_environment))


def install_release_signal(backend: NvmlBackend, hold_s: float) -> Callable[[], None]:
    """On SIGUSR1, ``backend.release(hold_s)``: an NVML client holds every GPU open and
    ``nvidia-smi -r`` refuses to reset a GPU that any process holds. Returns a function that puts
    the previous handler back. Must be called from the main thread (Python's rule for signals)."""
    import signal
    import threading

    def handler(_signum: int, _frame: object) -> None:
        # The handler runs in the main thread between two bytecodes, possibly while that thread
        # holds the backend's lock: release it from a thread of its own.
        threading.Thread(target=backend.release, args=(hold_s,), name="gpu-release", daemon=True).start()

    previous = signal.signal(signal.SIGUSR1, handler)

    def restore() -> None:
        signal.signal(signal.SIGUSR1, previous)

    return restore


def run(args: argparse.Namespace) -> int:
    from jobsight.serving import parse_listen_address, serve_parts

    listen = parse_listen_address(args.web_listen_address)
    return serve_parts([build(args)], listen)
