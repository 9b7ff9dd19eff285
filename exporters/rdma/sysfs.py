"""Reads ``<sysfs>/class/infiniband`` into plain records, one device at a time.

Formats follow the kernel ABI (``Documentation/ABI/stable/sysfs-class-infiniband``) and the parsing
rules of prometheus/procfs, so values equal node_exporter's on the same tree. Unlike procfs, a bad
file never fails the device or the scrape: the value is left out and a :class:`ReadProblem` says
which file and why. Only a missing or unlistable class directory is a whole-reader matter.

The read path is the hot loop of a scrape (about 60 files per port), so it uses ``os.open``/
``os.read`` on ``str`` paths, lists each counter directory once and reads only the files it
knows, and caches the static files (board_id, fw_ver, hca_type, link_layer, netdev) for
``static_ttl`` seconds.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from exporters.rdma.names import COUNTER_DIRS, LIFESPAN_FILE
from jobsight.errors import BackendUnavailable

U64_MAX = 2**64 - 1
NO_PMA = "N/A (no PMA)"
CLASS_DIR = "class/infiniband"

T = TypeVar("T")
Clock = Callable[[], float]

# Files each counter directory may hold that we publish; anything else there is never read.
_KNOWN: dict[str, frozenset[str]] = {
    directory: frozenset(spec.file for spec in specs)
    | ({LIFESPAN_FILE} if directory == "hw_counters" else set())
    for directory, specs in COUNTER_DIRS
}


class Unsupported(ValueError):
    """The kernel says the value does not exist on this device ("N/A (no PMA)")."""


@dataclass(frozen=True)
class ReadProblem:
    """A file that gave no value. ``file`` is relative to the device directory (port ``""``) or to
    ``ports/<port>/``; ``reason`` is missing, unreadable, unsupported or unparsable."""

    device: str
    port: str
    file: str
    reason: str
    detail: str = ""


@dataclass
class PortReading:
    port: str
    state_id: int | None = None
    phys_state_id: int | None = None
    rate_bytes_per_second: int | None = None
    link_layer: str = ""
    netdev: str = ""
    # directory ("counters", "counters_ext", "hw_counters") -> file name -> raw value (unscaled)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class DeviceReading:
    name: str
    board_id: str = ""
    firmware_version: str = ""
    hca_type: str = ""
    ports: list[PortReading] = field(default_factory=list)
    problems: list[ReadProblem] = field(default_factory=list)


def parse_counter(text: str) -> int:
    """A counter file: an unsigned 64-bit decimal. Raises :class:`Unsupported` for "N/A (no PMA)"
    and ValueError for anything else that is not a u64 (signs, spaces inside, overflow)."""
    value = text.strip()
    if NO_PMA in value:
        raise Unsupported(value)
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"not an unsigned integer: {value[:40]!r}")
    number = int(value)
    if number > U64_MAX:
        raise ValueError(f"does not fit in 64 bits: {value[:40]!r}")
    return number


def parse_state(text: str) -> int:
    """``state``/``phys_state``: ``"<id>: <NAME>"`` -> id (exactly one colon, as procfs demands)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"expected 'ID: NAME', got {text.strip()[:40]!r}")
    number = parts[0].strip()
    if not (number.isascii() and number.isdigit()) or int(number) > 2**32 - 1:
        raise ValueError(f"state id {number[:40]!r} is not an unsigned 32-bit integer")
    return int(number)


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def parse_rate(text: str) -> int:
    """``rate``: ``"100 Gb/sec (4X EDR)"`` -> bytes per second.

    procfs parses the first word as a float32 and multiplies by 125,000,000 in float64, truncating
    to an integer; the same steps here give the same value (``2.5 Gb/sec`` -> 312,500,000).
    """
    head, sep, _ = text.partition(" ")
    head = head.strip()
    if not sep or not head:
        raise ValueError(f"expected '<number> Gb/sec ...', got {text.strip()[:40]!r}")
    whole, dot, fraction = head.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (dot and not (fraction.isascii() and fraction.isdigit())):
        raise ValueError(f"rate {head[:40]!r} is not a number")
    return int(_float32(float(head)) * 125_000_000)


_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC
# procfs reads sysfs attributes with one 128-byte read; every value we parse is far shorter.
_READ_SIZE = 128
_DIR_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY


def _read_raw(path: str) -> str:
    fd = os.open(path, _FILE_FLAGS)
    try:
        return os.read(fd, _READ_SIZE).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _os_reason(exc: OSError) -> str:
    return "missing" if exc.errno == errno.ENOENT else "unreadable"


_MIN_PRUNE = 256


class _StaticCache:
    """Values that do not change while a device is plugged in, kept for ``ttl`` seconds. Only
    successful reads are kept, so a failing file is retried (and counted) on every scrape."""

    def __init__(self, ttl: float, clock: Clock) -> None:
        self.ttl = ttl
        self.clock = clock
        self._values: dict[str, tuple[float, str]] = {}
        self._pruned_size = _MIN_PRUNE
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            hit = self._values.get(key)
        if hit is None or hit[0] < self.clock():
            return None
        return hit[1]

    def put(self, key: str, value: str) -> None:
        if self.ttl <= 0:
            return
        now = self.clock()
        with self._lock:
            self._values[key] = (now + self.ttl, value)
            # Devices come and go (SR-IOV VFs, hot-plug): drop what expired once the map has grown,
            # so it stays about the size of the current tree.
            if len(self._values) > 2 * self._pruned_size:
                self._values = {k: v for k, v in self._values.items() if v[0] >= now}
                self._pruned_size = max(len(self._values), _MIN_PRUNE)


class InfinibandReader:
    """Reads ``<sysfs_root>/class/infiniband``. ``clock`` and ``static_ttl`` control the cache of
    static files (0 turns it off)."""

    def __init__(
        self, sysfs_root: str | Path, static_ttl: float = 60.0, clock: Clock = time.monotonic
    ) -> None:
        self.sysfs_root = str(sysfs_root)
        self.class_dir = os.path.join(self.sysfs_root, CLASS_DIR)
        self._static = _StaticCache(static_ttl, clock)

    def device_names(self) -> list[str]:
        """Device names, sorted. No class directory (a host without RDMA) is an empty list; a class
        directory that cannot be listed is :class:`BackendUnavailable`."""
        try:
            return sorted(os.listdir(self.class_dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendUnavailable(f"cannot list {self.class_dir}: {exc.strerror or exc}") from exc

    def read_device(self, name: str) -> DeviceReading:
        """Everything about one device; problems are collected, never raised."""
        device = DeviceReading(name)
        base = f"{self.class_dir}/{name}"
        device.board_id = self._static_text(device, base, "board_id", "")
        device.firmware_version = self._static_text(device, base, "fw_ver", "")
        device.hca_type = self._static_text(device, base, "hca_type", "")
        ports_dir = f"{base}/ports"
        try:
            entries = os.listdir(ports_dir)
        except OSError as exc:
            device.problems.append(ReadProblem(name, "", "ports", _os_reason(exc), exc.strerror or str(exc)))
            return device
        numbered: list[tuple[int, str]] = []
        for entry in entries:
            if entry.isascii() and entry.isdigit():
                numbered.append((int(entry), entry))
            else:
                device.problems.append(
                    ReadProblem(name, "", f"ports/{entry}", "unparsable", "not a port number")
                )
        for number, entry in sorted(numbered):
            device.ports.append(self._read_port(device, str(number), f"{ports_dir}/{entry}"))
        return device

    # -- helpers -------------------------------------------------------------------------------

    def _static_text(self, device: DeviceReading, base: str, file: str, port: str) -> str:
        """An optional text attribute: absent (old kernels, other drivers) is "" and no problem, as
        node_exporter publishes it; any other failure is "" and a problem."""
        path = f"{base}/{file}"
        cached = self._static.get(path)
        if cached is not None:
            return cached
        try:
            value = _read_raw(path).strip()
        except FileNotFoundError:
            value = ""
        except OSError as exc:
            device.problems.append(
                ReadProblem(device.name, port, file, "unreadable", exc.strerror or str(exc))
            )
            return ""
        self._static.put(path, value)
        return value

    def _value(
        self, device: DeviceReading, port: str, path: str, file: str, parse: Callable[[str], T]
    ) -> T | None:
        try:
            fd = os.open(path, _FILE_FLAGS)
            try:
                data = os.read(fd, _READ_SIZE)
            finally:
                os.close(fd)
        except OSError as exc:
            device.problems.append(
                ReadProblem(device.name, port, file, _os_reason(exc), exc.strerror or str(exc))
            )
            return None
        return self._parse(device, port, file, data, parse)

    @staticmethod
    def _parse(
        device: DeviceReading, port: str, file: str, data: bytes, parse: Callable[[str], T]
    ) -> T | None:
        try:
            return parse(data.decode("utf-8", "replace"))
        except Unsupported:
            device.problems.append(ReadProblem(device.name, port, file, "unsupported", NO_PMA))
        except ValueError as exc:
            device.problems.append(ReadProblem(device.name, port, file, "unparsable", str(exc)))
        return None

    def _read_port(self, device: DeviceReading, port: str, path: str) -> PortReading:
        reading = PortReading(port)
        reading.state_id = self._value(device, port, f"{path}/state", "state", parse_state)
        reading.phys_state_id = self._value(device, port, f"{path}/phys_state", "phys_state", parse_state)
        reading.rate_bytes_per_second = self._value(device, port, f"{path}/rate", "rate", parse_rate)
        reading.link_layer = self._link_layer(device, port, path)
        reading.netdev = self._netdev(path)
        for directory, _ in COUNTER_DIRS:
            values = self._read_counter_dir(device, port, f"{path}/{directory}", directory)
            if values:
                reading.counters[directory] = values
        return reading

    def _link_layer(self, device: DeviceReading, port: str, path: str) -> str:
        full = f"{path}/link_layer"
        cached = self._static.get(full)
        if cached is not None:
            return cached
        value = self._value(device, port, full, "link_layer", str.strip)
        if value is None:
            return ""
        self._static.put(full, value)
        return value

    def _netdev(self, path: str) -> str:
        """The netdev of the lowest-numbered GID that has one. Reading a GID without a netdev fails
        with EINVAL by design (pure InfiniBand), so failures here are not problems."""
        directory = f"{path}/gid_attrs/ndevs"
        cached = self._static.get(directory)
        if cached is not None:
            return cached
        try:
            entries = os.listdir(directory)
        except OSError:
            entries = []
        netdev = ""
        for _, entry in sorted((int(e), e) for e in entries if e.isascii() and e.isdigit()):
            try:
                netdev = _read_raw(f"{directory}/{entry}").strip()
            except OSError:
                continue
            if netdev:
                break
        self._static.put(directory, netdev)
        return netdev

    def _read_counter_dir(
        self, device: DeviceReading, port: str, path: str, directory: str
    ) -> dict[str, int]:
        # The hot loop: open the directory once and read each known file relative to it (openat:
        # no full path walk per file), parse bytes without decoding; anything but plain digits
        # goes the slow way through parse_counter to say what is wrong with it.
        try:
            dir_fd = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            return {}  # optional directories: counters_ext before 4.5 only, hw_counters per driver
        except OSError as exc:
            device.problems.append(
                ReadProblem(device.name, port, directory, "unreadable", exc.strerror or str(exc))
            )
            return {}
        values: dict[str, int] = {}
        try:
            known = _KNOWN[directory]
            for entry in os.listdir(dir_fd):
                if entry not in known:
                    continue
                try:
                    fd = os.open(entry, _FILE_FLAGS, dir_fd=dir_fd)
                    try:
                        data = os.read(fd, _READ_SIZE)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    device.problems.append(
                        ReadProblem(
                            device.name,
                            port,
                            f"{directory}/{entry}",
                            _os_reason(exc),
                            exc.strerror or str(exc),
                        )
                    )
                    continue
                text = data.strip()
                if text.isdigit() and len(text) < 20:  # below 10**19: certainly a u64
                    values[entry] = int(text)
                    continue
                value = self._parse(device, port, f"{directory}/{entry}", data, parse_counter)
                if value is not None:
                    values[entry] = value
        except OSError as exc:
            device.problems.append(
                ReadProblem(device.name, port, directory, "unreadable", exc.strerror or str(exc))
            )
        finally:
            os.close(dir_fd)
        return values
