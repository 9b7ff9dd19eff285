"""Training steps under another job's id: a user's process on the node claims a job that is not
its own. The receiver finds the process behind the connection (procfs: the TCP socket, then the
process holding it) and its job from its scheduler cgroup, and refuses a claim that differs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from collectors.otlp.peer import PeerProcesses, SenderJobs
from collectors.otlp.server import OtlpReceiver
from collectors.otlp.store import TrainingStore
from jobsight.identity import ProcessJobResolver
from jobsight.serving import ListenAddress
from tests.collectors.otlp.test_receiver import gauge_request
from tests.support import AS_NOBODY, REPO_ROOT

pytestmark = pytest.mark.security

# The sender: a user's process. It waits until the test has put it "into" a Slurm job (a cgroup
# file in the resolver's procfs), then posts each body on one kept-alive connection, as an
# exporter does, and prints the answers.
SENDER = """
import http.client, json, sys
url_port, bodies = int(sys.argv[1]), [bytes.fromhex(b) for b in sys.argv[2:]]
sys.stdin.readline()
conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=30)
out = []
for body in bodies:
    conn.request("POST", "/v1/metrics", body, {"Content-Type": "application/x-protobuf"})
    reply = conn.getresponse()
    out.append([reply.status, reply.read().hex()])
print(json.dumps(out), flush=True)
"""


def _in_slurm_job(proc_root: Path, pid: int, job: str) -> None:
    """What /proc/<pid> shows of a process slurmstepd started for ``job`` (cgroup v2)."""
    base = proc_root / str(pid)
    base.mkdir(parents=True)
    (base / "cgroup").write_text(f"0::/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0\n")
    (base / "stat").write_text(f"{pid} (python3) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5001 0 0\n")


@pytest.fixture
def receiver_for(tmp_path: Path) -> Iterator[tuple[Path, list[OtlpReceiver]]]:
    started: list[OtlpReceiver] = []
    yield tmp_path / "proc", started
    for receiver in started:
        receiver.stop()


def _send(receiver: OtlpReceiver, proc_root: Path, job: str | None, claims: list[str]) -> list[str]:
    """Post one step body per claimed job id from a process of ``nobody`` (in Slurm job ``job``,
    or in none); the refusal reasons the receiver answered, one per body ("" when accepted)."""
    bodies = [gauge_request(claim, 0, {"compute": 1.0}).SerializeToString().hex() for claim in claims]
    argv = [*AS_NOBODY, sys.executable, "-c", SENDER, str(receiver.address.port), *bodies]
    sender = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    if job is not None:
        _in_slurm_job(proc_root, sender.pid, job)
    out, err = sender.communicate("go\n", timeout=60)
    assert sender.returncode == 0, err
    answers = []
    for status, body in json.loads(out):
        assert status == 200
        reply = ExportMetricsServiceResponse.FromString(bytes.fromhex(body))
        answers.append(reply.partial_success.error_message)
    return answers


def _receiver(proc_root: Path, started: list[OtlpReceiver], require: bool = False) -> OtlpReceiver:
    proc_root.mkdir(exist_ok=True)
    # The real /proc finds the sending process; the resolver reads its cgroup from proc_root.
    senders = SenderJobs(PeerProcesses("/proc"), ProcessJobResolver(proc_root, trust_environment=False))
    receiver = OtlpReceiver(TrainingStore(), ListenAddress("127.0.0.1", 0), senders=senders,
                            require_sender_job=require).start()
    started.append(receiver)
    return receiver


def test_a_process_of_one_job_cannot_report_steps_for_another(
    receiver_for: tuple[Path, list[OtlpReceiver]]
) -> None:
    proc_root, started = receiver_for
    receiver = _receiver(proc_root, started)
    answers = _send(receiver, proc_root, "4711", ["4711", "9002"])
    assert answers[0] == ""  # its own job: taken
    assert "not_the_senders_job" in answers[1]
    ranks = receiver.store.snapshot().ranks
    assert {r.job_id for r in ranks} == {"4711"}


def test_a_sender_in_no_job_is_taken_unless_a_job_is_required(
    receiver_for: tuple[Path, list[OtlpReceiver]]
) -> None:
    proc_root, started = receiver_for
    # In no scheduler cgroup (a login shell, a process on a node without Slurm's cgroups): by
    # default its claim is taken, as before; the receiver cannot tell.
    assert _send(_receiver(proc_root, started), proc_root, None, ["4711"]) == [""]
    strict = _receiver(proc_root, started, require=True)
    assert "sender_job_unknown" in _send(strict, proc_root, None, ["4711"])[0]
    assert _send(strict, proc_root, "4711", ["4711"]) == [""]


# A receiver that may not read other users' /proc/<pid>/fd (root without CAP_SYS_PTRACE, as the
# chart's agent runs by default): it cannot find the sender, says so, and checks nothing.
NO_PTRACE_RECEIVER = """
import socket, sys
from collectors.otlp.peer import PeerProcesses
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
print(server.getsockname()[1], flush=True)
conn, client = server.accept()
peers = PeerProcesses("/proc")
print(peers.pid_of(client, conn.getsockname()), peers.denied, flush=True)
"""
CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sys.stdin.readline()
"""
NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def test_without_ptrace_the_sender_is_unknown_and_counted() -> None:
    receiver = subprocess.Popen([*NO_CAPS, sys.executable, "-c", NO_PTRACE_RECEIVER], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO_ROOT)})
    client = None
    try:
        assert receiver.stdout is not None
        port = receiver.stdout.readline().strip()
        assert port.isdigit(), receiver.stderr.read() if receiver.stderr else ""
        client = subprocess.Popen([*AS_NOBODY, sys.executable, "-c", CLIENT, port], stdin=subprocess.PIPE,
                                  text=True)
        pid, denied = receiver.stdout.readline().split()
        assert pid == "None" and int(denied) >= 1
    finally:
        if client is not None:
            client.communicate("done\n", timeout=30)
        receiver.wait(timeout=30)
