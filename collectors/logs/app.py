"""Wiring ``jobsight collector logs``: config → rules, store, sinks, collector, /metrics, signals."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from collectors.logs.collector import LogCollector
from collectors.logs.config import CollectorConfig, load_config
from collectors.logs.es import ElasticsearchSink, Stopped
from collectors.logs.rules import RuleSet
from collectors.logs.stats import LogMetrics, LogStats
from jobsight.errors import DependencyUnavailable
from jobsight.host import host_key
from jobsight.logstore import SQLiteLogStore
from jobsight.serving import CollectorSet, MetricsServer, parse_listen_address

log = logging.getLogger(__name__)


class LoopProbe:
    """A collector with no series of its own that fails while the read loop is stalled, so
    ``jobsight_scrape_collector_success{collector="logs_loop"}`` is 0 and the existing
    ExporterCollectorFailing alert fires (``jobsight_log_stalled`` says the same as a gauge)."""

    def __init__(self, stats: LogStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stalled = self.stats.loop_stalled_for()
        if stalled is not None:
            raise RuntimeError(f"the log collector's read loop has made no progress for {stalled:.0f}s")
        yield from ()


def build_rules(config: CollectorConfig) -> RuleSet:
    return RuleSet.build(config.rules.files, use_defaults=config.rules.defaults, disable=config.rules.disable)


def setup_elasticsearch(sink: ElasticsearchSink, stop: threading.Event, initial: float,
                        maximum: float) -> bool:
    """Install the template and policy, retrying while Elasticsearch is unreachable. False if
    stopped first."""
    attempt = 0
    while not stop.is_set():
        try:
            sink.setup()
            return True
        except DependencyUnavailable as exc:
            attempt += 1
            delay = min(maximum, initial * 2 ** (attempt - 1))
            log.warning("cannot install the Elasticsearch template yet (%s); retrying in %.1fs", exc, delay)
            stop.wait(delay)
    return False


def run_collector(config_path: Path, listen_override: str | None = None,
                  web_config_file: str | None = None) -> int:
    from jobsight.webconfig import load_web_config

    config = load_config(config_path)
    web = load_web_config(web_config_file) if web_config_file else None
    listen = parse_listen_address(listen_override or config.listen)
    host = host_key(config.host)
    rules = build_rules(config)
    stats = LogStats()
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received signal %d: finishing the current batch and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    store = SQLiteLogStore(config.store.path, synchronous=config.store.synchronous)
    es: ElasticsearchSink | None = None
    try:
        if config.elasticsearch is not None:
            dead_letters = config.store.path / "dead-letter.ndjson"
            es = ElasticsearchSink(config.elasticsearch, stats, dead_letters, stop=stop)
            if not setup_elasticsearch(es, stop, config.retry_initial, config.retry_max):
                return 0
        collector = LogCollector(config, store, host=host, rules=rules, stats=stats, es=es, stop=stop)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CollectorSet({"logs": LogMetrics(stats), "logs_loop": LoopProbe(stats)},
                                       prefix="jobsight"))
        server = MetricsServer(registry, listen, health=collector.health, web=web).start()
        log.info("jobsight log collector on host %s: metrics on http://%s/metrics, store %s%s", host,
                 server.address, config.store.path, f", elasticsearch {es.stream}" if es else "")
        try:
            collector.run()
        except Stopped:
            pass
        finally:
            server.stop()
            collector.close()
    finally:
        if es is not None:
            es.close()
        store.close()
    log.info("stopped")
    return 0
