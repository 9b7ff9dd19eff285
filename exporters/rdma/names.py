"""Metric names, help texts and source files: node_exporter's infiniband collector (v1.11+), one
table per sysfs directory, so the reader, the collector and docs/metrics/rdma.md agree.

Names, HELP strings and scaling are node_exporter's (``collector/infiniband_linux.go``, parsing in
prometheus/procfs ``sysfs/class_infiniband.go``); ``jobsight_rdma_*`` are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "node_infiniband"


@dataclass(frozen=True)
class CounterSpec:
    """One counter file and the metric it feeds. ``scale`` is 4 for the PMA data counters, which
    the kernel reports in 4-octet words (procfs multiplies unconditionally, whatever the link width)."""

    file: str
    metric: str
    help: str
    scale: int = 1


def _c(file: str, name: str, help: str, scale: int = 1) -> CounterSpec:
    return CounterSpec(file, f"{NAMESPACE}_{name}", help, scale)


# ports/<n>/counters/ (PMA PortCounters; 64-bit where the kernel has PortCountersExtended, >= 4.5).
PORT_COUNTERS: tuple[CounterSpec, ...] = (
    _c(
        "excessive_buffer_overrun_errors",
        "excessive_buffer_overrun_errors_total",
        "Number of times that OverrunErrors consecutive flow control update periods occurred, "
        "each having at least one overrun error.",
    ),
    _c(
        "link_downed",
        "link_downed_total",
        "Number of times the link failed to recover from an error state and went down",
    ),
    _c(
        "link_error_recovery",
        "link_error_recovery_total",
        "Number of times the link successfully recovered from an error state",
    ),
    _c(
        "local_link_integrity_errors",
        "local_link_integrity_errors_total",
        "Number of times that the count of local physical errors exceeded the threshold specified by "
        "LocalPhyErrors.",
    ),
    _c(
        "multicast_rcv_packets",
        "multicast_packets_received_total",
        "Number of multicast packets received (including errors)",
    ),
    _c(
        "multicast_xmit_packets",
        "multicast_packets_transmitted_total",
        "Number of multicast packets transmitted (including errors)",
    ),
    _c(
        "port_rcv_constraint_errors",
        "port_constraint_errors_received_total",
        "Number of packets received on the switch physical port that are discarded",
    ),
    _c(
        "port_xmit_constraint_errors",
        "port_constraint_errors_transmitted_total",
        "Number of packets not transmitted from the switch physical port",
    ),
    _c("port_rcv_data", "port_data_received_bytes_total", "Number of data octets received on all links", 4),
    _c(
        "port_xmit_data",
        "port_data_transmitted_bytes_total",
        "Number of data octets transmitted on all links",
        4,
    ),
    _c(
        "port_rcv_discards",
        "port_discards_received_total",
        "Number of inbound packets discarded by the port because the port is down or congested",
    ),
    _c(
        "port_xmit_discards",
        "port_discards_transmitted_total",
        "Number of outbound packets discarded by the port because the port is down or congested",
    ),
    _c(
        "port_rcv_errors",
        "port_errors_received_total",
        "Number of packets containing an error that were received on this port",
    ),
    _c(
        "port_rcv_packets",
        "port_packets_received_total",
        "Number of packets received on all VLs by this port (including errors)",
    ),
    _c(
        "port_xmit_packets",
        "port_packets_transmitted_total",
        "Number of packets transmitted on all VLs from this port (including errors)",
    ),
    _c(
        "port_xmit_wait",
        "port_transmit_wait_total",
        "Number of ticks during which the port had data to transmit but no data was sent during the entire "
        "tick",
    ),
    _c(
        "unicast_rcv_packets",
        "unicast_packets_received_total",
        "Number of unicast packets received (including errors)",
    ),
    _c(
        "unicast_xmit_packets",
        "unicast_packets_transmitted_total",
        "Number of unicast packets transmitted (including errors)",
    ),
    _c(
        "port_rcv_remote_physical_errors",
        "port_receive_remote_physical_errors_total",
        "Number of packets marked with the EBP (End of Bad Packet) delimiter received on the port.",
    ),
    _c(
        "port_rcv_switch_relay_errors",
        "port_receive_switch_relay_errors_total",
        "Number of packets that could not be forwarded by the switch.",
    ),
    _c(
        "symbol_error",
        "symbol_error_total",
        "Number of minor link errors detected on one or more physical lanes.",
    ),
    _c(
        "VL15_dropped",
        "vl15_dropped_total",
        "Number of incoming VL15 packets dropped due to resource limitations.",
    ),
)

# ports/<n>/counters_ext/ (kernels < 4.5 kept the 64-bit counters apart; node_exporter's "legacy_*").
LEGACY_COUNTERS: tuple[CounterSpec, ...] = (
    _c(
        "port_multicast_rcv_packets",
        "legacy_multicast_packets_received_total",
        "Number of multicast packets received",
    ),
    _c(
        "port_multicast_xmit_packets",
        "legacy_multicast_packets_transmitted_total",
        "Number of multicast packets transmitted",
    ),
    _c(
        "port_rcv_data_64",
        "legacy_data_received_bytes_total",
        "Number of data octets received on all links",
        4,
    ),
    _c(
        "port_rcv_packets_64", "legacy_packets_received_total", "Number of data packets received on all links"
    ),
    _c(
        "port_unicast_rcv_packets",
        "legacy_unicast_packets_received_total",
        "Number of unicast packets received",
    ),
    _c(
        "port_unicast_xmit_packets",
        "legacy_unicast_packets_transmitted_total",
        "Number of unicast packets transmitted",
    ),
    _c(
        "port_xmit_data_64",
        "legacy_data_transmitted_bytes_total",
        "Number of data octets transmitted on all links",
        4,
    ),
    # node_exporter's help text says "received" here; kept verbatim so HELP lines match.
    _c(
        "port_xmit_packets_64",
        "legacy_packets_transmitted_total",
        "Number of data packets received on all links",
    ),
)

_OFED41 = " The counters was added in MLNX_OFED 4.1"
_OFED50 = " The counter was added in MLNX_OFED rev 5.0-1.0.0.0 and kernel v5.6.0"

# ports/<n>/hw_counters/ (driver counters, kernel >= 4.6; the mlx5 names node_exporter knows).
HW_COUNTERS: tuple[CounterSpec, ...] = (
    _c(
        "duplicate_request",
        "duplicate_requests_packets_total",
        "The number of received packets. A duplicate request is a request that had been previously executed.",
    ),
    _c(
        "implied_nak_seq_err",
        "implied_nak_seq_errors_total",
        "The number of time the requested decided an ACK. with a PSN larger than the expected PSN for an "
        "RDMA "
        "read or response.",
    ),
    _c(
        "local_ack_timeout_err",
        "local_ack_timeout_errors_total",
        "The number of times QP's ack timer expired for RC, XRC, DCT QPs at the sender side. The QP retry "
        "limit "
        "was not exceed, therefore it is still recoverable error.",
    ),
    _c(
        "np_cnp_sent",
        "np_cnp_packets_sent_total",
        "The number of CNP packets sent by the Notification Point when it noticed congestion experienced in "
        "the "
        "RoCEv2 IP header (ECN bits)." + _OFED41,
    ),
    _c(
        "np_ecn_marked_roce_packets",
        "np_ecn_marked_roce_packets_received_total",
        "The number of RoCEv2 packets received by the notification point which were marked for experiencing "
        "the "
        "congestion (ECN bits where '11' on the ingress RoCE traffic) ." + _OFED41,
    ),
    _c(
        "out_of_buffer",
        "out_of_buffer_drops_total",
        "The number of drops occurred due to lack of WQE for the associated QPs.",
    ),
    _c(
        "out_of_sequence",
        "out_of_sequence_packets_received_total",
        "The number of out of sequence packets received.",
    ),
    _c(
        "packet_seq_err",
        "packet_sequence_errors_total",
        "The number of received NAK sequence error packets. The QP retry limit was not exceeded.",
    ),
    _c(
        "req_cqe_error",
        "req_cqes_errors_total",
        "The number of times requester detected CQEs completed with errors." + _OFED41,
    ),
    _c(
        "req_cqe_flush_error",
        "req_cqes_flush_errors_total",
        "The number of times requester detected CQEs completed with flushed errors." + _OFED41,
    ),
    _c(
        "req_remote_access_errors",
        "req_remote_access_errors_total",
        "The number of times requester detected remote access errors." + _OFED41,
    ),
    _c(
        "req_remote_invalid_request",
        "req_remote_invalid_request_errors_total",
        "The number of times requester detected remote invalid request errors." + _OFED41,
    ),
    _c(
        "resp_cqe_error",
        "resp_cqes_errors_total",
        "The number of times responder detected CQEs completed with errors." + _OFED41,
    ),
    _c(
        "resp_cqe_flush_error",
        "resp_cqes_flush_errors_total",
        "The number of times responder detected CQEs completed with flushed errors." + _OFED41,
    ),
    _c(
        "resp_local_length_error",
        "resp_local_length_errors_total",
        "The number of times responder detected local length errors." + _OFED41,
    ),
    _c(
        "resp_remote_access_errors",
        "resp_remote_access_errors_total",
        "The number of times responder detected remote access errors." + _OFED41,
    ),
    _c(
        "rnr_nak_retry_err",
        "rnr_nak_retry_packets_received_total",
        "The number of received RNR NAK packets. The QP retry limit was not exceeded.",
    ),
    _c(
        "roce_adp_retrans",
        "roce_adp_retransmits_total",
        "The number of adaptive retransmissions for RoCE traffic." + _OFED50,
    ),
    _c(
        "roce_adp_retrans_to",
        "roce_adp_retransmits_timeout_total",
        "The number of times RoCE traffic reached timeout due to adaptive retransmission." + _OFED50,
    ),
    _c(
        "roce_slow_restart",
        "roce_slow_restart_used_total",
        "The number of times RoCE slow restart was used." + _OFED50,
    ),
    _c(
        "roce_slow_restart_cnps",
        "roce_slow_restart_cnps_total",
        "The number of times RoCE slow restart generated CNP packets." + _OFED50,
    ),
    _c(
        "roce_slow_restart_trans",
        "roce_slow_restart_total",
        "The number of times RoCE slow restart changed state to slow restart." + _OFED50,
    ),
    _c(
        "rp_cnp_handled",
        "rp_cnp_packets_handled_total",
        "The number of CNP packets handled by the Reaction Point HCA to throttle the transmission rate."
        + _OFED41,
    ),
    _c(
        "rp_cnp_ignored",
        "rp_cnp_ignored_packets_received_total",
        "The number of CNP packets received and ignored by the Reaction Point HCA. This counter should not "
        "raise "
        "if RoCE Congestion Control was enabled in the network. If this counter raise, verify that ECN was "
        "enabled "
        "on the adapter.",
    ),
    _c(
        "rx_atomic_requests",
        "rx_atomic_requests_total",
        "The number of received ATOMIC request for the associated QPs.",
    ),
    _c(
        "rx_dct_connect",
        "rx_dct_connect_requests_total",
        "The number of received connection requests for the associated DCTs.",
    ),
    _c(
        "rx_read_requests",
        "rx_read_requests_total",
        "The number of received READ requests for the associated QPs.",
    ),
    _c(
        "rx_write_requests",
        "rx_write_requests_total",
        "The number of received WRITE requests for the associated QPs.",
    ),
    _c(
        "rx_icrc_encapsulated",
        "rx_icrc_encapsulated_errors_total",
        "The number of RoCE packets with ICRC errors. This counter was added in MLNX_OFED 4.4 and kernel "
        "4.19",
    ),
)

# hw_counters/lifespan is a setting in milliseconds, not a counter; node_exporter divides by 1000 in
# integer arithmetic, so the kernel default of 10 ms is published as 0. Kept for compatibility.
LIFESPAN_FILE = "lifespan"
LIFESPAN_METRIC = f"{NAMESPACE}_lifespan_seconds"
LIFESPAN_HELP = (
    "The maximum period in ms which defines the aging of the counter reads. Two consecutive reads "
    "within this period might return the same values."
)

INFO_METRIC = f"{NAMESPACE}_info"
INFO_HELP = "Non-numeric data from /sys/class/infiniband/<device>, value is always 1."
STATE_METRIC = f"{NAMESPACE}_state_id"
STATE_HELP = (
    "State of the InfiniBand port (0: no change, 1: down, 2: init, 3: armed, 4: active, 5: act defer)"
)
PHYS_STATE_METRIC = f"{NAMESPACE}_physical_state_id"
PHYS_STATE_HELP = (
    "Physical state of the InfiniBand port (0: no change, 1: sleep, 2: polling, 3: disable, "
    "4: shift, 5: link up, 6: link error recover, 7: phytest)"
)
RATE_METRIC = f"{NAMESPACE}_rate_bytes_per_second"
RATE_HELP = "Maximum signal transfer rate"

PORT_INFO_METRIC = "jobsight_rdma_port_info"
PORT_INFO_HELP = (
    "RDMA port facts, value is always 1: link_layer (InfiniBand or Ethernet, i.e. RoCE) and the "
    "netdev of the port's first GID that has one (empty when none)."
)
EXPECTED_RATE_METRIC = "jobsight_rdma_port_expected_rate_bytes_per_second"
EXPECTED_RATE_HELP = (
    "jobsight: the rate this port should train at (--collector.infiniband.expected-rate), in bytes per "
    "second as node_infiniband_rate_bytes_per_second; RDMALinkDegraded fires below it."
)
READ_ERRORS_METRIC = "jobsight_rdma_read_errors_total"
READ_ERRORS_HELP = (
    "Reads of a /sys/class/infiniband file that gave no value (missing, unreadable, unparsable "
    "or 'N/A (no PMA)'); that series is left out of the scrape."
)

# Directory name -> its table, in the order the reader visits them.
COUNTER_DIRS: tuple[tuple[str, tuple[CounterSpec, ...]], ...] = (
    ("counters", PORT_COUNTERS),
    ("counters_ext", LEGACY_COUNTERS),
    ("hw_counters", HW_COUNTERS),
)


def all_metric_names() -> list[str]:
    """Every metric name this exporter can publish (docs and tests check against it)."""
    names = [INFO_METRIC, STATE_METRIC, PHYS_STATE_METRIC, RATE_METRIC, LIFESPAN_METRIC]
    for _, specs in COUNTER_DIRS:
        names.extend(spec.metric for spec in specs)
    names.extend([PORT_INFO_METRIC, EXPECTED_RATE_METRIC, READ_ERRORS_METRIC])
    return names
