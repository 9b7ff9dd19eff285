"""TensorBoard: scalars read back from event files written by tensorboard's own writers; a real
TensorBoard started and reused for a job; the process bound and idle stop of the manager."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary import Writer
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from api.tensorboard import TensorBoardManager, WalkLimits, check_logdir, read_scalars, run_as
from jobsight.errors import ConfigError, DependencyUnavailable, InvalidInput
from tests.api.conftest import SCHEDULER, TEAM_A, TEAM_B, auth
from tests.support import FIXTURES, wait_until

FAKE_TB = [sys.executable, str(FIXTURES / "api" / "fake_tensorboard.py")]


def write_runs(logdir: Path) -> None:
    writer = Writer(str(logdir / "train"))
    for step in range(5):
        writer.add_scalar("loss", 2.0 - 0.25 * step, step, wall_time=1_700_000_000 + step)
        writer.add_scalar("lr", 0.001, step, wall_time=1_700_000_000 + step)
    writer.close()
    # A classic (TF1-style) simple_value scalar, as older frameworks write it.
    classic = EventFileWriter(str(logdir / "eval"))
    for step in (0, 10):
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag="loss", simple_value=1.5 - step / 100)]
        )
        classic.add_event(event_pb2.Event(wall_time=1_700_000_100 + step, step=step, summary=summary))
    classic.close()


def test_read_scalars_from_both_writer_kinds(tmp_path: Path) -> None:
    write_runs(tmp_path)
    tags, runs = read_scalars(tmp_path, "loss")
    assert tags == ["loss", "lr"]
    by_run = {r.run: r for r in runs}
    assert set(by_run) == {"train", "eval"}
    assert [(s, v) for s, _, v in by_run["train"].points] == [
        (0, 2.0),
        (1, 1.75),
        (2, 1.5),
        (3, 1.25),
        (4, 1.0),
    ]
    assert [s for s, _, _ in by_run["eval"].points] == [0, 10]
    assert by_run["eval"].points[1][2] == pytest.approx(1.4)


def test_scalars_route(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    logdir = tmp_path / "tb" / "job-1"
    write_runs(logdir)
    client = make_client(settings={"tensorboard": {"allowed_roots": [str(tmp_path / "tb")]}})
    assert (
        client.put(
            "/v1/jobs/job-1",
            json={"tenant": "team-a", "tensorboard_logdir": str(logdir)},
            headers=auth(SCHEDULER),
        ).status_code
        == 201
    )
    body = client.get("/v1/jobs/job-1/scalars", params={"tag": "lr"}, headers=auth(TEAM_A)).json()
    assert body["tags"] == ["loss", "lr"]
    (series,) = body["series"]
    assert series["run"] == "train" and [p["value"] for p in series["points"]] == pytest.approx([0.001] * 5)
    everything = client.get("/v1/jobs/job-1/scalars", headers=auth(TEAM_A)).json()
    assert {(s["run"], s["tag"]) for s in everything["series"]} == {
        ("train", "loss"),
        ("train", "lr"),
        ("eval", "loss"),
    }
    assert client.get("/v1/jobs/job-1/scalars", headers=auth(TEAM_B)).status_code == 404
    # Paths outside the allowed roots are refused, and so are relative ones.
    for bad in ("/etc", str(tmp_path), "relative/dir", str(tmp_path / "tb" / ".." / "elsewhere")):
        client.put(
            "/v1/jobs/job-2", json={"tenant": "team-a", "tensorboard_logdir": bad}, headers=auth(SCHEDULER)
        )
        response = client.get("/v1/jobs/job-2/scalars", headers=auth(TEAM_A))
        assert response.status_code == 422, bad
    client.put("/v1/jobs/job-3", json={"tenant": "team-a"}, headers=auth(SCHEDULER))
    assert client.get("/v1/jobs/job-3/tensorboard", headers=auth(TEAM_A)).status_code == 404


@pytest.fixture
def manager() -> Iterator[TensorBoardManager]:
    clock = {"now": 0.0}
    m = TensorBoardManager(FAKE_TB, max_instances=2, idle_seconds=60, clock=lambda: clock["now"])
    m.clock_state = clock  # type: ignore[attr-defined]
    yield m
    m.close()


def answer(url: str) -> str:
    return httpx.get(url, timeout=2).text


def test_manager_reuses_bounds_and_stops_idle(manager: TensorBoardManager, tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    url0, _ = manager.ensure(dirs[0])
    assert wait_until(lambda: answer(url0) == str(dirs[0]), timeout=30, message="first instance")
    assert manager.ensure(dirs[0])[0] == url0  # reused, same port
    clock = manager.clock_state
    clock["now"] = 10.0
    url1, _ = manager.ensure(dirs[1])
    clock["now"] = 20.0
    manager.ensure(dirs[0])  # d0 is now the most recently used
    url2, _ = manager.ensure(dirs[2])  # the bound of 2 evicts d1, the least recently used
    assert set(manager.running()) == {dirs[0], dirs[2]}
    assert wait_until(lambda: answer(url2) == str(dirs[2]), timeout=30, message="third instance")
    wait_until(lambda: not _answers(url1), timeout=30, message="the evicted instance to stop")
    clock["now"] = 1000.0
    assert manager.reap() == 0
    assert manager.running() == {}


def _answers(url: str) -> bool:
    try:
        answer(url)
        return True
    except httpx.HTTPError:
        return False


def test_real_tensorboard_for_a_job(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    logdir = tmp_path / "job-tb"
    write_runs(logdir)
    client = make_client(settings={"tensorboard": {"allowed_roots": {"team-a": [str(tmp_path)]}}})
    client.put(
        "/v1/jobs/job-tb",
        json={"tenant": "team-a", "tensorboard_logdir": str(logdir)},
        headers=auth(SCHEDULER),
    )
    first = client.get("/v1/jobs/job-tb/tensorboard", headers=auth(TEAM_A))
    assert first.status_code == 200, first.text
    # Users get the API's proxy, never the TensorBoard's own address.
    assert first.json()["url"] == "http://api.example:8000/v1/jobs/job-tb/tensorboard/ui/"

    def running() -> bool:
        body = client.get("/v1/jobs/job-tb/tensorboard", headers=auth(TEAM_A)).json()
        return bool(body["state"] == "running")

    wait_until(running, timeout=120, interval=0.5, message="TensorBoard to start")
    tags_path = "/v1/jobs/job-tb/tensorboard/ui/data/plugin/scalars/tags"
    tags = wait_until(
        lambda: client.get(tags_path, headers=auth(TEAM_A)).json(),
        timeout=60,
        message="TensorBoard to load the event files",
    )
    assert "loss" in tags["train"] and "loss" in tags["eval"]
    assert client.get(tags_path).status_code == 401
    assert client.get(tags_path, headers=auth(TEAM_B)).status_code == 404
    # The process listens on loopback, but without the secret prefix it serves nothing.
    (port,) = client.app.state.service.tensorboard.running().values()  # type: ignore[attr-defined]
    direct = f"http://127.0.0.1:{port}/"
    assert httpx.get(f"{direct}data/plugin/scalars/tags", timeout=5).status_code == 404
    client.__exit__(None, None, None)  # app shutdown stops the TensorBoard
    wait_until(lambda: not _answers(direct), timeout=30, message="TensorBoard to stop with the app")


def test_scalar_walk_is_bounded_and_stops_on_shutdown(tmp_path: Path) -> None:
    write_runs(tmp_path)
    stop = threading.Event()
    stop.set()
    with pytest.raises(DependencyUnavailable, match="shutting down"):
        read_scalars(tmp_path, stop=stop)
    ticks = iter(range(1000))
    with pytest.raises(DependencyUnavailable, match="took over 5 s"):
        read_scalars(tmp_path, limits=WalkLimits(seconds=5), clock=lambda: float(next(ticks)))
    with pytest.raises(InvalidInput, match="exceed 100 bytes"):
        read_scalars(tmp_path, limits=WalkLimits(bytes=100))
    with pytest.raises(InvalidInput, match="over 1 event files"):
        read_scalars(tmp_path, limits=WalkLimits(files=1))
    # Within the bounds, the same walk reads everything.
    tags, _ = read_scalars(tmp_path, limits=WalkLimits(files=2, bytes=100_000))
    assert tags == ["loss", "lr"]


def test_scalar_walk_refuses_a_logdir_whose_parent_became_a_symlink(tmp_path: Path) -> None:
    """The logdir was checked (resolved, inside the root); then a directory above it is swapped
    for a symlink to somewhere else. The walk notices the descriptor it opened is elsewhere."""
    (tmp_path / "root" / "sub" / "job").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere" / "job"
    write_runs(elsewhere)
    logdir = check_logdir(str(tmp_path / "root" / "sub" / "job"), [tmp_path / "root"])
    (tmp_path / "root" / "sub" / "job").rmdir()
    (tmp_path / "root" / "sub").rmdir()
    (tmp_path / "root" / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidInput, match="changed while it was read"):
        read_scalars(logdir)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # the effective uid
    raise AssertionError(f"no Uid line for {pid}")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start a process as another user")
def test_tensorboard_runs_as_the_configured_user(tmp_path: Path) -> None:
    """An API that runs as root starts TensorBoard (which parses files users wrote) as
    ``tensorboard.user``, here nobody, which still reads its secret flag file."""
    # Debian's own Python: this venv's interpreter lives under /root, which nobody cannot enter.
    python = shutil.which("python3", path="/usr/bin") or pytest.fail("Debian's python3 is missing")
    manager = TensorBoardManager([python, *FAKE_TB[1:]], user=run_as("nobody"))
    try:
        url, _ = manager.ensure(tmp_path)
        assert wait_until(lambda: _answers(url) and answer(url) == str(tmp_path), timeout=30,
                          message="TensorBoard as nobody")
        (instance,) = manager._instances.values()
        assert _uid_of(instance.process.pid) == 65534
        assert os.stat(instance.flagfile).st_uid == 65534 and os.stat(instance.flagfile).st_mode & 0o077 == 0
    finally:
        manager.close()


def test_tensorboard_user_errors_say_what_is_wrong() -> None:
    assert run_as(None) is None
    with pytest.raises(ConfigError, match="no such user 'no-such-user-x'"):
        run_as("no-such-user-x")
    with pytest.raises(ConfigError, match="only root may start TensorBoard as nobody"):
        run_as("nobody", euid=1000)
    itself = run_as(65534, euid=65534)  # a non-root API may name its own user
    assert itself is not None and (itself.name, itself.uid) == ("nobody", 65534)
