"""A real Slurm (Debian's slurmctld/slurmd 22.05 with munge) on this host: two nodes with four fake
GPUs each, started without systemd in a temporary directory and stopped by PID file.

The facts it relies on are in ../shared/research/schedulers.md: ``SlurmctldHost`` must be the short
host name, fake GPUs are character devices (``mknod … c 195 N``), two slurmd share a host with
``NodeAddr=127.0.0.1`` and their own ports, and a private munged socket (``AuthInfo=socket=``)
keeps the test off any munged the machine runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import free_port, wait_until

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")
MUNGE_KEY = Path("/etc/munge/munge.key")


def require_slurm() -> None:
    if os.geteuid() != 0:
        pytest.skip("a test Slurm needs root (SlurmUser=root, mknod)")
    missing = [d for d in DAEMONS if not (shutil.which(d) or Path(f"/usr/sbin/{d}").exists())]
    if missing or not MUNGE_KEY.exists():
        pytest.fail(f"Slurm is not installed ({', '.join(missing) or MUNGE_KEY}): `make test` installs "
                    "slurmctld slurmd slurm-client munge")


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class SlurmCluster:
    root: Path
    nodes: tuple[str, ...]
    gpus_per_node: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def device_minors(self, node: str) -> list[int]:
        first = self.nodes.index(node) * self.gpus_per_node
        return list(range(first, first + self.gpus_per_node))

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def sbatch(self, *args: str) -> str:
        return self.run(_binary("sbatch"), "--parsable", *args).stdout.strip().split(";")[0]

    def show_job(self, job_id: str) -> dict[str, str]:
        from schedulers.slurm.state import parse_show_job

        done = self.run(_binary("scontrol"), "-o", "show", "job", job_id, check=False)
        return parse_show_job(done.stdout) if done.returncode == 0 else {}

    def wait_state(self, job_id: str, states: Sequence[str], timeout: float = 60) -> dict[str, str]:
        return wait_until(lambda: (f := self.show_job(job_id)) and f.get("JobState") in states and f,
                          timeout=timeout, interval=0.2, message=f"job {job_id} in {states}")

    def node_states(self) -> dict[str, str]:
        out = self.run(_binary("sinfo"), "-h", "-N", "-o", "%N %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def unhealthy_nodes(self) -> dict[str, str]:
        """Nodes Slurm took out of service (drained, down, failed) or that stopped answering (a
        ``*`` suffix): what a failing Prolog or Epilog does to a node. Scheduling states (mixed,
        allocated, completing, planned for a pending job) are not faults."""
        return {node: state for node, state in self.node_states().items()
                if state.endswith("*") or any(word in state for word in ("drain", "down", "fail"))}


def _write_config(root: Path, munge_dir: Path, nodes: Sequence[str], gpus: int,
                  hook: Path | None) -> dict[str, int]:
    host = socket.gethostname().split(".")[0]
    ports = {"ctld": free_port(), "slurmd": free_port(), **{n: free_port() for n in nodes}}
    hooks = (
        f"Prolog={hook}\nEpilog={hook}\nPrologSlurmctld={hook}\nEpilogSlurmctld={hook}\n" if hook else ""
    )
    node_lines = "".join(
        f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports[n]} CPUs=2 Gres=gpu:{gpus} "
        "State=UNKNOWN\n" for n in nodes
    )
    (root / "slurm.conf").write_text(
        f"""ClusterName=jobsight-test
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={ports['ctld']}
SlurmdPort={ports['slurmd']}
AuthType=auth/munge
AuthInfo=socket={munge_dir}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
MinJobAge=600
KillWait=2
OverTimeLimit=0
InactiveLimit=0
GresTypes=gpu
PrologFlags=Alloc
{hooks}{node_lines}PartitionName=gpu Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP
""",
        encoding="utf-8",
    )
    gres_lines = []
    for i, n in enumerate(nodes):
        first = i * gpus
        gres_lines.append(f"NodeName={n} Name=gpu File={root}/dev/nvidia[{first}-{first + gpus - 1}]")
    (root / "gres.conf").write_text("AutoDetect=off\n" + "\n".join(gres_lines) + "\n", encoding="utf-8")
    return ports


def _stop_by_pidfile(pidfile: Path, timeout: float = 10.0) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextmanager
def slurm_cluster(root: Path, nodes: Sequence[str] = ("gpu-node1", "gpu-node2"), gpus_per_node: int = 4,
                  hook: Path | None = None) -> Iterator[SlurmCluster]:
    require_slurm()
    for sub in ("state", "spool", "log", "dev"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged runs as munge and must reach its socket directory: outside pytest's 0700 tree.
    munge_dir = Path(tempfile.mkdtemp(prefix="jobsight-munge-"))
    munge_dir.chmod(0o755)
    shutil.chown(munge_dir, "munge", "munge")
    for minor in range(len(nodes) * gpus_per_node):
        os.mknod(root / "dev" / f"nvidia{minor}", 0o666 | 0o020000, os.makedev(195, minor))
    _write_config(root, munge_dir, nodes, gpus_per_node, hook)
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    cluster = SlurmCluster(root, tuple(nodes), gpus_per_node, env=env)
    pidfiles = [munge_dir / "munged.pid", root / "slurmctld.pid", *(root / f"slurmd.{n}.pid" for n in nodes)]
    try:
        subprocess.run(
            ["runuser", "-u", "munge", "--", _binary("munged"), f"--socket={munge_dir}/munge.socket",
             f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
             f"--seed-file={munge_dir}/munged.seed", "--force"],
            check=True, capture_output=True, timeout=30,
        )
        cluster.run(_binary("slurmctld"))
        for n in nodes:
            cluster.run(_binary("slurmd"), "-N", n)
        wait_until(lambda: set(cluster.node_states().values()) == {"idle"}, timeout=60, interval=0.2,
                   message="every Slurm node idle")
        yield cluster
    finally:
        cluster.run(_binary("scontrol"), "shutdown", check=False, timeout=15)
        for pidfile in reversed(pidfiles):
            _stop_by_pidfile(pidfile)
        shutil.rmtree(munge_dir, ignore_errors=True)
