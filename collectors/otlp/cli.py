"""The OTLP receiver's flags and parts, for ``jobsight agent``.

Standard library only at module level; the receiver is imported in :func:`build`.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collectors.otlp.peer import SenderJobs
    from jobsight.serving import ExporterParts

log = logging.getLogger(__name__)

# OTLP/HTTP's port, where jobsight.training sends by default. Loopback: training processes run on
# the node (a host-network pod on Kubernetes); --otlp.listen-address opens it wider.
DEFAULT_LISTEN = "127.0.0.1:4318"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from collectors.otlp.store import DEFAULT_EXPIRE_AFTER_S, DEFAULT_MAX_JOBS, DEFAULT_MAX_SERIES_PER_JOB

    parser.add_argument(
        "--otlp.listen-address",
        dest="otlp_listen_address",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to receive OTLP/HTTP metrics from jobsight.training (default: {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--otlp.max-series-per-job",
        dest="otlp_max_series_per_job",
        type=int,
        default=DEFAULT_MAX_SERIES_PER_JOB,
        help="training series kept per job; more are dropped and counted "
        f"(default: {DEFAULT_MAX_SERIES_PER_JOB})",
    )
    parser.add_argument(
        "--otlp.max-jobs",
        dest="otlp_max_jobs",
        type=int,
        default=DEFAULT_MAX_JOBS,
        help=f"jobs with training series at once (default: {DEFAULT_MAX_JOBS})",
    )
    parser.add_argument(
        "--otlp.require-sender-job",
        dest="otlp_require_sender_job",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="refuse steps whose sending process is in no scheduler job cgroup (or pod of a job) this "
        "agent can see, e.g. from another network namespace; steps that claim another job than their "
        "sender's are always refused (default: disabled)",
    )
    parser.add_argument(
        "--otlp.expire-after",
        dest="otlp_expire_after",
        type=float,
        default=DEFAULT_EXPIRE_AFTER_S,
        metavar="SECONDS",
        help="drop a rank's series when it has not exported for this long "
        f"(default: {DEFAULT_EXPIRE_AFTER_S:.0f})",
    )


def build(args: argparse.Namespace, hostname: str | None = None) -> ExporterParts:
    """The receiver as ``ExporterParts`` (collector ``otlp``); starts its HTTP server."""
    from collectors.otlp.collector import TrainingCollector
    from collectors.otlp.server import OtlpReceiver
    from collectors.otlp.store import TrainingStore
    from jobsight.errors import ConfigError
    from jobsight.host import host_key
    from jobsight.serving import ExporterParts, parse_listen_address

    if args.otlp_max_series_per_job < 1 or args.otlp_max_jobs < 1 or args.otlp_expire_after <= 0:
        raise ConfigError(
            "--otlp.max-series-per-job, --otlp.max-jobs and --otlp.expire-after must be positive"
        )
    store = TrainingStore(
        max_jobs=args.otlp_max_jobs,
        max_series_per_job=args.otlp_max_series_per_job,
        expire_after_s=args.otlp_expire_after,
    )
    listen = parse_listen_address(args.otlp_listen_address)
    try:
        receiver = OtlpReceiver(store, listen, senders=_senders(args),
                                require_sender_job=bool(args.otlp_require_sender_job)).start()
    except ConfigError as exc:
        # The port is taken (another agent, another OTLP receiver on the node): the agent's other
        # collectors are served all the same, as when the GPU driver is missing; the log and
        # /healthz say why training steps are not received.
        log.error("%s; training steps are not received (see --otlp.listen-address)", exc)
        reason = str(exc)
        return ExporterParts(collectors={}, prefix="jobsight", health=lambda: (True, f"otlp: off: {reason}"))
    collector = TrainingCollector(
        store, host_key(hostname or getattr(args, "hostname", None)), receiver.request_counts
    )

    def health() -> tuple[bool, str]:
        return True, f"otlp: receiving on {receiver.url}"

    return ExporterParts(
        collectors={"otlp": collector}, prefix="jobsight", health=health, close=receiver.stop
    )


def _senders(args: argparse.Namespace) -> SenderJobs:
    """The sender of a connection by its process's scheduler cgroup, never its environment; on
    Kubernetes through the pod alias files the agent writes."""
    from collectors.otlp.peer import PeerProcesses, SenderJobs
    from jobsight.identity import DEFAULT_POD_ALIAS_DIR, PodJobs, ProcessJobResolver

    procfs = getattr(args, "path_procfs", None) or "/proc"
    aliases = getattr(args, "pod_alias_dir", None) or DEFAULT_POD_ALIAS_DIR
    return SenderJobs(PeerProcesses(procfs), ProcessJobResolver(procfs, trust_environment=False,
                                                                pod_jobs=PodJobs(aliases)))
