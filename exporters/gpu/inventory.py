"""The node's GPU inventory: how many GPUs it should have, as the operator configured it.

A GPU that falls off the bus (XID 79) or fails to initialise is not enumerated at all: its series
disappear instead of turning 0, and a node that boots with 7 of 8 GPUs never shows the eighth.
``GPUMissing`` (alerts/rules/gpu.yaml) compares the enumerated count with
``jobsight_node_expected_gpus`` where it is published, else with the node's 7-day maximum. The
count is published next to the GPU collector's series, also while NVML cannot be opened: that is
when it matters most (the GPU collector then publishes no GPU at all).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from jobsight.serving import Collector

EXPECTED_GPUS = "jobsight_node_expected_gpus"
EXPECTED_GPUS_HELP = (
    "jobsight: GPUs this node should have (--collector.gpu.expected-count); GPUMissing fires when "
    "fewer are enumerated."
)
MAX_EXPECTED_GPUS = 1024  # far above any node's GPU count; a bound against a typo (80 for 8)


class WithExpectedGpus:
    """The GPU collector's families, then ``jobsight_node_expected_gpus{<host label>}``."""

    def __init__(self, inner: Collector, expected: int, hostname: str, host_label: str = "Hostname") -> None:
        self.inner = inner
        self.expected = expected
        self.hostname = hostname
        self.host_label = host_label

    def collect(self) -> Iterator[Metric]:
        yield from self.inner.collect()
        family = GaugeMetricFamily(EXPECTED_GPUS, EXPECTED_GPUS_HELP, labels=[self.host_label])
        family.add_metric([self.hostname], float(self.expected))
        yield family
