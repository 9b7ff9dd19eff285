"""Waiting for the NVIDIA driver: the GPU collector of a node whose NVML cannot be used yet.

``jobsight agent`` serves node and RDMA metrics on every node, CPU-only ones and GPU nodes whose
driver is not loaded yet (it is loaded after the agent starts, or the node has none). Failing the
whole process there would take node and RDMA metrics with it. So when NVML cannot be opened, the
GPU part of the agent publishes ``jobsight_gpu_backend_up 0``, says why once in the log, and tries
again in the background with backoff; once NVML opens, it starts the real sampler and collector
and delegates to them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from exporters.gpu.model import GpuBackend
from jobsight.errors import BackendUnavailable
from jobsight.serving import Collector

log = logging.getLogger(__name__)

BACKEND_UP = "jobsight_gpu_backend_up"
BACKEND_UP_HELP = "jobsight: 1 when the GPU backend (NVML or simulated) is initialised, 0 while waiting."


@dataclass
class Running:
    """What starting the GPU collector on an opened backend gives."""

    collector: Collector
    health: Callable[[], tuple[bool, str]]
    close: Callable[[], None]


def backend_up(value: float, host_label: str, hostname: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(BACKEND_UP, BACKEND_UP_HELP, labels=[host_label])
    family.add_metric([hostname], value)
    return family


class DriverWait:
    """Opens ``backend`` in a background thread until it works, then ``start(backend)``.

    ``first_error`` is the failure that sent us here (already met by the caller); it is logged
    once. Retries wait ``first_retry_s``, doubling up to ``max_retry_s``."""

    def __init__(
        self,
        backend: GpuBackend,
        start: Callable[[GpuBackend], Running],
        first_error: BackendUnavailable,
        hostname: str,
        host_label: str = "Hostname",
        first_retry_s: float = 5.0,
        max_retry_s: float = 60.0,
    ) -> None:
        self._backend = backend
        self._start = start
        self._hostname = hostname
        self._host_label = host_label
        self._first_retry_s = first_retry_s
        self._max_retry_s = max_retry_s
        self._reason = str(first_error)
        self._running: Running | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        log.warning("GPU metrics unavailable: %s. Serving the other collectors; NVML is tried again in "
                    "the background and GPU metrics appear once it works", self._reason)
        self._thread = threading.Thread(target=self._retry, name="gpu-driver-wait", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._running is not None

    def collect(self) -> Iterator[Metric]:
        running = self._running
        if running is None:
            yield backend_up(0.0, self._host_label, self._hostname)
            return
        yield from running.collector.collect()

    def health(self) -> tuple[bool, str]:
        running = self._running
        if running is None:
            # A node without a usable driver is a fact we report, not a broken exporter.
            return True, f"gpu: waiting for NVML ({self._reason})"
        return running.health()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            running, self._running = self._running, None
        if running is not None:
            running.close()
        else:
            self._backend.close()

    def _retry(self) -> None:
        delay = self._first_retry_s
        while not self._stop.wait(delay):
            try:
                self._backend.open()
            except BackendUnavailable as exc:
                if str(exc) != self._reason:
                    self._reason = str(exc)
                    log.warning("GPU metrics still unavailable: %s", exc)
                delay = min(delay * 2, self._max_retry_s)
                continue
            except Exception:  # the wait must outlive surprises: the next try may work
                log.exception("opening the GPU backend failed unexpectedly; trying again")
                delay = min(delay * 2, self._max_retry_s)
                continue
            running = self._start(self._backend)
            with self._lock:
                if self._stop.is_set():
                    running.close()
                    return
                self._running = running
            log.warning("NVML is available now: serving GPU metrics")
            return
