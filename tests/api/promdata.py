"""Generated Prometheus data for the API tests and the load benchmark: series written as
OpenMetrics and turned into TSDB blocks with ``promtool tsdb create-blocks-from openmetrics``, so
the API runs real PromQL against a real Prometheus."""

from __future__ import annotations

import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import Proc, free_port, require_binary, wait_for_http

Labels = dict[str, str]


@dataclass
class SeriesBook:
    """Samples grouped by metric family and series, written in the order promtool wants."""

    samples: dict[str, dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    def add(self, name: str, labels: Labels, t: float, value: float) -> None:
        self.samples[name][tuple(sorted(labels.items()))].append((t, value))

    def add_range(
        self, name: str, labels: Labels, times: Iterable[float], value: Callable[[float], float | None]
    ) -> None:
        for t in times:
            v = value(t)
            if v is not None:
                self.add(name, labels, t, v)

    def lines(self) -> Iterator[str]:
        for name in sorted(self.samples):
            yield f"# TYPE {name} gauge"
            for key, points in sorted(self.samples[name].items()):
                label_text = ",".join(f'{k}="{v}"' for k, v in key)
                for t, v in sorted(points):
                    yield f"{name}{{{label_text}}} {float(v)!r} {t:.3f}"
        yield "# EOF"

    def write_blocks(self, workdir: Path) -> Path:
        """Write the OpenMetrics file and convert it into TSDB blocks; returns the TSDB directory."""
        source = workdir / "series.om"
        with open(source, "w") as fh:
            for line in self.lines():
                fh.write(line + "\n")
        tsdb = workdir / "tsdb"
        tsdb.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(source), str(tsdb)],
            capture_output=True,
            timeout=600,
        )
        assert result.returncode == 0, f"promtool failed: {result.stderr.decode(errors='replace')[-2000:]}"
        source.unlink()
        return tsdb


def gpu_labels(host: str, gpu: int) -> Labels:
    return {
        "Hostname": host,
        "gpu": str(gpu),
        "UUID": f"GPU-{host}-{gpu:04d}",
        "pci_bus_id": f"00000000:{0x18 + gpu * 0x1B:02X}:00.0",
        "device": f"nvidia{gpu}",
        "modelName": "NVIDIA H100 80GB HBM3",
    }


@dataclass(frozen=True)
class RunningPrometheus:
    url: str
    proc: Proc


@contextmanager
def run_prometheus(
    tsdb: Path,
    workdir: Path,
    *,
    max_samples: int | None = 100_000_000,
    ready_timeout: float = 120,
    global_extra: str = "",
    rule_files: Sequence[Path] = (),
    extra_args: Sequence[str] = (),
) -> Iterator[RunningPrometheus]:
    """Prometheus serving ``tsdb`` (no scrape targets) on a free port, stopped on exit.
    ``max_samples`` None keeps Prometheus' default limit (50 M); ``global_extra`` adds lines to
    the config's ``global`` block (indented by two spaces, e.g. ``query_log_file``)."""
    config = workdir / "prometheus.yml"
    rules = "".join(f"  - {path}\n" for path in rule_files)
    config.write_text(
        f"global:\n  scrape_interval: 15s\n{global_extra}"
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs: []\n"
    )
    port = free_port()
    limits = [f"--query.max-samples={max_samples}"] if max_samples is not None else []
    proc = Proc(
        [
            require_binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=3650d",
            *limits,
            "--log.level=warn",
            *extra_args,
        ],
        workdir / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready", timeout=ready_timeout, proc=proc)
        yield RunningPrometheus(url, proc)
    finally:
        proc.stop()


def instant(url: str, query: str, at: float | None = None) -> list[dict[str, object]]:
    params = {"query": query} if at is None else {"query": query, "time": str(at)}
    body = httpx.get(f"{url}/api/v1/query", params=params, timeout=30).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])
