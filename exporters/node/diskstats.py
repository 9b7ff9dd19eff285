"""diskstats: ``node_disk_*{device}`` from ``<procfs>/diskstats`` plus ``node_disk_info`` with
udev properties from ``<udev data>/b<major>:<minor>``, as node_exporter 1.5 publishes them.

Units: sectors are the kernel's fixed 512-byte units (Documentation/block/stat.rst), times are
milliseconds. ``discarded_sectors_total`` stays in sectors, as node_exporter leaves it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from exporters.node._families import Family
from exporters.node._files import join, read_text
from exporters.node.filters import NameFilter

SECTOR_BYTES = 512.0
# Multiplied, not divided, as node_exporter does (secondsPerTick = 1.0/1000.0), so the floats
# come out bit-identical.
SECONDS_PER_TICK = 1.0 / 1000.0

DEFAULT_DEVICE_EXCLUDE = r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$"

# (name, help, type, scale) in the kernel's field order after major, minor and name.
_FIELDS: tuple[tuple[str, str, str, float], ...] = (
    ("reads_completed_total", "The total number of reads completed successfully.", "counter", 1.0),
    ("reads_merged_total", "The total number of reads merged.", "counter", 1.0),
    ("read_bytes_total", "The total number of bytes read successfully.", "counter", SECTOR_BYTES),
    ("read_time_seconds_total", "The total number of seconds spent by all reads.", "counter",
     SECONDS_PER_TICK),
    ("writes_completed_total", "The total number of writes completed successfully.", "counter", 1.0),
    ("writes_merged_total", "The number of writes merged.", "counter", 1.0),
    ("written_bytes_total", "The total number of bytes written successfully.", "counter", SECTOR_BYTES),
    ("write_time_seconds_total", "This is the total number of seconds spent by all writes.", "counter",
     SECONDS_PER_TICK),
    ("io_now", "The number of I/Os currently in progress.", "gauge", 1.0),
    ("io_time_seconds_total", "Total seconds spent doing I/Os.", "counter", SECONDS_PER_TICK),
    ("io_time_weighted_seconds_total", "The weighted # of seconds spent doing I/Os.", "counter",
     SECONDS_PER_TICK),
    ("discards_completed_total", "The total number of discards completed successfully.", "counter", 1.0),
    ("discards_merged_total", "The total number of discards merged.", "counter", 1.0),
    ("discarded_sectors_total", "The total number of sectors discarded successfully.", "counter", 1.0),
    ("discard_time_seconds_total", "This is the total number of seconds spent by all discards.", "counter",
     SECONDS_PER_TICK),
    ("flush_requests_total", "The total number of flush requests completed successfully", "counter", 1.0),
    ("flush_requests_time_seconds_total", "This is the total number of seconds spent by all flush requests.",
     "counter", SECONDS_PER_TICK),
)

# udev property → (metric, help); published only for devices udev marks ID_ATA.
_ATA: tuple[tuple[str, str, str], ...] = (
    ("ID_ATA_ROTATION_RATE_RPM", "node_disk_ata_rotation_rate_rpm",
     "ATA disk rotation rate in RPMs (0 for SSDs)."),
    ("ID_ATA_WRITE_CACHE", "node_disk_ata_write_cache", "ATA disk has a write cache."),
    ("ID_ATA_WRITE_CACHE_ENABLED", "node_disk_ata_write_cache_enabled",
     "ATA disk has its write cache enabled."),
)

_INFO_LABELS = ["device", "major", "minor", "path", "wwn", "model", "serial", "revision"]


def read_udev_properties(path: str) -> dict[str, str]:
    """``E:KEY=VALUE`` lines of a udev database file; a missing file is no properties."""
    try:
        text = read_text(path)
    except OSError:
        return {}
    props: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("E:"):
            key, sep, value = line[2:].partition("=")
            if sep:
                props[key] = value
    return props


class DiskstatsCollector:
    def __init__(
        self,
        procfs: str = "/proc",
        udev_data: str = "/run/udev/data",
        device_filter: NameFilter | None = None,
    ) -> None:
        self.path = join(procfs, "diskstats")
        self.udev_data = udev_data
        self.filter = device_filter or NameFilter(exclude=DEFAULT_DEVICE_EXCLUDE)

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("node_disk_info", "Info of /sys/block/<block_device>.", labels=_INFO_LABELS)
        families = [Family(f"node_disk_{name}", help_text, kind) for name, help_text, kind, _ in _FIELDS]
        fs_info = GaugeMetricFamily(
            "node_disk_filesystem_info", "Info about disk filesystem.",
            labels=["device", "type", "usage", "uuid", "version"],
        )
        dm_info = GaugeMetricFamily(
            "node_disk_device_mapper_info", "Info about disk device mapper.",
            labels=["device", "name", "uuid", "vg_name", "lv_name", "lv_layer"],
        )
        ata = [GaugeMetricFamily(name, help_text, labels=["device"]) for _, name, help_text in _ATA]
        for line in read_text(self.path).splitlines():
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 14:
                raise ValueError(f"{self.path}: too few fields in {line[:80]!r}")
            major, minor, device = fields[0], fields[1], fields[2]
            values = [int(v) for v in fields[3:]]
            if self.filter.ignored(device):
                continue
            props = read_udev_properties(join(self.udev_data, f"b{int(major)}:{int(minor)}"))
            serial = props.get("SCSI_IDENT_SERIAL") or props.get("ID_SERIAL_SHORT", "")
            info.add_metric(
                [device, str(int(major)), str(int(minor)), props.get("ID_PATH", ""), props.get("ID_WWN", ""),
                 props.get("ID_MODEL", ""), serial, props.get("ID_REVISION", "")],
                1.0,
            )
            labels = {"device": device}
            for family, (_, _, _, scale), value in zip(families, _FIELDS, values, strict=False):
                family.add(labels, value * scale if scale != 1.0 else float(value))
            if props.get("ID_FS_TYPE"):
                fs_info.add_metric(
                    [device, props["ID_FS_TYPE"], props.get("ID_FS_USAGE", ""), props.get("ID_FS_UUID", ""),
                     props.get("ID_FS_VERSION", "")],
                    1.0,
                )
            if props.get("DM_NAME"):
                dm_info.add_metric(
                    [device, props["DM_NAME"], props.get("DM_UUID", ""), props.get("DM_VG_NAME", ""),
                     props.get("DM_LV_NAME", ""), props.get("DM_LV_LAYER", "")],
                    1.0,
                )
            if props.get("ID_ATA"):
                for ata_family, (prop, _, _) in zip(ata, _ATA, strict=True):
                    try:
                        ata_family.add_metric([device], float(props[prop]))
                    except (KeyError, ValueError):
                        continue  # absent or not a number: leave the series out
        yield info
        yield from families
        if fs_info.samples:
            yield fs_info
        if dm_info.samples:
            yield dm_info
        yield from (family for family in ata if family.samples)
