"""``jobsight exporter node``: node_exporter's core collectors (same names, labels and values) and
per-job accounting of CPU, memory, I/O and processes. One module per collector; every root path
(procfs, sysfs, rootfs, udev) is a constructor argument. See ``docs/metrics/node.md``."""
