from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Proc


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start processes that are always stopped at the end of the test."""
    started: list[Proc] = []

    def _spawn(args: list[str], name: str = "proc", **kwargs: object) -> Proc:
        proc = Proc(args, tmp_path / f"{name}-{len(started)}.log", **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield _spawn
    for proc in reversed(started):
        proc.stop()


def _nvml_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU here"
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests against real hardware or services run only where their target is given:
    `gpu` where NVML loads, `elasticsearch` with JOBSIGHT_ES_URL, `grafana` with
    JOBSIGHT_GRAFANA_URL, `kubernetes` with KUBECONFIG. Elsewhere they are skipped, saying why."""
    import os

    needs = {
        "gpu": (_nvml_present, "no NVIDIA GPU/NVML on this machine"),
        "elasticsearch": (lambda: bool(os.environ.get("JOBSIGHT_ES_URL")), "set JOBSIGHT_ES_URL"),
        "grafana": (lambda: bool(os.environ.get("JOBSIGHT_GRAFANA_URL")), "set JOBSIGHT_GRAFANA_URL"),
        "kubernetes": (lambda: bool(os.environ.get("KUBECONFIG")), "set KUBECONFIG (a real cluster)"),
    }
    cache: dict[str, bool] = {}
    for item in items:
        for marker, (present, why) in needs.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in cache:
                cache[marker] = present()
            if not cache[marker]:
                item.add_marker(pytest.mark.skip(reason=f"{marker}: {why}"))
