"""Background collection: one thread per GPU reads it every interval; a scrape only copies the
latest readings.

Why a background loop and not a read on scrape: an NVML call can hang in the driver (a GPU
falling off the bus, a wedged driver) and a Python thread cannot be cancelled, so the only way a
scrape stays bounded is never to call NVML in it. One thread per GPU, rather than one loop over
all GPUs, so that a call hung on one GPU delays only that GPU's readings: once they are older
than ``stale_after_s`` that GPU is published as down (``jobsight_gpu_up 0``) and the others keep
fresh values. A separate thread waits on the backend's XID event stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporters.gpu.attribution import GpuJobs, JobAttributor
from exporters.gpu.model import Clock, DeviceReading, DeviceState, GpuBackend, GpuIdentity
from exporters.gpu.xid import XidLedger
from jobsight.errors import DeviceLost

log = logging.getLogger(__name__)

XID_WAIT_S = 1.0


@dataclass(frozen=True)
class GpuView:
    """One GPU as a scrape sees it."""

    identity: GpuIdentity
    up: bool
    reading: DeviceReading | None  # None when down, stale or not read yet
    age_s: float | None  # seconds since the last completed read; None before the first
    duration_s: float | None
    jobs: GpuJobs = field(default_factory=GpuJobs)
    errors: dict[str, int] = field(default_factory=dict)


class Sampler:
    def __init__(
        self,
        backend: GpuBackend,
        attributor: JobAttributor,
        ledger: XidLedger,
        clock: Clock = time.monotonic,
        interval_s: float = 1.0,
        stale_after_s: float = 10.0,
    ) -> None:
        self.backend = backend
        self.attributor = attributor
        self.ledger = ledger
        self.clock = clock
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._states = {ident.index: DeviceState(ident) for ident in backend.devices()}
        self._jobs: dict[int, GpuJobs] = {}
        self._other_errors: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._first_read = {index: threading.Event() for index in self._states}
        self._xid_error_logged: set[int] = set()

    # -- one unit of work each; the threads loop over these, tests call them directly --------

    def collect_once(self, index: int) -> None:
        """Read GPU ``index`` once and store the result."""
        state = self._states[index]
        start = self.clock()
        reading: DeviceReading | None = None
        reasons: list[str] = []
        try:
            reading = self.backend.read(index)
            reasons.extend(reading.errors)
        except DeviceLost as exc:
            reasons.append("gpu_lost")
            if state.up or state.read_at is None:
                log.warning("GPU %d (%s) is down: %s", index, state.identity.uuid or "?", exc)
        except Exception:  # one GPU's failure must never stop its thread
            reasons.append("read_failed")
            if state.up or state.read_at is None:  # once per outage, not every interval
                log.exception("reading GPU %d failed; it is reported down", index)
        identity = reading.identity if reading is not None and reading.identity else state.identity
        jobs = (self.attributor.attribute(identity, reading.processes, reading.instances)
                if reading else GpuJobs())
        end = self.clock()
        with self._lock:
            if reading is not None and not state.up and state.read_at is not None:
                log.warning("GPU %d (%s) is answering again", index, state.identity.uuid or "?")
            state.identity = identity
            state.reading = reading
            state.up = reading is not None
            state.read_at = end
            state.duration_s = end - start
            for reason in reasons:
                state.errors[reason] = state.errors.get(reason, 0) + 1
            self._jobs[index] = jobs
        self._first_read[index].set()

    def poll_xids_once(self, index: int, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for XID events of GPU ``index`` and record them; returns how
        many came."""
        try:
            events = self.backend.wait_xid_events(index, timeout_s)
        except DeviceLost:
            # The GPU is lost (its reads say so and count it); its event stream comes back with it.
            self._stop.wait(self.interval_s)
            return 0
        except Exception as exc:  # noqa: BLE001 - the event stream failing must not stop collection
            self._count_error(index, "xid_events")
            if index not in self._xid_error_logged:
                self._xid_error_logged.add(index)
                log.warning("GPU %d: XID event stream failed (its XIDs are not counted until it "
                            "recovers): %s", index, exc)
            self._stop.wait(self.interval_s)
            return 0
        for event in events:
            self.ledger.record(event)
            log.warning("XID %d on GPU %d", event.xid, event.index)
        return len(events)

    # -- what a scrape reads ------------------------------------------------------------------

    def views(self) -> list[GpuView]:
        now = self.clock()
        out: list[GpuView] = []
        with self._lock:
            for index in sorted(self._states):
                state = self._states[index]
                age = None if state.read_at is None else max(0.0, now - state.read_at)
                fresh = age is not None and age <= self.stale_after_s
                up = state.up and fresh
                out.append(
                    GpuView(
                        identity=state.identity,
                        up=up,
                        reading=state.reading if up else None,
                        age_s=age,
                        duration_s=state.duration_s,
                        jobs=self._jobs.get(index, GpuJobs()) if up else GpuJobs(),
                        errors=dict(state.errors),
                    )
                )
        return out

    def other_errors(self) -> dict[str, int]:
        with self._lock:
            errors = dict(self._other_errors)
        if self.attributor.map_errors:
            errors["job_map"] = self.attributor.map_errors
        return errors

    def health(self) -> tuple[bool, str]:
        """Healthy when every GPU was read (successfully or found lost) within the staleness
        bound: a GPU that is down is a fact we report, a GPU we cannot read at all is not."""
        views = self.views()
        stale = [v.identity.index for v in views if v.age_s is None or v.age_s > self.stale_after_s]
        up = sum(1 for v in views if v.up)
        message = f"gpu: {up}/{len(views)} GPUs up"
        if stale:
            return False, f"{message}; no fresh reading from GPU {', '.join(map(str, stale))}"
        return True, message

    # -- threads --------------------------------------------------------------------------------

    def start(self, wait_first_s: float | None = None) -> None:
        """Start the per-GPU threads and the XID thread; wait up to ``wait_first_s`` for every
        GPU's first reading so the first scrape already has values."""
        for index in self._states:
            self._spawn(f"gpu-{index}", self._device_loop, index)
            self._spawn(f"gpu-{index}-xid", self._xid_loop, index)
        if wait_first_s:
            deadline = time.monotonic() + wait_first_s
            for event in self._first_read.values():
                if not event.wait(max(0.0, deadline - time.monotonic())):
                    break

    def close(self, join_timeout_s: float = 5.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + join_timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [t.name for t in self._threads if t.is_alive()]
        if hung:
            log.warning("threads still blocked at shutdown (left behind as daemons): %s", ", ".join(hung))
        self.backend.close()

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _device_loop(self, index: int) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            self.collect_once(index)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - start)))

    def _xid_loop(self, index: int) -> None:
        while not self._stop.is_set():
            self.poll_xids_once(index, XID_WAIT_S)

    def _count_error(self, index: int, reason: str) -> None:
        with self._lock:
            errors = self._states[index].errors
            errors[reason] = errors.get(reason, 0) + 1
