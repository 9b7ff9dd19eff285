"""``jobsight up``: the whole stack on this machine, from one command.

Under a state directory it generates configs and starts, in order: Alertmanager, the job API,
the log collector, one agent per node (GPU, RDMA, node collectors) and Prometheus with jobsight's
alert rules. On a machine with NVIDIA GPUs it runs one agent on the real hardware; elsewhere a
clearly announced simulated cluster (2 nodes x 8 GPUs, an RDMA fabric) and a demo with one
healthy and one failing job (see :mod:`launch.demo`). Ctrl-C stops every child cleanly.

A wiring module: it imports components to start and configure them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from jobsight.errors import BackendUnavailable, JobsightError
from launch.stackconfig import Ports

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = ".jobsight"
INSTALL_HINT = (
    "install them with `sudo apt-get install prometheus prometheus-alertmanager` (Debian/Ubuntu), "
    "or run `make run`, which does it for you"
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start the whole stack on this machine (simulated cluster and demo without GPUs)",
        description="Start Prometheus, Alertmanager, the job API, the log collector and one agent per "
        "node under a state directory. Without NVIDIA GPUs: a simulated 2-node x 8-GPU cluster with an "
        "RDMA fabric and a demo of a healthy and a failing job. Ctrl-C stops everything.",
    )
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"where configs, data and logs live (default: {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--hardware",
        choices=["auto", "real", "simulated"],
        default="auto",
        help="real NVML and /sys, or the simulated cluster (default: auto, real if NVML works)",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="use free ports instead of the defaults (9090, 9093, 8000, 9404, 9400+)",
    )
    parser.add_argument(
        "--no-demo",
        dest="demo",
        action="store_false",
        help="do not start the demo jobs (simulated hardware only)",
    )
    parser.add_argument(
        "--fault-after",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="demo: seconds before XID 79 hits node2 GPU 3 (default: 20)",
    )
    parser.add_argument(
        "--scenario",
        choices=["xid", "hang"],
        default="xid",
        help="demo: how demo-fail goes wrong: xid (GPU 3 of node2 falls off the bus, the job fails) or "
        "hang (its rank 7 stops stepping while its GPU stays busy; JobHung fires and names it) "
        "(default: xid)",
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="Prometheus scrape and rule evaluation interval (default: 5)",
    )
    parser.add_argument(
        "--grafana-url",
        default="http://localhost:3000",
        metavar="URL",
        help="Grafana the job links point to (push dashboards there with "
        "`jobsight dashboards push`; default: http://localhost:3000)",
    )
    parser.add_argument(
        "--grafana-token",
        default=os.environ.get("JOBSIGHT_GRAFANA_TOKEN"),
        metavar="TOKEN",
        help="Grafana service-account token: the API then annotates job start and failure there "
        "(default: $JOBSIGHT_GRAFANA_TOKEN)",
    )
    parser.add_argument(
        "--remote-write",
        action="append",
        default=[],
        metavar="URL",
        help="also send every sample to this Prometheus remote_write endpoint, e.g. VictoriaMetrics' "
        "http://vm:8428/api/v1/write or Mimir's /api/v1/push (repeatable; docs/scale.md)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.scrape_interval < 1 or args.fault_after < 0:
        from jobsight.errors import ConfigError

        raise ConfigError("--scrape-interval must be >= 1 and --fault-after >= 0 seconds")
    return Stack(
        state_dir=Path(args.state_dir).resolve(),
        hardware=args.hardware,
        free_ports=args.free_ports,
        demo=args.demo,
        fault_after=args.fault_after,
        scenario=args.scenario,
        scrape_interval=args.scrape_interval,
        grafana_url=args.grafana_url.rstrip("/"),
        grafana_token=args.grafana_token,
        remote_write=tuple(args.remote_write),
    ).run()


def find_binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def real_gpus_present() -> bool:
    from exporters.gpu.nvml import NvmlBackend

    backend = NvmlBackend()
    try:
        backend.open()
    except JobsightError:
        return False
    finally:
        backend.close()
    return True


@dataclass(frozen=True)
class Secrets:
    admin_token: str
    demo_token: str
    webhook_token: str
    # Registers the demo's jobs, as the Slurm hooks or the Kubernetes watcher would.
    scheduler_token: str
    # Lets Prometheus read the API's per-job metrics (jobsight_job_status).
    metrics_token: str
    # Signs the job pages' read-only links and login sessions (the API's pages.signing_key).
    page_key: str = ""

    @classmethod
    def load_or_create(cls, path: Path) -> Secrets:
        """Stable across restarts, so bookmarks and scripts keep working; readable by the owner only."""
        try:
            data = json.loads(path.read_text())
            loaded = cls(data["admin_token"], data["demo_token"], data["webhook_token"],
                         data["scheduler_token"], data["metrics_token"], data.get("page_key", ""))
            if loaded.page_key:
                return loaded
            # A state directory from before the job pages: its tokens stay, the key is added.
            made = replace(loaded, page_key=secrets.token_urlsafe(32))
        except (OSError, ValueError, KeyError):
            made = cls(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(24),
                       secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(32))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(made.__dict__))
        tmp.chmod(0o600)
        tmp.replace(path)
        return made


class Stack:
    def __init__(
        self,
        state_dir: Path,
        hardware: str = "auto",
        free_ports: bool = False,
        demo: bool = True,
        fault_after: float = 20.0,
        scenario: str = "xid",
        scrape_interval: float = 5.0,
        grafana_url: str = "http://localhost:3000",
        grafana_token: str | None = None,
        remote_write: tuple[str, ...] = (),
    ) -> None:
        self.state = state_dir
        self.remote_write = remote_write
        self.hardware = hardware
        self.free_ports = free_ports
        self.demo_enabled = demo
        self.fault_after = fault_after
        self.scenario = scenario
        self.scrape_interval = scrape_interval
        self.grafana_url = grafana_url
        self.grafana_token = grafana_token
        self._stop = threading.Event()

    # --- the whole run -------------------------------------------------------------------------
    def run(self) -> int:
        from launch.supervisor import ChildFailed, Supervisor

        prometheus = find_binary("prometheus")
        alertmanager = find_binary("prometheus-alertmanager", "alertmanager")
        missing = [
            n for n, p in (("prometheus", prometheus), ("prometheus-alertmanager", alertmanager)) if not p
        ]
        if missing or prometheus is None or alertmanager is None:
            raise BackendUnavailable(f"{' and '.join(missing)} not found on PATH: {INSTALL_HINT}")

        self.state.mkdir(parents=True, exist_ok=True)
        self._claim_state_dir()
        supervisor = Supervisor(self.state)
        for leftover in supervisor.end_leftovers():
            print(f"ended a leftover process of an earlier run: {leftover}")

        simulated = self.hardware == "simulated" or (self.hardware == "auto" and not real_gpus_present())
        if self.hardware == "real" and not real_gpus_present():
            raise BackendUnavailable("--hardware=real, but NVML found no usable NVIDIA GPU on this machine")
        nodes = ["node1", "node2"] if simulated else [_real_hostname()]
        ports = self._ports(len(nodes))
        keys = Secrets.load_or_create(self.state / "api" / "secrets.json")
        urls = {
            "prometheus": f"http://127.0.0.1:{ports.prometheus}",
            "alertmanager": f"http://127.0.0.1:{ports.alertmanager}",
            "api": f"http://127.0.0.1:{ports.api}",
            "collector": f"http://127.0.0.1:{ports.collector}",
        }
        agents = {node: f"127.0.0.1:{port}" for node, port in zip(nodes, ports.agents, strict=True)}

        if simulated:
            from launch.demo import DemoPaths, write_cluster

            paths = DemoPaths(self.state)
            print("=" * 78)
            print("SIMULATED CLUSTER: no NVIDIA GPU here. node1 and node2, 8 simulated H100 GPUs each,")
            print('2 simulated RoCE ports each; every GPU series carries backend="simulated".')
            print("=" * 78)
            write_cluster(paths)
            if self.demo_enabled:
                self._reset_demo_state()

        self._write_configs(nodes, ports, urls, agents, keys, simulated)

        demo = None
        traffic: threading.Thread | None = None
        notices: threading.Thread | None = None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, lambda signum, frame: self._stop.set())
        try:
            self._start_children(supervisor, prometheus, alertmanager, nodes, ports, urls, agents, simulated)
            if simulated:
                traffic = threading.Thread(target=self._advance_fabric, args=(nodes,), daemon=True)
                traffic.start()
            if simulated and self.demo_enabled:
                from launch.demo import DemoDriver, DemoPaths

                demo = DemoDriver(
                    DemoPaths(self.state), urls["api"], keys.scheduler_token, self.fault_after,
                    scenario=self.scenario,
                    otlp_endpoints={
                        node: f"http://127.0.0.1:{port}" for node, port in zip(nodes, ports.otlp, strict=True)
                    },
                )
                demo.start()
                notices = threading.Thread(target=self._watch_notifications, daemon=True)
                notices.start()
            self._write_endpoints(urls, agents, keys, simulated)
            self._print_banner(urls, agents, keys, simulated)
            while not self._stop.wait(0.5):
                dead = supervisor.dead_critical()
                if dead is not None:
                    raise ChildFailed(
                        f"{dead.name} exited with code {dead.popen.returncode}; its log "
                        f"({dead.log_path}) ends with:\n{dead.log_tail()}"
                    )
            print("\nstopping: every child gets SIGTERM, then SIGKILL after 10 s")
            return 0
        except ChildFailed as exc:
            print(f"jobsight up: {exc}", file=sys.stderr)
            return 1
        finally:
            self._stop.set()
            if demo is not None:
                demo.stop()
            supervisor.stop_all()
            (self.state / "up.pid").unlink(missing_ok=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            print("stopped.")

    # --- pieces ------------------------------------------------------------------------------
    def _claim_state_dir(self) -> None:
        """One `jobsight up` per state directory; a stale claim (its process gone) is taken over."""
        pid_file = self.state / "up.pid"
        try:
            other = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            other = 0
        if other and other != os.getpid():
            try:
                cmdline = Path(f"/proc/{other}/cmdline").read_bytes()
            except OSError:
                cmdline = b""
            if b"jobsight" in cmdline and b"up" in cmdline:
                raise JobsightError(
                    f"another `jobsight up` (pid {other}) is running with state directory {self.state}; "
                    "stop it first or use --state-dir"
                )
        pid_file.write_text(f"{os.getpid()}\n")

    def _reset_demo_state(self) -> None:
        """The demo's jobs have fixed ids: a second run starts from empty stores, or its summary
        would mix in the first run's logs, alerts and series. Tokens are kept."""
        for sub in ("jobs", "logstore", "prometheus/data", "alertmanager/data"):
            shutil.rmtree(self.state / sub, ignore_errors=True)
        for pattern in ("api/jobs.db*", "notifications.jsonl", "fault_injected_at"):
            for path in self.state.glob(pattern):
                path.unlink(missing_ok=True)

    def _ports(self, agents: int) -> Ports:
        if self.free_ports:
            return Ports.free(agents)
        return Ports(
            agents=tuple(9400 + 10 * i for i in range(agents)),
            otlp=tuple(4318 + 10 * i for i in range(agents)),
        )

    def _write_configs(
        self,
        nodes: list[str],
        ports: Ports,
        urls: dict[str, str],
        agents: dict[str, str],
        keys: Secrets,
        simulated: bool,
    ) -> None:
        from alerts.config import render_alertmanager_config, render_rules, write_alertmanager_config
        from launch.stackconfig import AgentTarget, PrometheusConfig

        prom_dir = self.state / "prometheus"
        rules = render_rules(prom_dir / "rules")
        interval = f"{self.scrape_interval:g}s"
        config = PrometheusConfig(
            agents=[AgentTarget(node, address) for node, address in agents.items()],
            collector=f"127.0.0.1:{ports.collector}",
            api=f"127.0.0.1:{ports.api}",
            alertmanager=f"127.0.0.1:{ports.alertmanager}",
            rule_files=rules,
            api_metrics_token=keys.metrics_token,
            scrape_interval=interval,
            evaluation_interval=interval,
            remote_write=self.remote_write,
        )
        # Private: it holds the token that reads the API's per-job metrics.
        prom_config = prom_dir / "prometheus.yml"
        tmp = prom_config.with_suffix(".tmp")
        tmp.write_text(config.render())
        tmp.chmod(0o600)
        tmp.replace(prom_config)

        am_dir = self.state / "alertmanager"
        am_dir.mkdir(parents=True, exist_ok=True)
        write_alertmanager_config(
            am_dir / "alertmanager.yml",
            render_alertmanager_config(f"{urls['api']}/v1/alerts/webhook", keys.webhook_token),
        )

        api_dir = self.state / "api"
        api_dir.mkdir(parents=True, exist_ok=True)
        api_config = {
            "listen": f"127.0.0.1:{ports.api}",
            "store_url": f"sqlite:///{api_dir / 'jobs.db'}",
            "prometheus_url": urls["prometheus"],
            "alertmanager_url": urls["alertmanager"],
            "log_store": str(self.state / "logstore"),
            "grafana_url": self.grafana_url,
            "public_url": urls["api"],
            "tokens": [
                {"token": keys.admin_token, "tenant": "ops", "role": "admin"},
                {"token": keys.demo_token, "tenant": "demo", "role": "tenant"},
                {"token": keys.scheduler_token, "tenant": "demo-scheduler", "role": "scheduler"},
            ],
            "webhook_token": keys.webhook_token,
            "metrics_token": keys.metrics_token,
            "notify": {"demo": [f"file://{self.state / 'notifications.jsonl'}"]},
            # Give the failure's log events and alerts a moment to land before the diagnosis is
            # written: the ranks' last lines reach the store within a second or two.
            "notify_delay_seconds": 5,
            "tensorboard": {"allowed_roots": {"demo": [str(self.state / "jobs")]}},
            "pages": {"signing_key": keys.page_key},
        }
        if self.grafana_token:
            api_config["grafana_token"] = self.grafana_token
        _write_yaml(api_dir / "api.yaml", api_config, private=True)

        sources: list[dict[str, Any]] = []
        if simulated:
            for node in nodes:
                sources.append(
                    {
                        "type": "file",
                        "name": f"jobs-{node}",
                        "host": node,
                        "paths": [str(self.state / "jobs" / "*" / node / "*.log")],
                        # Anchored at the state directory: patterns match the whole path.
                        "job_id_pattern": re.escape(str(self.state / "jobs")) + r"/(?P<job_id>[^/]+)/",
                    }
                )
                sources.append(
                    {
                        "type": "kmsg",
                        "name": f"kmsg-{node}",
                        "host": node,
                        "path": str(self.state / "nodes" / node / "kmsg"),
                    }
                )
        else:
            sources.append({"type": "kmsg", "name": "kmsg"})
            sources.append({"type": "file", "name": "slurm", "paths": ["/var/spool/slurm*/job*/slurm-*.out"]})
        collector_config = {
            "host": nodes[0],
            "listen": f"127.0.0.1:{ports.collector}",
            "store": {"path": str(self.state / "logstore")},
            "sources": sources,
        }
        _write_yaml(self.state / "collector.yaml", collector_config)

    def _start_children(
        self,
        supervisor: Any,
        prometheus: str,
        alertmanager: str,
        nodes: list[str],
        ports: Ports,
        urls: dict[str, str],
        agents: dict[str, str],
        simulated: bool,
    ) -> None:
        jobsight = [sys.executable, "-m", "launch"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NODE_NAME", None)  # the agents get their node names from flags
        steps: list[tuple[str, list[str], str]] = [
            (
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={self.state / 'alertmanager' / 'alertmanager.yml'}",
                    f"--storage.path={self.state / 'alertmanager' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
                    "--cluster.listen-address=",
                ],
                f"{urls['alertmanager']}/-/ready",
            ),
            (
                "api",
                [*jobsight, "api", "--config", str(self.state / "api" / "api.yaml")],
                f"{urls['api']}/healthz",
            ),
            (
                "collector",
                [*jobsight, "collector", "logs", "--config", str(self.state / "collector.yaml")],
                f"{urls['collector']}/metrics",
            ),
        ]
        for index, (node, address) in enumerate(agents.items()):
            argv = [
                *jobsight, "agent", f"--web.listen-address={address}", f"--hostname={node}",
                f"--otlp.listen-address=127.0.0.1:{ports.otlp[index]}",
            ]
            if simulated:
                argv += [
                    f"--scenario={self.state / 'nodes' / node / 'scenario.yaml'}",
                    f"--path.sysfs={self.state / 'nodes' / node / 'sys'}",
                ]
                if node != nodes[0]:
                    # All simulated nodes share this machine's /proc: count job processes once.
                    argv.append("--no-collector.jobs")
                else:
                    # The demo's ranks name their job in JOBSIGHT_JOB_ID (a one-machine stack has
                    # no scheduler cgroups); jobsight started them itself, so believe it here.
                    argv.append("--collector.jobs.trust-environment")
            steps.append((f"agent-{node}", argv, f"http://{address}/healthz"))
        steps.append(
            (
                "prometheus",
                [
                    prometheus,
                    f"--config.file={self.state / 'prometheus' / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.state / 'prometheus' / 'data'}",
                    f"--web.listen-address=127.0.0.1:{ports.prometheus}",
                    "--storage.tsdb.retention.time=7d",
                    "--web.enable-lifecycle",
                ],
                f"{urls['prometheus']}/-/ready",
            )
        )
        for name, argv, ready in steps:
            print(f"starting {name} ...", flush=True)
            child = supervisor.start(name, argv, env=env, ready_url=ready)
            supervisor.wait_ready(child, timeout=90)

    def _advance_fabric(self, nodes: list[str]) -> None:
        """Move the simulated RDMA counters with the training traffic."""
        from exporters.rdma.simulate import advance

        last = time.monotonic()
        while not self._stop.wait(1.0):
            now = time.monotonic()
            for node in nodes:
                try:
                    advance(
                        self.state / "nodes" / node / "sys", now - last, utilisation=0.55, congestion=0.02
                    )
                except OSError as exc:
                    log.warning("simulated fabric of %s: %s", node, exc)
            last = now

    def _watch_notifications(self) -> None:
        """Say on the console when the demo's failure notification went out, and how long after
        the fault; the file is what the API's file:// notification target appends to."""
        path = self.state / "notifications.jsonl"
        fault_file = self.state / "fault_injected_at"
        seen = _line_count(path)
        while not self._stop.wait(0.5):
            count = _line_count(path)
            if count <= seen:
                continue
            seen = count
            try:
                fault_at = float(fault_file.read_text())
                after = f" {time.time() - fault_at:.1f} s after the fault"
            except (OSError, ValueError):
                after = ""
            print(f"\nnotification sent{after}: see {path}", flush=True)

    def _write_endpoints(
        self, urls: dict[str, str], agents: dict[str, str], keys: Secrets, simulated: bool
    ) -> None:
        data = {
            **urls,
            "agents": {node: f"http://{addr}" for node, addr in agents.items()},
            "admin_token": keys.admin_token,
            "demo_token": keys.demo_token,
            "simulated": simulated,
            "notifications": str(self.state / "notifications.jsonl"),
            "pid": os.getpid(),
        }
        path = self.state / "endpoints.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)

    def _print_banner(
        self, urls: dict[str, str], agents: dict[str, str], keys: Secrets, simulated: bool
    ) -> None:
        from api.signing import Signer

        api = urls["api"]
        signer = Signer(keys.page_key.encode())
        lines = [
            "",
            "jobsight is up." + (" (simulated cluster)" if simulated else ""),
            f"  Prometheus     {urls['prometheus']}   (targets: {urls['prometheus']}/targets, "
            f"alerts: {urls['prometheus']}/alerts)",
            f"  Alertmanager   {urls['alertmanager']}",
            f"  API docs       {api}/docs",
            f"  Log collector  {urls['collector']}/metrics",
        ]
        lines += [f"  Agent {node:<8} http://{addr}/metrics" for node, addr in agents.items()]
        lines += [f"  State dir      {self.state}  (logs of every process in {self.state / 'logs'})"]
        if simulated and self.demo_enabled:
            lines += [
                "",
                "Demo: job demo-ok trains on node1; job demo-fail trains on node1+node2 and, "
                f"{self.fault_after:.0f} s from now,",
                *(
                    ["its rank 7 (node2 GPU 3) hangs before an all-reduce while every GPU stays busy;",
                     "JobHung fires about 6 minutes later and names rank 7 (ranks report steps over OTLP)."]
                    if self.scenario == "hang" else
                    ["loses GPU 3 of node2 to XID 79, then its other ranks hit NCCL timeouts and it fails."]
                ),
                f"  Notification   {self.state / 'notifications.jsonl'}",
                "  Job pages      (signed read-only links, valid 7 days; no token needed)",
                *(f"    {job:<12} {signer.job_url(api, job)}" for job in ("demo-fail", "demo-ok")),
            ]
        lines += [
            "",
            f"Pages: {api}/jobs (sign in at {api}/login with a token; the admin token also sees the fleet "
            f"at {api}/)",
            f"Try (the demo tenant's token; the admin token is in {self.state / 'api' / 'secrets.json'}):",
            f"  export TOKEN={keys.demo_token}",
            f'  curl -s -H "Authorization: Bearer $TOKEN" {api}/v1/jobs/demo-fail/summary',
            f"  curl -s -H \"Authorization: Bearer $TOKEN\" '{api}/v1/jobs/demo-ok/metrics?name=gpu_util'",
            f"  curl -s -H \"Authorization: Bearer $TOKEN\" '{api}/v1/jobs/demo-fail/logs?kind=nccl_timeout'",
            "",
            "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)


def _write_yaml(path: Path, data: dict[str, Any], private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    if private:
        tmp.chmod(0o600)
    tmp.replace(path)


def _line_count(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


def _real_hostname() -> str:
    from jobsight.host import host_key

    return host_key()
