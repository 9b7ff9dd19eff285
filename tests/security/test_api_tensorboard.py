"""Finding 5: TensorBoard crossed tenants. Against the real API process (running as root, as the
report found it), with the attacker's files made by an unprivileged user (``nobody``):

- with no allowed roots, no TensorBoard and no ``/scalars`` at all (a clear 403);
- a tenant's logdir must lie under that tenant's roots, not another tenant's;
- symlinks planted inside an allowed root are not followed by ``/scalars``, and a TensorBoard is
  not started over them;
- the event-file walk is bounded (files, bytes);
- a TensorBoard is reached only through the API with a token: its own port serves nothing
  without the secret prefix, which is not on its command line.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tensorboard.summary import Writer

from tests.api.conftest import SCHEDULER, TEAM_A, TEAM_B, auth
from tests.api.live import LiveApi, live_settings, start_api
from tests.support import FIXTURES, NOBODY_UID, Proc, as_nobody, free_port, wait_until

pytestmark = pytest.mark.security

FAKE_TB = [sys.executable, str(FIXTURES / "api" / "fake_tensorboard.py")]


def write_scalars(logdir: Path, tag: str, values: list[float]) -> None:
    writer = Writer(str(logdir))
    for step, value in enumerate(values):
        writer.add_scalar(tag, value, step, wall_time=1_700_000_000 + step)
    writer.close()


@pytest.fixture
def roots() -> Iterator[Path]:
    """/tmp/…/team-a (owned by nobody: the attacker's) and /tmp/…/team-b (the victim's), outside
    pytest's root-only temporary tree so that nobody can reach them."""
    base = Path(tempfile.mkdtemp(prefix="jobsight-tb-security-"))
    try:
        base.chmod(0o755)
        for tenant in ("team-a", "team-b"):
            (base / tenant).mkdir()
        os.chown(base / "team-a", NOBODY_UID, NOBODY_UID)
        write_scalars(base / "team-b" / "secret-run", "secret_loss", [42.0, 43.0])
        own = base / "team-a" / "job-a"
        write_scalars(own / "train", "loss", [1.0, 0.5])
        for path in [own, *own.rglob("*")]:
            os.chown(path, NOBODY_UID, NOBODY_UID)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _start(spawn: Callable[..., Proc], tmp_path: Path, tensorboard: dict[str, object]) -> LiveApi:
    settings = live_settings(tmp_path, f"http://127.0.0.1:{free_port()}", {"tensorboard": tensorboard})
    return start_api(spawn, tmp_path, settings)


def _register(api: LiveApi, job_id: str, logdir: Path | str, tenant: str = "team-a") -> None:
    body = {"tenant": tenant, "tensorboard_logdir": str(logdir)}
    assert httpx.put(f"{api.url}/v1/jobs/{job_id}", json=body, headers=auth(SCHEDULER)).status_code == 201


def test_no_roots_no_tensorboard(spawn: Callable[..., Proc], tmp_path: Path, roots: Path) -> None:
    api = _start(spawn, tmp_path, {"command": FAKE_TB})
    _register(api, "job-a", roots / "team-a" / "job-a")
    for route in ("scalars", "tensorboard"):
        response = httpx.get(f"{api.url}/v1/jobs/job-a/{route}", headers=auth(TEAM_A))
        assert response.status_code == 403, response.text
        assert "allowed_roots" in response.json()["detail"]


def test_logdirs_stay_in_the_tenants_roots(spawn: Callable[..., Proc], tmp_path: Path, roots: Path) -> None:
    api = _start(
        spawn,
        tmp_path,
        {"command": FAKE_TB, "allowed_roots": {"*": [str(roots / "{tenant}")]}, "max_event_files": 3},
    )
    # The legitimate path: team-a's own run.
    _register(api, "job-a", roots / "team-a" / "job-a")
    own = httpx.get(f"{api.url}/v1/jobs/job-a/scalars", headers=auth(TEAM_A))
    assert own.status_code == 200 and own.json()["tags"] == ["loss"], own.text

    # Pointing straight at team-b's directory, at /root, or at a path that climbs out: refused.
    outside: list[Path | str] = [
        roots / "team-b" / "secret-run",
        "/root",
        "/",
        f"{roots}/team-a/../team-b",
        roots / "team-a-evil",
    ]
    for i, bad in enumerate(outside):
        _register(api, f"bad-{i}", bad)
        response = httpx.get(f"{api.url}/v1/jobs/bad-{i}/scalars", headers=auth(TEAM_A))
        assert response.status_code == 422, (bad, response.text)

    # The attacker (nobody) plants symlinks inside its own allowed root: a directory link, a file
    # link, and a logdir that is itself a link to team-b's run.
    planted = roots / "team-a" / "planted"
    as_nobody("mkdir", "-p", str(planted / "real"))
    write_scalars(planted / "real", "loss", [3.0])
    as_nobody("ln", "-s", str(roots / "team-b" / "secret-run"), str(planted / "linked-run"))
    (secret_file,) = (roots / "team-b" / "secret-run").glob("*tfevents*")
    as_nobody("mkdir", "-p", str(planted / "files"))
    as_nobody("ln", "-s", str(secret_file), str(planted / "files" / "events.out.tfevents.1.x"))
    as_nobody("ln", "-s", str(roots / "team-b" / "secret-run"), str(roots / "team-a" / "logdir-link"))

    _register(api, "job-planted", planted)
    scalars = httpx.get(f"{api.url}/v1/jobs/job-planted/scalars", headers=auth(TEAM_A))
    assert scalars.status_code == 200, scalars.text
    assert "secret_loss" not in scalars.text and scalars.json()["tags"] == ["loss"]
    started = httpx.get(f"{api.url}/v1/jobs/job-planted/tensorboard", headers=auth(TEAM_A))
    assert started.status_code == 422 and "symbolic links" in started.json()["detail"], started.text
    _register(api, "job-link", roots / "team-a" / "logdir-link")
    assert httpx.get(f"{api.url}/v1/jobs/job-link/scalars", headers=auth(TEAM_A)).status_code == 422

    # The walk is bounded: more event files than max_event_files is refused, not read.
    many = roots / "team-a" / "many"
    for i in range(5):
        write_scalars(many / f"run{i}", "loss", [float(i)])
    _register(api, "job-many", many)
    bounded = httpx.get(f"{api.url}/v1/jobs/job-many/scalars", headers=auth(TEAM_A))
    assert bounded.status_code == 422 and "event files" in bounded.json()["detail"], bounded.text


def test_tensorboard_only_through_the_api(spawn: Callable[..., Proc], tmp_path: Path, roots: Path) -> None:
    api = _start(spawn, tmp_path, {"command": FAKE_TB, "allowed_roots": {"team-a": [str(roots / "team-a")]}})
    logdir = roots / "team-a" / "job-a"
    _register(api, "job-a", logdir)
    started = httpx.get(f"{api.url}/v1/jobs/job-a/tensorboard", headers=auth(TEAM_A))
    assert started.status_code == 200, started.text
    assert started.json()["url"].startswith(f"{api.url}/v1/jobs/job-a/tensorboard/ui/")
    ui = f"{api.url}/v1/jobs/job-a/tensorboard/ui/"

    def served() -> bool:
        response = httpx.get(ui, headers=auth(TEAM_A), timeout=5)
        return response.status_code == 200 and response.text == str(logdir)

    wait_until(served, timeout=30, message="the TensorBoard behind the proxy")
    assert httpx.get(ui).status_code == 401
    assert httpx.get(ui, headers=auth(TEAM_B)).status_code == 404
    assert httpx.get(ui, headers=auth(SCHEDULER)).status_code == 403

    # Any local user can connect to the TensorBoard's port, but without the prefix it serves
    # nothing, and the prefix is not on its command line (readable by all in /proc).
    (pid,) = [p for p in os.listdir("/proc") if p.isdigit() and _is_fake_tb(p, logdir)]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    port = int(argv[argv.index(b"--port") + 1])
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 404
    assert not any(b"path_prefix" in arg for arg in argv)


def _is_fake_tb(pid: str, logdir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"fake_tensorboard.py" in cmdline and str(logdir).encode() in cmdline
