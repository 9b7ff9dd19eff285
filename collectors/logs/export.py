"""``jobsight logs export``: every stored record as one JSON object per line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from collectors.logs.es import rfc3339
from jobsight.jobid import validate_job_id
from jobsight.logstore import LogRecord, SQLiteLogStore


def record_json(record: LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "@timestamp": rfc3339(record.timestamp),
        "job_id": record.job_id,
        "host": record.host,
        "path": record.path,
        "offset": record.offset,
        "message": record.message,
        "source": record.source,
        "record_id": record.record_id,
    }
    for key in ("stream", "rank", "level"):
        value = getattr(record, key)
        if value is not None:
            out[key] = value
    if record.event_kind is not None:
        out["event_kind"] = record.event_kind
        out["event_severity"] = record.event_severity
        out["event_fields"] = dict(record.event_fields)
    if record.labels:
        out["labels"] = dict(record.labels)
    return out


def export(store_dir: Path, job_id: str | None = None, out: TextIO = sys.stdout) -> int:
    if job_id is not None:
        validate_job_id(job_id)
    store = SQLiteLogStore(store_dir, read_only=True)
    count = 0
    try:
        for record in store.iter_all(job_id=job_id):
            out.write(json.dumps(record_json(record), ensure_ascii=False) + "\n")
            count += 1
    finally:
        store.close()
    out.flush()
    return count
