"""``jobsight kube watch`` and ``jobsight kube gpus``.

Heavy imports (the ``kubernetes`` client, grpc) stay inside the run functions (house rule for
component ``cli`` modules), so ``jobsight --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

TOKEN_ENV = "JOBSIGHT_API_TOKEN"


def api_client(kubeconfig: str | None) -> Any:
    """A configured ``kubernetes.client.ApiClient``: the given kubeconfig, else the in-cluster
    service account, else ``$KUBECONFIG`` / ``~/.kube/config``."""
    from kubernetes import client
    from kubernetes import config as kube_config

    from jobsight.errors import ConfigError

    config: Any = kube_config  # its loaders are untyped

    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=kubeconfig)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return client.ApiClient()
        return config.new_client_from_config()
    except (config.ConfigException, OSError) as exc:
        raise ConfigError(f"no Kubernetes API access: {exc}") from exc


def _tenant_map(pairs: list[str], path: str | None) -> dict[str, str]:
    from jobsight.errors import ConfigError

    mapping: dict[str, str] = {}
    if path:
        import yaml

        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--tenant-map-file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"--tenant-map-file {path}: expected a mapping namespace: tenant")
        mapping.update({str(k): str(v) for k, v in loaded.items()})
    for pair in pairs:
        namespace, sep, tenant = pair.partition("=")
        if not sep or not namespace or not tenant:
            raise ConfigError(f"--tenant {pair!r}: expected NAMESPACE=TENANT")
        mapping[namespace] = tenant
    return mapping


def _token(args: argparse.Namespace) -> str | None:
    from jobsight.errors import ConfigError

    if args.api_token_file:
        try:
            return Path(args.api_token_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"--api.token-file: {exc}") from exc
    return os.environ.get(TOKEN_ENV) or None


def run_watch(args: argparse.Namespace) -> int:
    import threading

    from schedulers.kubernetes.gpulookup import PrometheusGpus
    from schedulers.kubernetes.jobsapi import JobsApi
    from schedulers.kubernetes.owners import PodJobResolver
    from schedulers.kubernetes.tracker import KNOWN_JOB_KINDS, JobTracker, TrackerSettings
    from schedulers.kubernetes.watch import Delivery, KubeSource, Watcher

    kinds = tuple(k for k in KNOWN_JOB_KINDS if not args.kinds or k.key in args.kinds)
    settings = TrackerSettings(tenant_map=_tenant_map(args.tenant, args.tenant_map_file),
                               user_keys=tuple(args.user_key or ("jobsight.io/user",)),
                               all_jobs=args.all_jobs, cluster=args.cluster)
    tracker = JobTracker(PodJobResolver(args.job_label), settings)
    api = JobsApi(args.api_url, _token(args), verify=args.api_ca_file or True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    gpus = PrometheusGpus(args.prometheus_url) if args.prometheus_url else None
    watcher = Watcher(KubeSource(api_client(args.kubeconfig)), tracker, Delivery(api), kinds, stop,
                      gpus=gpus)
    try:
        watcher.run()
    finally:
        api.close()
        if gpus is not None:
            gpus.close()
    return 0


def run_gpus(args: argparse.Namespace) -> int:
    from schedulers.kubernetes.gpus import ApiServerPodMetadata, PodGpuAttribution
    from schedulers.kubernetes.owners import PodJobResolver
    from schedulers.kubernetes.podresources import PodResourcesClient

    attribution = PodGpuAttribution(PodResourcesClient(args.pod_resources_socket),
                                    ApiServerPodMetadata(api_client(args.kubeconfig)),
                                    PodJobResolver(args.job_label))
    for owner in attribution.owners():
        print(f"{owner.device_id}\t{owner.namespace}/{owner.pod}\t{owner.container}\t{owner.job_id or '-'}")
    return 0


def add_arguments(kube: Any) -> None:
    from schedulers.kubernetes.podresources import DEFAULT_SOCKET

    actions = kube.add_subparsers(dest="kube_action", metavar="ACTION", required=True)
    watch = actions.add_parser(
        "watch", help="register and finish the cluster's training jobs in the API",
        description="Watches pods and the known job kinds (Kubeflow, KubeDL, JobSet, Volcano, batch "
                    "Jobs) and PUTs each job's record to the API with a scheduler token "
                    f"(--api.token-file or ${TOKEN_ENV}).")
    watch.add_argument("--api.url", dest="api_url", required=True, metavar="URL")
    watch.add_argument("--api.token-file", dest="api_token_file", metavar="FILE", default=None)
    watch.add_argument("--api.ca-file", dest="api_ca_file", metavar="FILE", default=None,
                       help="CA bundle for an https API URL (default: the system's)")
    watch.add_argument("--tenant", action="append", default=[], metavar="NAMESPACE=TENANT",
                       help="tenant of a namespace's jobs (default: the namespace); repeatable")
    watch.add_argument("--tenant-map-file", default=None, metavar="FILE",
                       help="YAML mapping namespace: tenant")
    watch.add_argument("--user-key", action="append", default=None, metavar="KEY",
                       help="label or annotation naming the job's user (default: jobsight.io/user); "
                            "repeatable")
    watch.add_argument("--cluster", default=None, help="cluster name, added to every job's labels")
    watch.add_argument("--prometheus.url", dest="prometheus_url", default=None, metavar="URL",
                       help="where the agents' jobsight_gpu_job_info is: the jobs' GPUs (host, index, UUID) "
                            "go into their records (default: GPU counts only)")
    watch.add_argument("--all-jobs", action="store_true",
                       help="also register jobs whose pods ask for no GPU")
    watch.add_argument("--kinds", action="append", default=None, metavar="PLURAL.GROUP",
                       help="watch only these job kinds (e.g. pytorchjobs.kubeflow.org, jobs.batch)")
    for parser in (watch,):
        parser.add_argument("--kubeconfig", default=None, metavar="FILE")
        parser.add_argument("--job-label", action="append", default=[], metavar="KEY",
                            help="a pod label naming its job, checked before the built-in rules; repeatable")
    watch.set_defaults(func=run_watch)

    gpus = actions.add_parser("gpus", help="print which pod and job holds each GPU of this node")
    gpus.add_argument("--pod-resources-socket", default=str(DEFAULT_SOCKET), metavar="PATH")
    gpus.add_argument("--kubeconfig", default=None, metavar="FILE")
    gpus.add_argument("--job-label", action="append", default=[], metavar="KEY")
    gpus.set_defaults(func=run_gpus)


def register(commands: Any) -> None:
    kube = commands.add_parser("kube", help="Kubernetes: job registration, GPU → pod → job")
    add_arguments(kube)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `python -m` convenience
    parser = argparse.ArgumentParser(prog="jobsight kube")
    add_arguments(parser)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
