"""Failure notifications: the message text, and delivery through apprise.

Delivery is a :class:`Notifier` so tests and the demo can use real apprise targets without the
internet (``json://127.0.0.1:PORT/path`` posts to a local receiver). ``file:///path`` targets are
handled here, not by apprise: the message is appended to that file as one JSON line, which is how
the demo shows a notification without any service.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from api.models import Diagnosis, Links
from api.store import Job


class DeliveryError(Exception):
    """At least one target did not accept the notification."""


class Notifier(Protocol):
    def send(self, urls: Sequence[str], title: str, body: str) -> None: ...


class AppriseNotifier:
    def __init__(self, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._file_lock = threading.Lock()

    def send(self, urls: Sequence[str], title: str, body: str) -> None:
        import apprise

        failures: list[str] = []
        remote = [url for url in urls if not url.startswith("file://")]
        for url in urls:
            if url.startswith("file://"):
                try:
                    self._append(Path(url[len("file://"):]), title, body)
                except OSError as exc:
                    failures.append(f"file target: {exc.strerror or exc}")
        if remote:
            client = apprise.Apprise(asset=apprise.AppriseAsset(service_timeout=self._timeout))
            for url in remote:
                if not client.add(url):
                    failures.append(f"{url.split(':', 1)[0]}:// target is not a valid apprise URL")
            if len(client) and not client.notify(title=title, body=body):
                failures.append("apprise reported a failed delivery")
        if failures:
            raise DeliveryError("; ".join(failures))

    def _append(self, path: Path, title: str, body: str) -> None:
        line = json.dumps({"title": title, "body": body}) + "\n"
        with self._file_lock, open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()


def _stamp(value: float | datetime | None) -> str:
    if value is None:
        return "unknown"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def failure_message(job: Job, diagnosis: Diagnosis | None, links: Links) -> tuple[str, str]:
    """Title and body: job id, name, user, time, the ranked causes and the links."""
    first = diagnosis.causes[0].title if diagnosis and diagnosis.causes else "cause unknown"
    title = f"jobsight: job {job.job_id} failed: {first}"
    lines = [
        f"Job {job.job_id} ({job.name or 'unnamed'}) of user {job.user or 'unknown'} failed.",
        f"Tenant: {job.tenant}",
        f"Failed at: {_stamp(job.ended_at or job.failed_at)}",
    ]
    if job.exit_code is not None:
        lines.append(f"Exit code: {job.exit_code}")
    if job.reason:
        lines.append(f"Reason: {job.reason}")
    lines.append("")
    if diagnosis is None:
        lines.append("Diagnosis: not available.")
    else:
        lines.append("Likely causes, most likely first:")
        for cause in diagnosis.causes:
            lines.append(f"  {cause.rank}. {cause.title} at {_stamp(cause.time)}: {cause.explanation}")
        for symptom in diagnosis.symptoms:
            lines.append(f"  - {symptom}")
        if diagnosis.missing_sources:
            lines.append(f"  (partial: could not read {', '.join(diagnosis.missing_sources)})")
    lines.append("")
    if links.page:
        # First: the page shows all of the above with charts, logs and a timeline, no token needed.
        lines.append(f"Job page: {links.page}")
        lines.append("")
    lines.append("Links:")
    if links.job_dashboard:
        lines.append(f"  Dashboard: {links.job_dashboard}")
    lines.append(f"  Logs: {links.logs}")
    lines.append(f"  Events: {links.events}")
    if links.tensorboard:
        lines.append(f"  TensorBoard: {links.tensorboard}")
    if links.alertmanager:
        lines.append(f"  Alerts: {links.alertmanager}")
    return title, "\n".join(lines)


def alert_message(job: Job, alertname: str, annotations: dict[str, str], starts_at: float,
                  links: Links) -> tuple[str, str]:
    """Title and body of a notification about an alert on a job that has not failed (JobHung: the
    job burns its GPUs while no rank steps). The rule's own text names the ranks."""
    summary = annotations.get("summary") or alertname
    title = f"jobsight: job {job.job_id}: {summary}"
    lines = [
        f"Job {job.job_id} ({job.name or 'unnamed'}) of user {job.user or 'unknown'}: {alertname} "
        f"since {_stamp(starts_at)}.",
        f"Tenant: {job.tenant}",
        "",
        annotations.get("description") or summary,
    ]
    if annotations.get("runbook_url"):
        lines.append(f"Runbook: {annotations['runbook_url']}")
    lines.append("")
    if links.page:
        lines.append(f"Job page: {links.page}")
    lines.append(f"Logs: {links.logs}")
    if links.job_dashboard:
        lines.append(f"Dashboard: {links.job_dashboard}")
    return title, "\n".join(lines)


_FIRST_CAUSE = re.compile(r"^  1\. (?P<title>.+?) at (?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC|unknown): ", re.M)


def first_cause(body: str | None) -> str | None:
    """The first cause a :func:`failure_message` body names (the job list shows it)."""
    found = _FIRST_CAUSE.search(body or "")
    return found.group("title") if found else None
