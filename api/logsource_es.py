"""Elasticsearch adapter of :class:`api.logsource.LogSource` (official ``elasticsearch`` client).

It searches the ``logs-jobsight-*`` data stream, whose documents use ECS fields: ``@timestamp``,
``message``, ``host.name``, ``log.file.path``, ``log.offset``, ``labels.job_id``, ``labels.rank``,
``event.kind`` (our event kind), ``event.severity``/``log.level``. User text only ever goes into a
``match`` query's value (analysed text, never query-string syntax) or ``term`` filters, so it
cannot inject query operators. Pagination uses ``search_after`` on (@timestamp, log.offset), wrapped
in an opaque cursor (sorting on ``_id`` is disabled in Elasticsearch 8).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.logstore import LogPage, LogRecord

DEPENDENCY = "log store"
DEFAULT_INDEX = "logs-jobsight-*"
MAX_LIMIT = 10_000


def build_query(
    *, job_id: str | None, q: str | None, kind: str | None, rank: int | None, since: float | None,
    until: float | None, events_only: bool, hosts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The bool query for one search; pure, so it is tested without a cluster."""
    filters: list[dict[str, Any]] = []
    must: list[dict[str, Any]] = []
    if hosts is not None:
        # An empty terms list matches nothing, as the SQLite store's empty host list does.
        filters.append({"terms": {"host.name": list(hosts)}})
    if job_id is not None:
        filters.append({"term": {"labels.job_id": job_id}})
    if kind is not None:
        filters.append({"term": {"event.kind": kind}})
    elif events_only:
        filters.append({"exists": {"field": "event.kind"}})
    if rank is not None:
        filters.append({"term": {"labels.rank": str(rank)}})
    time_range: dict[str, Any] = {}
    if since is not None:
        time_range["gte"] = int(since * 1000)
    if until is not None:
        time_range["lt"] = int(until * 1000)
    if time_range:
        filters.append({"range": {"@timestamp": {**time_range, "format": "epoch_millis"}}})
    if q:
        must.append({"match": {"message": {"query": q, "operator": "and"}}})
    return {"bool": {"filter": filters, "must": must}}


def encode_cursor(sort_values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(sort_values).encode()).decode().rstrip("=")


def _is_long(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def decode_cursor(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput("cursor is not one this API returned") from exc
    # Both sort values are Elasticsearch longs (epoch milliseconds, a log offset); anything else
    # is a tampered cursor and must not reach the query as search_after.
    if not isinstance(values, list) or len(values) != 2 or not all(_is_long(v) for v in values):
        raise InvalidInput("cursor is not one this API returned")
    return values


def _get(doc: dict[str, Any], dotted: str) -> Any:
    """ECS fields may arrive nested ({"labels": {"job_id": ..}}) or flat ({"labels.job_id": ..})."""
    if dotted in doc:
        return doc[dotted]
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _timestamp(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value) / 1000.0
    text = str(value).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def record_from_hit(hit: dict[str, Any]) -> LogRecord:
    doc = hit.get("_source", {})
    rank = _get(doc, "labels.rank")
    fields = _get(doc, "event.fields") or _get(doc, "labels.event_fields") or {}
    return LogRecord(
        timestamp=_timestamp(_get(doc, "@timestamp")),
        host=str(_get(doc, "host.name") or ""),
        job_id=_get(doc, "labels.job_id"),
        path=str(_get(doc, "log.file.path") or ""),
        offset=int(_get(doc, "log.offset") or 0),
        message=str(_get(doc, "message") or ""),
        stream=_get(doc, "labels.stream"),
        rank=int(rank) if rank not in (None, "") else None,
        level=_get(doc, "log.level"),
        source=str(_get(doc, "labels.source") or "file"),
        event_kind=_get(doc, "event.kind"),
        event_severity=_get(doc, "event.severity_name") or _get(doc, "labels.event_severity"),
        event_fields={str(k): str(v) for k, v in dict(fields).items()} if isinstance(fields, dict) else {},
        record_id=str(hit.get("_id", "")),
    )


class ElasticsearchLogSource:
    def __init__(self, client: Any, index: str = DEFAULT_INDEX) -> None:
        self._client = client
        self.index = index

    @classmethod
    def from_url(cls, url: str, timeout: float, index: str = DEFAULT_INDEX) -> ElasticsearchLogSource:
        from elasticsearch import Elasticsearch

        return cls(Elasticsearch(url, request_timeout=timeout, max_retries=1), index)

    def search(
        self, *, job_id: str | None = None, q: str | None = None, kind: str | None = None,
        rank: int | None = None, since: float | None = None, until: float | None = None,
        events_only: bool = False, limit: int = 100, cursor: str | None = None,
        hosts: Sequence[str] | None = None,
    ) -> LogPage:
        from elasticsearch import ApiError, TransportError

        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        body: dict[str, Any] = {
            "query": build_query(job_id=job_id, q=q, kind=kind, rank=rank, since=since, until=until,
                                 events_only=events_only, hosts=hosts),
            "sort": [{"@timestamp": "asc"}, {"log.offset": {"order": "asc", "unmapped_type": "long"}}],
            "size": limit + 1,
        }
        if cursor is not None:
            body["search_after"] = decode_cursor(cursor)
        try:
            response = self._client.search(index=self.index, **body)
        except (ApiError, TransportError) as exc:
            raise DependencyUnavailable(DEPENDENCY, f"Elasticsearch: {exc}") from exc
        hits = list(response["hits"]["hits"])
        more = len(hits) > limit
        hits = hits[:limit]
        next_cursor = encode_cursor(list(hits[-1]["sort"])) if more and hits else None
        return LogPage(records=[record_from_hit(hit) for hit in hits], next_cursor=next_cursor)

    def ping(self) -> None:
        from elasticsearch import ApiError, TransportError

        try:
            self._client.info()
        except (ApiError, TransportError) as exc:
            raise DependencyUnavailable(DEPENDENCY, f"Elasticsearch: {exc}") from exc

    def close(self) -> None:
        self._client.close()
