"""RDMA fabric dashboard (uid ``jobsight-rdma``, variable ``Hostname``): traffic and utilisation per
port, port state, link errors, RoCE congestion and retransmission counters (node_exporter names)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.panels import (
    CLUSTER,
    Board,
    Q,
    base_dashboard,
    new_events,
    query_variable,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "jobsight-rdma"
H = f'{CLUSTER}, Hostname=~"$Hostname"'
NO_ROCE = "No such counters: ECN/CNP exist only on RoCE (Ethernet) ports with mlx5 hw_counters."
PORT = "{{Hostname}} {{device}}/{{port}}"


def _rate(metric: str, legend: str = PORT) -> Q:
    return Q(f"rate({metric}{{{H}}}[$__rate_interval])", legend)


def build() -> Board:
    dashboard = (
        base_dashboard(
            UID, "jobsight / RDMA fabric", "InfiniBand / RoCE ports: traffic, state, errors, congestion."
        )
        .with_variable(
            query_variable(
                "Hostname", f"label_values(node_infiniband_state_id{{{CLUSTER}}}, Hostname)", label="Host"
            )
        )
        .with_row(db.Row("Ports"))
        .with_panel(
            stat_panel(
                "Ports ACTIVE",
                Q(f"count(node_infiniband_state_id{{{H}}} == 4) or vector(0)"),
            )
        )
        .with_panel(
            stat_panel(
                "Ports not ACTIVE",
                Q(f"count(node_infiniband_state_id{{{H}}} != 4) or vector(0)"),
                thresholds=[(None, "green"), (1, "red")],
            )
        )
        .with_panel(
            stat_panel(
                "Link downs in range",
                Q(f"sum({new_events(f'node_infiniband_link_downed_total{{{H}}}', '$__range')}) or vector(0)"),
                thresholds=[(None, "green"), (1, "#EAB839")],
                decimals=0,
            )
        )
        .with_panel(
            stat_panel(
                "Fabric receive",
                Q(f"sum(rate(node_infiniband_port_data_received_bytes_total{{{H}}}[$__rate_interval]))"),
                unit="Bps",
            )
        )
        .with_panel(
            stat_panel(
                "Fabric transmit",
                Q(f"sum(rate(node_infiniband_port_data_transmitted_bytes_total{{{H}}}[$__rate_interval]))"),
                unit="Bps",
            )
        )
        .with_panel(
            table_panel(
                "Port info",
                [Q(f"jobsight_rdma_port_info{{{H}}}")],
                description="Link layer (InfiniBand / Ethernet = RoCE) and the netdev of each port.",
                width=4,
                height=4,
            )
        )
        .with_panel(
            timeseries_panel(
                "Receive",
                [_rate("node_infiniband_port_data_received_bytes_total")],
                unit="Bps",
            )
        )
        .with_panel(
            timeseries_panel(
                "Transmit",
                [_rate("node_infiniband_port_data_transmitted_bytes_total")],
                unit="Bps",
            )
        )
        .with_panel(
            timeseries_panel(
                "Link utilisation (transmit)",
                [
                    Q(
                        f"rate(node_infiniband_port_data_transmitted_bytes_total{{{H}}}[$__rate_interval])"
                        f" / (node_infiniband_rate_bytes_per_second{{{H}}} > 0)",
                        PORT,
                    )
                ],
                unit="percentunit",
                min_value=0,
                max_value=1,
            )
        )
        .with_panel(
            timeseries_panel(
                "Port state and link rate",
                [
                    Q(f"node_infiniband_state_id{{{H}}}", PORT + " state"),
                    Q(f"node_infiniband_physical_state_id{{{H}}}", PORT + " physical"),
                ],
                description="state 4 = ACTIVE (1 DOWN, 2 INIT, 3 ARMED); physical 5 = LinkUp (2 Polling)",
            )
        )
        .with_row(db.Row("Errors and congestion"))
        .with_panel(
            timeseries_panel(
                "Link rate",
                [Q(f"node_infiniband_rate_bytes_per_second{{{H}}}", PORT)],
                unit="Bps",
                description="A drop means the link retrained at a lower width or speed.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Symbol errors and link downs",
                [
                    Q(
                        f"increase(node_infiniband_symbol_error_total{{{H}}}[$__interval])",
                        PORT + " symbol errors",
                    ),
                    Q(
                        f"increase(node_infiniband_link_downed_total{{{H}}}[$__interval])",
                        PORT + " link downed",
                    ),
                ],
                # one window per step: overlapping $__rate_interval windows drew one event as several
                interval="1m",
                bars=True,
                description="Events per step (at least 1 minute).",
            )
        )
        .with_panel(
            timeseries_panel(
                "Retransmissions",
                [
                    _rate("node_infiniband_local_ack_timeout_errors_total", PORT + " ack timeout"),
                    _rate("node_infiniband_packet_sequence_errors_total", PORT + " sequence error"),
                    _rate(
                        "node_infiniband_out_of_sequence_packets_received_total", PORT + " out of sequence"
                    ),
                ],
                unit="pps",
            )
        )
        .with_panel(
            timeseries_panel(
                "RoCE congestion (ECN / CNP)",
                [
                    _rate("node_infiniband_np_ecn_marked_roce_packets_received_total", PORT + " ECN marked"),
                    _rate("node_infiniband_rp_cnp_packets_handled_total", PORT + " CNP handled"),
                    _rate("node_infiniband_rp_cnp_ignored_packets_received_total", PORT + " CNP ignored"),
                ],
                unit="pps",
                no_value=NO_ROCE,
            )
        )
        .with_panel(
            timeseries_panel(
                "Receive buffer drops",
                [_rate("node_infiniband_out_of_buffer_drops_total")],
                unit="pps",
            )
        )
        .with_panel(
            timeseries_panel(
                "Transmit wait",
                [_rate("node_infiniband_port_transmit_wait_total")],
                description="Ticks with data to send but no credits: InfiniBand congestion (relative).",
            )
        )
    )
    return Board(dashboard, {})
