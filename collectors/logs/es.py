"""The Elasticsearch sink: a data stream ``logs-jobsight-<namespace>`` with ECS fields.

At start-up it installs an ILM policy and an index template (priority 200, above the built-in
``logs-*-*`` template at 100). Records go in ``_bulk`` requests with op ``create`` and a
deterministic ``_id`` (the record id: host + file identity + offset), so a replay after a crash
is answered 409 and counted as already delivered. Per item: 2xx delivered, 409 delivered before,
429 and 5xx retried with exponential backoff (only those items), any other 4xx written to the
dead-letter file with the reason (fsynced before the batch counts as accepted). A failed request
(connection refused or dropped, timeout, 429/5xx for the whole request) raises
:class:`DependencyUnavailable`; the collector then retries the batch with backoff and reads no
new input meanwhile. The client's own retries are off: this is the one retry loop.

Caveat (elastic/elasticsearch#44794): ``_id`` de-duplicates only within the current backing index;
a replay that crosses a rollover is stored twice. Replays happen only after a crash, for the
records of the last uncommitted batch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collectors.logs.config import ElasticsearchConfig
from collectors.logs.stats import LogStats
from jobsight.errors import DependencyUnavailable
from jobsight.logstore import LogRecord

log = logging.getLogger(__name__)

SINK = "elasticsearch"
TEMPLATE_NAME = "jobsight-logs"
_SEVERITY_NUMBER = {"info": 1, "warning": 2, "error": 3, "critical": 4}
_KW = {"type": "keyword"}


def data_stream_name(namespace: str) -> str:
    return f"logs-jobsight-{namespace}"


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def to_ecs(record: LogRecord, namespace: str) -> dict[str, Any]:
    """A record as an ECS document. ``event.kind`` carries the jobsight event kind (what the API and
    the dashboards filter on) and ``event.code`` the same value, for ECS-minded consumers."""
    labels: dict[str, str] = {"source": record.source}
    if record.job_id is not None:
        labels["job_id"] = record.job_id
    if record.rank is not None:
        labels["rank"] = str(record.rank)
    if record.stream is not None:
        labels["stream"] = record.stream
    doc: dict[str, Any] = {
        "@timestamp": rfc3339(record.timestamp),
        "message": record.message,
        "host": {"name": record.host},
        "log": {"file": {"path": record.path}, "offset": record.offset},
        "labels": labels,
        "data_stream": {"type": "logs", "dataset": "jobsight", "namespace": namespace},
        "jobsight": {"record_id": record.record_id},
    }
    if record.level is not None:
        doc["log"]["level"] = record.level
    if record.event_kind is not None:
        labels["event_severity"] = record.event_severity or "error"
        doc["event"] = {
            "kind": record.event_kind, "code": record.event_kind, "dataset": "jobsight",
            "module": "jobsight", "severity": _SEVERITY_NUMBER.get(record.event_severity or "error", 3),
            "severity_name": record.event_severity, "fields": dict(record.event_fields),
        }
    if record.labels:
        k8s = dict(record.labels)
        if "namespace" in k8s or "pod" in k8s:
            resource = {"type": "pod", "name": k8s.get("pod"), "id": k8s.get("pod_uid")}
            doc["orchestrator"] = {"type": "kubernetes", "namespace": k8s.get("namespace"),
                                   "resource": resource}
        if "container" in k8s:
            doc["container"] = {"name": k8s["container"]}
    return doc


def index_template(namespace_pattern: str, policy: str) -> dict[str, Any]:
    return {
        "index_patterns": [namespace_pattern],
        "data_stream": {},
        "priority": 200,
        "template": {
            "settings": {"index.lifecycle.name": policy},
            "mappings": {
                "dynamic_templates": [
                    {"labels_as_keyword": {"path_match": "labels.*", "mapping": _KW}},
                ],
                "properties": {
                    "@timestamp": {"type": "date"},
                    "message": {"type": "match_only_text"},
                    "host": {"properties": {"name": _KW}},
                    "log": {"properties": {"level": _KW, "offset": {"type": "long"},
                                           "file": {"properties": {"path": _KW}}}},
                    "labels": {"properties": {"job_id": _KW, "rank": _KW, "stream": _KW, "source": _KW,
                                              "event_severity": _KW}},
                    "event": {"properties": {"kind": _KW, "code": _KW, "dataset": _KW, "module": _KW,
                                             "severity": {"type": "long"}, "severity_name": _KW,
                                             "fields": {"type": "flattened"}}},
                    "orchestrator": {"properties": {"type": _KW, "namespace": _KW, "resource": {
                        "properties": {"type": _KW, "name": _KW, "id": _KW}}}},
                    "container": {"properties": {"name": _KW}},
                    "data_stream": {"properties": {"type": {"type": "constant_keyword"},
                                                   "dataset": {"type": "constant_keyword"},
                                                   "namespace": {"type": "constant_keyword"}}},
                    "jobsight": {"properties": {"record_id": _KW}},
                },
            },
        },
        "_meta": {"managed_by": "jobsight", "description": "jobsight log collector (ECS fields)"},
    }


def ilm_policy(config: ElasticsearchConfig) -> dict[str, Any]:
    return {
        "phases": {
            "hot": {"actions": {"rollover": {
                "max_age": config.rollover_max_age,
                "max_primary_shard_size": config.rollover_max_primary_shard_size,
            }}},
            "delete": {"min_age": config.delete_after, "actions": {"delete": {}}},
        }
    }


def _bound(method: Callable[..., Any], operations: list[dict[str, Any]]) -> Callable[[], Any]:
    return lambda: method(operations=operations)


def build_client(config: ElasticsearchConfig) -> Any:
    from elasticsearch import Elasticsearch

    kwargs: dict[str, Any] = {"request_timeout": config.request_timeout, "max_retries": 0,
                              "retry_on_timeout": False, "verify_certs": config.verify_certs}
    if config.api_key:
        kwargs["api_key"] = config.api_key
    if config.username is not None and config.password is not None:
        kwargs["basic_auth"] = (config.username, config.password)
    if config.ca_certs:
        kwargs["ca_certs"] = config.ca_certs
    return Elasticsearch(config.hosts, **kwargs)


class Stopped(Exception):
    """The collector is stopping: the batch in hand is abandoned (its offsets were not advanced)."""


class ElasticsearchSink:
    name = SINK

    def __init__(
        self,
        config: ElasticsearchConfig,
        stats: LogStats,
        dead_letter_path: Path,
        *,
        client: Any = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.stats = stats
        self.stream = data_stream_name(config.namespace)
        self.dead_letter_path = config.dead_letter_path or dead_letter_path
        self.client = client if client is not None else build_client(config)
        self.stop = stop or threading.Event()
        self._sleep = sleep
        self.clock = clock

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        elif self.stop.wait(seconds):
            raise Stopped()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one request, translating the client's errors at this boundary."""
        from elasticsearch import ApiError, TransportError

        try:
            return fn()
        except ApiError as exc:
            message = f"{what}: HTTP {exc.meta.status}: {exc.message}"
            raise DependencyUnavailable("elasticsearch", message) from exc
        except TransportError as exc:
            raise DependencyUnavailable("elasticsearch", f"{what}: {exc.message}") from exc

    def setup(self) -> None:
        """Install the ILM policy and the index template (idempotent PUTs)."""
        if not self.config.install_templates:
            return
        self._call("put ILM policy", lambda: self.client.ilm.put_lifecycle(
            name=self.config.ilm_policy, policy=ilm_policy(self.config)))
        body = index_template("logs-jobsight-*", self.config.ilm_policy)
        self._call("put index template", lambda: self.client.indices.put_index_template(
            name=TEMPLATE_NAME, index_patterns=body["index_patterns"], data_stream=body["data_stream"],
            priority=body["priority"], template=body["template"], meta=body["_meta"]))

    def deliver(self, records: Sequence[LogRecord]) -> int:
        """Deliver ``records``; returns how many were new. Items rejected for good go to the
        dead-letter file. Raises DependencyUnavailable when a request fails as a whole."""
        pending = [(r.record_id, to_ecs(r, self.config.namespace)) for r in records]
        created = 0
        attempt = 0
        while pending:
            operations: list[dict[str, Any]] = []
            for record_id, doc in pending:
                operations.append({"create": {"_index": self.stream, "_id": record_id}})
                operations.append(doc)
            response = self._call("bulk", _bound(self.client.bulk, operations))
            body = response.body if hasattr(response, "body") else response
            items = body.get("items", []) if isinstance(body, dict) else []
            if len(items) != len(pending):
                raise DependencyUnavailable("elasticsearch",
                                            f"bulk answered {len(items)} items for {len(pending)} documents")
            retry: list[tuple[str, dict[str, Any]]] = []
            dead: list[tuple[int, str, dict[str, Any]]] = []
            for (record_id, doc), item in zip(pending, items, strict=True):
                result = next(iter(item.values())) if isinstance(item, dict) and item else {}
                status = int(result.get("status", 0))
                if 200 <= status < 300:
                    created += 1
                elif status == 409:
                    self.stats.add(self.stats.duplicates, SINK)
                elif status == 429 or status >= 500 or status == 0:
                    retry.append((record_id, doc))
                else:
                    error = result.get("error")
                    reason = json.dumps(error, sort_keys=True) if error is not None else f"HTTP {status}"
                    dead.append((status, reason, doc))
            if dead:
                self._dead_letter(dead)
            pending = retry
            if pending:
                attempt += 1
                self.stats.add(self.stats.sink_retries, SINK, len(pending))
                delay = min(self.config.backoff_max, self.config.backoff_initial * 2 ** (attempt - 1))
                log.warning("elasticsearch: %d items rejected with 429/5xx; retrying in %.1fs",
                            len(pending), delay)
                self._wait(delay)
        return created

    def _dead_letter(self, dead: list[tuple[int, str, dict[str, Any]]]) -> None:
        self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
        now = rfc3339(self.clock())
        lines = [json.dumps({"time": now, "sink": SINK, "index": self.stream, "status": status,
                             "reason": reason, "document": doc}, sort_keys=True) + "\n"
                 for status, reason, doc in dead]
        try:
            with open(self.dead_letter_path, "a", encoding="utf-8") as fh:
                fh.writelines(lines)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            message = f"{self.dead_letter_path}: {exc.strerror}"
            raise DependencyUnavailable("dead-letter file", message) from exc
        self.stats.add(self.stats.dead_letters, SINK, len(dead))
        log.warning("elasticsearch: %d documents rejected for good, written to %s (first: HTTP %d %s)",
                    len(dead), self.dead_letter_path, dead[0][0], dead[0][1][:200])

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing: nothing useful to do with a failure
            log.debug("closing the elasticsearch client failed", exc_info=True)
