"""Job start / failure annotations in Grafana, for the API to call when a Grafana is configured.

Annotations are organisation-wide (not bound to one dashboard) and tagged ``jobsight`` and
``job_id:<id>``; the job dashboard shows those whose tag matches its ``job_id`` variable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashboards.grafana import call
from jobsight.errors import InvalidInput
from jobsight.identity import validate_job_id


def job_tag(job_id: str) -> str:
    return f"job_id:{job_id}"


def annotate_job(
    client: Any,
    job_id: str,
    text: str,
    time_ms: int,
    tags: Sequence[str] = (),
    *,
    time_end_ms: int | None = None,
) -> int:
    """Add an annotation for job ``job_id`` at ``time_ms`` (epoch milliseconds; with ``time_end_ms``
    a region) and return its Grafana id. ``tags`` are added to ``jobsight`` and ``job_id:<id>``."""
    validate_job_id(job_id)
    if time_ms < 0 or (time_end_ms is not None and time_end_ms < time_ms):
        raise InvalidInput(f"invalid annotation time {time_ms}..{time_end_ms}")
    if not text.strip():
        raise InvalidInput("annotation text is empty")
    all_tags = ["jobsight", job_tag(job_id), *(t for t in tags if t not in ("jobsight", job_tag(job_id)))]
    answer = call(
        f"annotate job {job_id}",
        lambda: client.annotations.add_annotation(
            time_from=time_ms, time_to=time_end_ms, tags=all_tags, text=text
        ),
    )
    return int(answer["id"])
