"""A GPU node installs ``jobsight[agent]`` and nothing of the API's stack (issue 10, "the house").

The extras are checked in pyproject.toml, and the agent, the log collector and the Slurm hook are
run as real processes in which importing any API-only package fails: what they import at run time
is what a node needs, whatever pip would have brought. (``pip install '.[agent]'`` into a fresh
venv was also checked by hand: README "Installing on nodes".)
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support import REPO_ROOT, Proc, free_port, wait_until

API_ONLY = ("fastapi", "starlette", "uvicorn", "tensorboard", "psycopg", "grafana_client",
            "grafana_foundation_sdk", "apprise", "jinja2", "kubernetes", "httpx")
DISTRIBUTIONS = ("fastapi", "uvicorn", "tensorboard", "psycopg", "grafana-client", "grafana-foundation-sdk",
                 "apprise", "jinja2", "kubernetes", "httpx")

# Runs `jobsight ...` with every API-only top-level package made unimportable.
BLOCKED_MAIN = f"""
import importlib.abc, sys
BLOCKED = {API_ONLY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed on a node (jobsight[agent])")
        return None
sys.meta_path.insert(0, Block())
from launch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _names(requirements: list[str]) -> set[str]:
    out = set()
    for req in requirements:
        name = req.split(";")[0]
        for sep in "<>=![ ":
            name = name.split(sep)[0]
        out.add(name.strip().lower())
    return out


def test_the_agent_extra_brings_nothing_of_the_api() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    node = _names(project["dependencies"]) | _names(project["optional-dependencies"]["agent"])
    assert not node & set(DISTRIBUTIONS), node & set(DISTRIBUTIONS)
    assert {"fastapi", "tensorboard", "psycopg"} <= _names(project["optional-dependencies"]["api"])
    assert "jobsight[agent,api,training]" in project["optional-dependencies"]["all"]


def _run(tmp_path: Path, name: str, *args: str) -> Proc:
    return Proc([sys.executable, "-c", BLOCKED_MAIN, *args], tmp_path / f"{name}.log", cwd=REPO_ROOT)


def _serving(url: str, proc: Proc, want: Callable[[str], bool]) -> str:
    def ready() -> str | None:
        assert proc.alive(), proc.output()
        text = httpx.get(url, timeout=5).text
        return text if want(text) else None
    return wait_until(ready, timeout=60, message=f"{url} from a process without the API's packages")


def test_agent_and_collector_run_without_the_apis_packages(tmp_path: Path) -> None:
    port = free_port()
    agent = _run(tmp_path, "agent", "agent", "--web.listen-address", f"127.0.0.1:{port}",
                 "--otlp.listen-address", f"127.0.0.1:{free_port()}")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("step 1\n")
    config = tmp_path / "collector.yaml"
    collector_port = free_port()
    config.write_text(f"store: {{path: {tmp_path / 'store'}}}\n"
                      f"sources: [{{type: file, paths: ['{logs}/*.log']}}]\n"
                      f"listen: 127.0.0.1:{collector_port}\n")
    collector = _run(tmp_path, "collector", "collector", "logs", "--config", str(config))
    try:
        metrics = _serving(f"http://127.0.0.1:{port}/metrics", agent,
                           lambda t: "jobsight_gpu_backend_up" in t and "node_load1" in t)
        assert "ImportError" not in agent.output()
        assert "node_cpu_seconds_total" in metrics
        _serving(f"http://127.0.0.1:{collector_port}/metrics", collector,
                 lambda t: "jobsight_log_records_stored_total" in t)
        assert "is not installed on a node" not in agent.output() + collector.output()
    finally:
        agent.stop()
        collector.stop()
