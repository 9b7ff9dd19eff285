"""The parts around a real Slurm for the hook tests: the job API, one simulated GPU exporter per
Slurm node reading that node's job map, the log collector, and the hook wrapper Slurm runs."""

from __future__ import annotations

import json
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from schedulers.slurm.wrapper import wrapper_script
from tests.schedulers.slurm.cluster import SlurmCluster, slurm_cluster
from tests.support import Proc, free_port, jobsight_command, wait_for_http, wait_until

SCHEDULER_TOKEN = "slurm-scheduler-token-0123456789"
ADMIN_TOKEN = "slurm-admin-token-0123456789abc"
TEAM_TOKEN = "slurm-team-a-token-0123456789ab"
TENANT = "team-a"

_UUID = re.compile(r'jobsight_gpu_info\{[^}]*\bgpu="(\d+)"[^}]*\bUUID="([^"]+)"|'
                   r'jobsight_gpu_info\{[^}]*\bUUID="([^"]+)"[^}]*\bgpu="(\d+)"')


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class SlurmStack:
    root: Path
    cluster: SlurmCluster
    api_url: str
    exporters: dict[str, str]
    hook_config: Path
    outbox: Path
    out_dir: Path
    api_proc: Proc
    api_config: Path

    def job(self, job_id: str, token: str = TEAM_TOKEN) -> dict[str, object] | None:
        r = httpx.get(f"{self.api_url}/v1/jobs/{job_id}", headers=auth(token), timeout=10)
        return r.json() if r.status_code == 200 else None

    def wait_job(self, job_id: str, status: str, timeout: float = 60) -> dict[str, object]:
        return wait_until(lambda: (j := self.job(job_id)) and j.get("status") == status and j,
                          timeout=timeout, interval=0.2, message=f"job {job_id} {status} in the API")

    def gpu_jobs(self, node: str) -> dict[str, set[str]]:
        """``gpu index → job ids`` from the node's exporter's ``jobsight_gpu_job_info``."""
        text = httpx.get(f"{self.exporters[node]}/metrics", timeout=10).text
        out: dict[str, set[str]] = {}
        for line in text.splitlines():
            if line.startswith("jobsight_gpu_job_info{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                out.setdefault(labels["gpu"], set()).add(labels["job_id"])
        return out

    def notified_jobs(self) -> list[str]:
        """The job id of each notification the tenant's file target received, in order."""
        if not self.outbox.exists():
            return []
        titles = [json.loads(line)["title"] for line in self.outbox.read_text().splitlines() if line.strip()]
        return [m[1] for m in (re.match(r"jobsight: job (\S+) failed", t) for t in titles) if m]

    def start_api(self) -> None:
        self.api_proc = Proc(jobsight_command("api", "--config", str(self.api_config),
                                              "--listen", self.api_url.removeprefix("http://")),
                             self.root / f"api-{free_port()}.log")
        wait_for_http(f"{self.api_url}/healthz", proc=self.api_proc)


def _uuids(metrics: str) -> dict[int, str]:
    out = {}
    for m in _UUID.finditer(metrics):
        gpu, uuid = (m[1], m[2]) if m[1] else (m[4], m[3])
        out[int(gpu)] = uuid
    return out


def _fake_driver_listing(directory: Path, minors: list[int], uuids: dict[int, str]) -> None:
    """What /proc/driver/nvidia/gpus/<bus>/information says, for the node's fake devices."""
    for position, minor in enumerate(minors):
        gpu_dir = directory / f"0000:{0x18 + position:02x}:00.0"
        gpu_dir.mkdir(parents=True)
        (gpu_dir / "information").write_text(
            f"Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 100\nGPU UUID: \t {uuids[position]}\n"
            f"Video BIOS: \t 96.00.74.00.01\nBus Type: \t PCIe\nDevice Minor: \t {minor}\n"
            f"Bus Location: \t 0000:{0x18 + position:02x}:00.0\n"
        )


def write_hook_config(path: Path, root: Path, api_url: str) -> None:
    path.write_text(yaml.safe_dump({
        "api_url": api_url, "token": SCHEDULER_TOKEN, "job_map_dir": f"{root}/%n/jobs",
        # One alias directory for both test nodes: they share this host and its one collector.
        "alias_dir": str(root / "aliases"),
        "spool_dir": f"{root}/hook-spool", "slurm_conf": str(root / "slurm" / "slurm.conf"),
        "nvidia_procfs": f"{root}/%n/nvidia-gpus", "timeout_seconds": 5,
    }))


@contextmanager
def slurm_stack(root: Path) -> Iterator[SlurmStack]:
    nodes = ("gpu-node1", "gpu-node2")
    with ExitStack() as stack:
        procs: list[Proc] = []
        stack.callback(lambda: [p.stop() for p in reversed(procs)])
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        outbox = root / "outbox.jsonl"
        api_config = root / "api.yaml"
        api_config.write_text(yaml.safe_dump({
            "store_url": f"sqlite:///{root / 'api.db'}",
            "prometheus_url": f"http://127.0.0.1:{free_port()}",  # no Prometheus: summaries degrade
            "log_store": str(root / "logstore"),
            "tokens": [
                {"token": SCHEDULER_TOKEN, "tenant": "slurm", "role": "scheduler"},
                {"token": ADMIN_TOKEN, "tenant": "ops", "role": "admin"},
                {"token": TEAM_TOKEN, "tenant": TENANT},
            ],
            "notify": {TENANT: [f"file://{outbox}"]},
        }))
        exporters: dict[str, str] = {}
        for node in nodes:
            (root / node / "jobs").mkdir(parents=True)
            port = free_port()
            procs.append(Proc(jobsight_command("exporter", "gpu", "--simulate", "4", "--hostname", node,
                                               "--job-map-dir", str(root / node / "jobs"),
                                               "--web.listen-address", f"127.0.0.1:{port}"),
                              root / f"gpu-{node}.log"))
            exporters[node] = f"http://127.0.0.1:{port}"
        out_dir = root / "out"
        out_dir.mkdir()
        out_dir.chmod(0o777)
        collector_config = root / "collector.yaml"
        collector_config.write_text(yaml.safe_dump({
            "store": {"path": str(root / "logstore")},
            "sources": [{"type": "file", "name": "slurm-out", "paths": [f"{out_dir}/slurm-*.out"],
                         "job_id_patterns": [
                             rf"^{out_dir}/slurm-(?P<job_id>\d+)\.out$",
                             rf"^{out_dir}/slurm-(?P<array_job_id>\d+)_(?P<array_task_id>\d+)\.out$"],
                         "job_alias_dir": str(root / "aliases")}],
            "listen": f"127.0.0.1:{free_port()}", "glob_interval": 0.3,
        }))
        procs.append(Proc(jobsight_command("collector", "logs", "--config", str(collector_config)),
                          root / "collector.log"))
        hook_config = root / "slurm.yaml"
        write_hook_config(hook_config, root, api_url)
        hook = root / "jobsight-slurm-hook"
        hook.write_text(wrapper_script(config=hook_config))  # as `jobsight slurm wrapper` writes it
        hook.chmod(hook.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        for node, url in exporters.items():
            metrics = wait_for_http(f"{url}/metrics").text
            first = nodes.index(node) * 4
            _fake_driver_listing(root / node / "nvidia-gpus", list(range(first, first + 4)), _uuids(metrics))
        running = SlurmStack(root, None, api_url, exporters, hook_config, outbox, out_dir,  # type: ignore[arg-type]
                             None, api_config)  # type: ignore[arg-type]
        running.start_api()
        stack.callback(lambda: running.api_proc.stop())
        cluster = stack.enter_context(slurm_cluster(root / "slurm", nodes, 4, hook=hook))
        running.cluster = cluster
        shutil.chown(out_dir, "nobody")
        yield running
