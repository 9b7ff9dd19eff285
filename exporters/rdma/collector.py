"""Prometheus collector for RDMA ports: node_exporter's ``node_infiniband_*`` families, plus
``jobsight_rdma_port_info`` and ``jobsight_rdma_read_errors_total``.

Each scrape reads sysfs afresh (only static facts are cached by the reader) and builds new
families, so a device that disappears takes its series with it. A file that gives no value drops
only its own series and bumps the read-error counter, which lives as long as the collector.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from exporters.rdma import names
from exporters.rdma.expected import ExpectedRate, expected_rate
from exporters.rdma.filters import DeviceFilter
from exporters.rdma.sysfs import U64_MAX, DeviceReading, InfinibandReader, ReadProblem

log = logging.getLogger(__name__)

PORT_LABELS = ["device", "port"]


class ReadErrorTally:
    """``jobsight_rdma_read_errors_total`` across scrapes; scrapes may run concurrently."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def add(self, problems: list[ReadProblem]) -> None:
        new: list[ReadProblem] = []
        with self._lock:
            for problem in problems:
                key = (problem.device, problem.port, problem.file)
                count = self._counts.get(key, 0)
                if count == 0:
                    new.append(problem)
                self._counts[key] = count + 1
        for problem in new:
            # Said once per file: a broken file stays broken, and scrapes come every few seconds.
            # "N/A (no PMA)" is how some devices (iWARP) always are, so it is only worth an info line.
            log.log(
                logging.INFO if problem.reason == "unsupported" else logging.WARNING,
                "rdma: %s port %s file %s: %s (%s); series left out, counted in %s",
                problem.device,
                problem.port or "-",
                problem.file,
                problem.reason,
                problem.detail,
                names.READ_ERRORS_METRIC,
            )

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._counts)


class RdmaCollector:
    """``reader`` is the sysfs seam; ``device_filter`` picks devices by name."""

    def __init__(self, reader: InfinibandReader, device_filter: DeviceFilter | None = None,
                 expected_rates: Sequence[ExpectedRate] = ()) -> None:
        self.reader = reader
        self.device_filter = device_filter or DeviceFilter()
        self.expected_rates = tuple(expected_rates)
        self.read_errors = ReadErrorTally()

    def read_devices(self) -> list[DeviceReading]:
        devices = []
        for name in self.reader.device_names():
            if not self.device_filter.allows(name):
                continue
            try:
                devices.append(self.reader.read_device(name))
            except Exception as exc:
                log.exception("rdma: reading device %s failed", name)
                failed = DeviceReading(name)
                failed.problems.append(ReadProblem(name, "", "", "unreadable", repr(exc)))
                devices.append(failed)
        return devices

    def collect(self) -> Iterator[Metric]:
        devices = self.read_devices()
        self.read_errors.add([problem for device in devices for problem in device.problems])

        info = GaugeMetricFamily(
            names.INFO_METRIC, names.INFO_HELP, labels=["device", "board_id", "firmware_version", "hca_type"]
        )
        state = GaugeMetricFamily(names.STATE_METRIC, names.STATE_HELP, labels=PORT_LABELS)
        phys_state = GaugeMetricFamily(names.PHYS_STATE_METRIC, names.PHYS_STATE_HELP, labels=PORT_LABELS)
        rate = GaugeMetricFamily(names.RATE_METRIC, names.RATE_HELP, labels=PORT_LABELS)
        lifespan = GaugeMetricFamily(names.LIFESPAN_METRIC, names.LIFESPAN_HELP, labels=PORT_LABELS)
        expected = GaugeMetricFamily(names.EXPECTED_RATE_METRIC, names.EXPECTED_RATE_HELP, labels=PORT_LABELS)
        port_info = GaugeMetricFamily(
            names.PORT_INFO_METRIC, names.PORT_INFO_HELP, labels=["device", "port", "link_layer", "netdev"]
        )
        counter_families = {
            directory: [
                (spec, CounterMetricFamily(spec.metric, spec.help, labels=PORT_LABELS)) for spec in specs
            ]
            for directory, specs in names.COUNTER_DIRS
        }

        # Samples are appended directly: one labels dict per port, shared by its ~60 samples (the
        # exposition only reads it), instead of add_metric's dict(zip()) per sample.
        tables = [
            (directory, [(spec.file, family, f"{family.name}_total", spec.scale) for spec, family in rows])
            for directory, rows in counter_families.items()
        ]
        for device in devices:
            info.add_metric([device.name, device.board_id, device.firmware_version, device.hca_type], 1.0)
            should = expected_rate(self.expected_rates, device.name)
            for port in device.ports:
                labels = {"device": device.name, "port": port.port}
                if port.state_id is not None:
                    state.samples.append(Sample(names.STATE_METRIC, labels, float(port.state_id)))
                if port.phys_state_id is not None:
                    phys_state.samples.append(
                        Sample(names.PHYS_STATE_METRIC, labels, float(port.phys_state_id))
                    )
                if port.rate_bytes_per_second is not None:
                    rate.samples.append(Sample(names.RATE_METRIC, labels, float(port.rate_bytes_per_second)))
                port_info.add_metric([device.name, port.port, port.link_layer, port.netdev], 1.0)
                if should is not None:
                    expected.samples.append(Sample(names.EXPECTED_RATE_METRIC, labels, float(should)))
                for directory, rows in tables:
                    values = port.counters.get(directory)
                    if not values:
                        continue
                    for file, family, sample_name, scale in rows:
                        value = values.get(file)
                        if value is not None:
                            if scale != 1:
                                # procfs multiplies in uint64, which wraps; so do we, to publish its value.
                                value = (value * scale) & U64_MAX
                            family.samples.append(Sample(sample_name, labels, float(value)))
                    if directory == "hw_counters" and names.LIFESPAN_FILE in values:
                        lifespan_s = float(values[names.LIFESPAN_FILE] // 1000)
                        lifespan.samples.append(Sample(names.LIFESPAN_METRIC, labels, lifespan_s))

        read_errors = CounterMetricFamily(
            names.READ_ERRORS_METRIC, names.READ_ERRORS_HELP, labels=["device", "port", "file"]
        )
        for (device_name, port_name, file), count in sorted(self.read_errors.snapshot().items()):
            read_errors.add_metric([device_name, port_name, file], float(count))

        families: list[Metric] = [info, state, phys_state, rate]
        for directory, _ in names.COUNTER_DIRS:
            families.extend(family for _, family in counter_families[directory])
            if directory == "hw_counters":
                families.append(lifespan)
        families.append(port_info)
        families.append(expected)
        # Empty families are left out, as node_exporter does; the error counter is always there.
        yield from (family for family in families if family.samples)
        yield read_errors
