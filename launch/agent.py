"""``jobsight agent``: the GPU, RDMA and node collectors of one host, served on one port, and the
OTLP receiver for the training steps its jobs report (``jobsight.training``, on its own port).

One process per node (a DaemonSet or a Slurm node service) instead of three. Each exporter keeps
its own flags and its own self metrics (``jobsight_scrape_collector_*{collector="gpu"|"rdma"}``,
``node_scrape_collector_*{collector=...}``); each can be switched off. A wiring module: it imports
the exporters' command-line modules to start them.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_LISTEN = ":9400"
EXPORTERS = ("gpu", "rdma", "node", "otlp")


def _exporter_clis() -> dict[str, Any]:
    from collectors.otlp import cli as otlp_cli
    from exporters.gpu import cli as gpu_cli
    from exporters.node import cli as node_cli
    from exporters.rdma import cli as rdma_cli

    return {"gpu": gpu_cli, "rdma": rdma_cli, "node": node_cli, "otlp": otlp_cli}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="serve the GPU, RDMA and node collectors of this host on one port",
        description="One process per node: the GPU (NVML or simulated), RDMA (sysfs) and node "
        "(procfs/sysfs, per-job accounting) collectors on one /metrics endpoint, plus the training "
        "steps jobs report over OTLP/HTTP (--otlp.listen-address, 127.0.0.1:4318 by default) as "
        "jobsight_train_* series. Flags shared by several exporters (--path.sysfs, --path.procfs) "
        "apply to all of them.",
        # Exporters sharing a flag (same dest, same default) define it once each; the last wins.
        conflict_handler="resolve",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="web_listen_address",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve /metrics and /healthz on (default: {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="FILE",
        help="TLS and basic auth, exporter-toolkit's format (docs/kubernetes.md)",
    )
    parser.add_argument(
        "--kubelet.pod-resources-socket",
        dest="pod_resources_socket",
        default=None,
        metavar="PATH",
        help="Kubernetes: a GPU's job is the training job of the pod the kubelet gave it (its "
        "pod-resources API, e.g. /var/lib/kubelet/pod-resources/kubelet.sock; pod metadata from the "
        "API server), and jobsight_gpu_job_info gets namespace/pod/container (default: off)",
    )
    parser.add_argument(
        "--kubelet.pod-alias-dir",
        dest="pod_alias_dir",
        default="/run/jobsight/pods",
        metavar="DIR",
        help="with --kubelet.pod-resources-socket: where <pod UID> → job id files are written for the "
        "log collector (its job_alias_dir; default /run/jobsight/pods)",
    )
    parser.add_argument(
        "--kubernetes.api-url",
        dest="kube_api_url",
        default=None,
        metavar="URL",
        help="with --kubelet.pod-resources-socket: the API server pod metadata is read from (default: "
        "the pod's own, https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, with its service account)",
    )
    for name in EXPORTERS:
        parser.add_argument(
            f"--collector.{name}",
            dest=f"agent_{name}",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=f"serve the {name} exporter's metrics (default: enabled)",
        )
    for name, cli in _exporter_clis().items():
        cli.add_arguments(parser.add_argument_group(f"{name} exporter"))
    parser.set_defaults(func=run)


def _pod_job_map(args: argparse.Namespace) -> Any:
    """The kubelet's GPU allocations as the GPU exporter's job map (schedulers/kubernetes)."""
    import os
    from pathlib import Path

    from jobsight.host import host_key
    from jobsight.identity import JobMapDir
    from schedulers.kubernetes.gpus import InClusterPodMetadata, PodGpuAttribution, PodJobMap
    from schedulers.kubernetes.owners import PodJobResolver
    from schedulers.kubernetes.podresources import PodResourcesClient

    # The standard library's HTTP, not the Kubernetes client: node images carry jobsight[agent].
    pods = (InClusterPodMetadata(args.kube_api_url) if args.kube_api_url
            else InClusterPodMetadata.from_environment(os.environ))
    attribution = PodGpuAttribution(PodResourcesClient(args.pod_resources_socket), pods, PodJobResolver())
    # The node's name as the API server has it: the agent's host key, which the chart sets from
    # spec.nodeName ($NODE_NAME).
    return PodJobMap(attribution, JobMapDir(args.job_map_dir),
                     pod_alias_dir=Path(args.pod_alias_dir) if args.pod_alias_dir else None,
                     node_name=host_key(args.hostname))


def run(args: argparse.Namespace) -> int:
    from jobsight.errors import ConfigError
    from jobsight.serving import ExporterParts, parse_listen_address, serve_parts
    from jobsight.webconfig import load_web_config

    listen = parse_listen_address(args.web_listen_address)
    web = load_web_config(args.web_config_file) if args.web_config_file else None
    enabled = [name for name in EXPORTERS if getattr(args, f"agent_{name}")]
    if not enabled:
        raise ConfigError(
            "every collector is switched off: enable at least one of --collector.gpu/rdma/node/otlp"
        )
    clis = _exporter_clis()
    parts: list[ExporterParts] = []
    try:
        for name in enabled:
            # A node without a usable NVIDIA driver (CPU-only, or the driver loads later) still
            # gets its node and RDMA metrics: the GPU part waits for NVML in the background.
            if name == "gpu":
                job_map = _pod_job_map(args) if args.pod_resources_socket else None
                parts.append(clis[name].build(args, wait_for_driver=True, job_map=job_map,
                                              pod_labels=job_map.pod_labels if job_map else None))
            else:
                parts.append(clis[name].build(args))
    except BaseException:
        for part in parts:
            part.close()
        raise
    return serve_parts(parts, listen, web)
