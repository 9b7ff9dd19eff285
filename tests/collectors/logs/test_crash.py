"""Crash safety with a real collector process: lines are written while the collector is killed
with SIGKILL at random moments and the files are rotated both ways (rename + create, and
copytruncate), while it runs and while it is down. After a final restart every line is in the
store exactly once, with its job id, as `jobsight logs export` shows."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from jobsight.logstore import SQLiteLogStore
from tests.support import Proc, jobsight_command, wait_until

KILLS = 12
JOBS = ("4711", "4712")


class Writer:
    """Appends numbered lines (and now and then a traceback) to one job's log and rotates it."""

    def __init__(self, directory: Path, job: str, rng: random.Random) -> None:
        self.directory = directory
        self.path = directory / "train.log"
        self.job = job
        self.rng = rng
        self.count = 0
        self.rotations = 0
        self.kinds: Counter[str] = Counter()
        self.expected: list[str] = []

    def burst(self) -> None:
        lines: list[str] = []
        for _ in range(self.rng.randint(1, 40)):
            self.count += 1
            n = self.count
            if self.rng.random() < 0.03:
                lines += [f"[rank{n % 8}]: Traceback (most recent call last):",
                          f'[rank{n % 8}]:   File "train.py", line {n}, in <module>',
                          f"[rank{n % 8}]: ValueError: job {self.job} failure {n}"]
                self.expected += ["Traceback (most recent call last):",
                                  f'  File "train.py", line {n}, in <module>',
                                  f"ValueError: job {self.job} failure {n}"]
            else:
                line = (f"2026-11-29T05:{n // 60 % 60:02d}:{n % 60:02d}Z INFO job {self.job} step {n} "
                        f"loss 0.{n % 97}")
                lines.append(line)
                self.expected.append(line)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))

    def rotate(self) -> None:
        self.rotations += 1
        rotated = self.directory / f"train.log.{self.rotations}"
        if not self.path.exists():
            return
        if self.rng.random() < 0.5:
            self.kinds["rename"] += 1
            os.rename(self.path, rotated)
            self.path.touch()
        else:
            self.kinds["copytruncate"] += 1
            shutil.copyfile(self.path, rotated)
            os.truncate(self.path, 0)


def config_text(root: Path, store: Path) -> str:
    return (
        "sources:\n"
        "  - type: file\n"
        # Rotated names are globbed too, so a file rotated before the collector first saw it is read.
        f'    paths: ["{root}/*/*.log", "{root}/*/*.log.*"]\n'
        f'    job_id_pattern: "{root}/(?P<job_id>[^/]+)/"\n'
        "    rotate_wait: 0.3\n"
        "    multiline: {flush_timeout: 0.2}\n"
        f"store: {{path: {store}}}\n"
        "listen: 127.0.0.1:0\n"
        "poll_interval: 0.02\n"
        "glob_interval: 0.1\n"
        "batch: {max_wait: 0.05, max_records: 200}\n"
    )


def stored_count(store: Path) -> int:
    if not (store / "logs.sqlite3").exists():
        return 0
    reader = SQLiteLogStore(store, read_only=True)
    try:
        return reader.stats().records
    finally:
        reader.close()


def test_sigkill_and_rotation_never_lose_or_duplicate_a_line(tmp_path: Path,
                                                             spawn: Callable[..., Proc]) -> None:
    rng = random.Random(int(os.environ.get("JOBSIGHT_CRASH_SEED", "4711")))
    root = tmp_path / "jobs"
    store = tmp_path / "store"
    writers = []
    for job in JOBS:
        (root / job).mkdir(parents=True)
        writers.append(Writer(root / job, job, rng))
    config = tmp_path / "collector.yaml"
    config.write_text(config_text(root, store))
    command = jobsight_command("collector", "logs", "--config", str(config))

    for round_ in range(KILLS):
        proc = spawn(command, name=f"collector-{round_}")
        before = stored_count(store)
        for _ in range(rng.randint(2, 6)):
            writer = rng.choice(writers)
            writer.burst()
            if rng.random() < 0.3:
                writer.rotate()
            time.sleep(rng.uniform(0.0, 0.05))
        # Let it make some progress (so the kills land at different stages), then kill it at a
        # random moment after that.
        wait_until(lambda p=proc, b=before: stored_count(store) > b or not p.alive(),  # type: ignore[misc]
                   timeout=30, message=f"progress in round {round_}")
        assert proc.alive(), proc.output()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill(signal.SIGKILL)
        proc.popen.wait(timeout=10)
        # While it is down: more lines, sometimes a rotation.
        writer = rng.choice(writers)
        writer.burst()
        if rng.random() < 0.5:
            writer.rotate()
            writer.burst()

    expected_total = sum(len(w.expected) for w in writers)
    final = spawn(command, name="collector-final")

    def all_lines_stored() -> bool:
        assert final.alive(), final.output()
        reader = SQLiteLogStore(store, read_only=True)
        try:
            lines = sum(r.message.count("\n") + 1 for r in reader.iter_all())
        finally:
            reader.close()
        return lines >= expected_total

    wait_until(all_lines_stored, timeout=60, interval=0.2, message=f"{expected_total} lines stored")
    final.kill(signal.SIGTERM)
    assert final.popen.wait(timeout=30) == 0, final.output()

    result = subprocess.run(jobsight_command("logs", "export", "--store", str(store)), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    for writer in writers:
        got = Counter(line for row in rows if row["job_id"] == writer.job
                      for line in row["message"].split("\n"))
        want = Counter(writer.expected)
        missing = want - got
        extra = got - want
        assert not missing, f"job {writer.job}: {sum(missing.values())} lines lost, e.g. {list(missing)[:3]}"
        assert not extra, f"job {writer.job}: {sum(extra.values())} lines stored twice: {list(extra)[:3]}"
    kinds = sum((w.kinds for w in writers), Counter())
    assert kinds["rename"] >= 3 and kinds["copytruncate"] >= 3, kinds
    assert {row["job_id"] for row in rows} == set(JOBS)
    assert len({row["record_id"] for row in rows}) == len(rows)
