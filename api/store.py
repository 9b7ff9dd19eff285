"""The job registry, received alerts and notification records, over :mod:`api.db`.

Plain SQL with parameters. Each public method is one transaction: a job update and the
notification it triggers are written together or not at all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from api.db import Cursor, Database

_SCHEMA_COMMON = [
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT, user_name TEXT, scheduler TEXT,
        nodes TEXT NOT NULL, gpus TEXT NOT NULL,
        started_at DOUBLE PRECISION, ended_at DOUBLE PRECISION,
        status TEXT NOT NULL, exit_code INTEGER, reason TEXT, tensorboard_logdir TEXT,
        labels TEXT NOT NULL,
        failure_seq INTEGER NOT NULL DEFAULT 0,
        failed_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_at, job_id)",
    "CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated_at)",
    """CREATE TABLE IF NOT EXISTS alert_jobs (
        alert_id BIGINT NOT NULL, job_id TEXT NOT NULL, PRIMARY KEY (alert_id, job_id))""",
    "CREATE INDEX IF NOT EXISTS alert_jobs_job ON alert_jobs (job_id)",
]
_ID_COLUMN = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "BIGSERIAL PRIMARY KEY"}


def _schema(dialect: str) -> list[str]:
    ident = _ID_COLUMN[dialect]
    return [
        *_SCHEMA_COMMON,
        f"""CREATE TABLE IF NOT EXISTS alerts (
            id {ident},
            fingerprint TEXT NOT NULL, alertname TEXT, status TEXT NOT NULL,
            labels TEXT NOT NULL, annotations TEXT NOT NULL,
            starts_at DOUBLE PRECISION NOT NULL, ends_at DOUBLE PRECISION,
            received_at DOUBLE PRECISION NOT NULL, group_key TEXT,
            UNIQUE (fingerprint, starts_at))""",
        f"""CREATE TABLE IF NOT EXISTS notifications (
            id {ident},
            job_id TEXT NOT NULL, failure_seq INTEGER NOT NULL,
            status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL, next_attempt_at DOUBLE PRECISION NOT NULL,
            sent_at DOUBLE PRECISION, last_error TEXT, targets INTEGER NOT NULL DEFAULT 0, body TEXT,
            UNIQUE (job_id, failure_seq))""",
        "CREATE INDEX IF NOT EXISTS notifications_due ON notifications (status, next_attempt_at)",
    ]


@dataclass(frozen=True)
class Job:
    job_id: str
    tenant: str
    name: str | None = None
    user: str | None = None
    scheduler: str | None = None
    nodes: list[str] = field(default_factory=list)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    ended_at: float | None = None
    status: str = "running"
    exit_code: int | None = None
    reason: str | None = None
    tensorboard_logdir: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    failure_seq: int = 0
    failed_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Alert:
    id: int
    fingerprint: str
    alertname: str | None
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None
    received_at: float
    job_ids: list[str]


@dataclass(frozen=True)
class Notification:
    id: int
    job_id: str
    failure_seq: int
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float
    sent_at: float | None
    last_error: str | None
    targets: int
    body: str | None

    @property
    def alert_id(self) -> int | None:
        """For a notification about a firing alert (a hung job, which has not failed) rather than
        a failure: the alert's id. Such rows use ``failure_seq = -alert_id``, so the one
        (job, failure_seq) key keeps each failure and each alert notified once."""
        return -self.failure_seq if self.failure_seq < 0 else None


@dataclass(frozen=True)
class UpsertResult:
    job: Job
    created: bool
    became_failed: bool


@dataclass(frozen=True)
class IncomingAlert:
    fingerprint: str
    alertname: str | None
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None
    group_key: str | None
    job_ids: list[str]


_JOB_COLUMNS = (
    "job_id, tenant, name, user_name, scheduler, nodes, gpus, started_at, ended_at, status, exit_code, "
    "reason, tensorboard_logdir, labels, failure_seq, failed_at, created_at, updated_at"
)
_NOTIFICATION_COLUMNS = (
    "id, job_id, failure_seq, status, attempts, created_at, next_attempt_at, sent_at, last_error, "
    "targets, body"
)


def _job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        job_id=row[0], tenant=row[1], name=row[2], user=row[3], scheduler=row[4],
        nodes=json.loads(row[5]), gpus=json.loads(row[6]), started_at=row[7], ended_at=row[8],
        status=row[9], exit_code=row[10], reason=row[11], tensorboard_logdir=row[12],
        labels=json.loads(row[13]), failure_seq=row[14], failed_at=row[15], created_at=row[16],
        updated_at=row[17],
    )


def _notification_from_row(row: Sequence[Any]) -> Notification:
    return Notification(*row)


class JobStore:
    """Jobs, alerts and notifications. ``clock`` gives wall-clock seconds (injected for tests)."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time,
                 notify_delay: float = 0.0) -> None:
        self.db = db
        self._clock = clock
        self._notify_delay = notify_delay

    def migrate(self) -> None:
        with self.db.transaction() as cur:
            for statement in _schema(self.db.dialect):
                cur.execute(statement)

    def ping(self) -> None:
        self.db.ping()

    def close(self) -> None:
        self.db.close()

    # -- jobs -------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        with self.db.transaction() as cur:
            return self._get_job(cur, job_id, lock=False)

    def _get_job(self, cur: Cursor, job_id: str, lock: bool) -> Job | None:
        suffix = " FOR UPDATE" if lock and self.db.dialect == "postgresql" else ""
        cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?{suffix}", (job_id,))
        row = cur.fetchone()
        return _job_from_row(row) if row else None

    def upsert_job(self, job: Job, notify_targets: int | None = None) -> UpsertResult:
        """Insert or replace ``job``. When it becomes ``failed`` (from any other status, or on
        creation), the failure counter advances and a pending notification row is written in the
        same transaction; ``notify_targets`` (how many URLs the tenant has) 0 records it as
        skipped."""
        now = self._clock()
        with self.db.transaction() as cur:
            old = self._get_job(cur, job.job_id, lock=True)
            became_failed = job.status == "failed" and (old is None or old.status != "failed")
            failure_seq = (old.failure_seq if old else 0) + (1 if became_failed else 0)
            failed_at = now if became_failed else (old.failed_at if old else None)
            if job.status != "failed" and old is not None and old.status == "failed":
                failed_at = old.failed_at
            created_at = old.created_at if old else now
            values = (
                job.job_id, job.tenant, job.name, job.user, job.scheduler, json.dumps(job.nodes),
                json.dumps(job.gpus), job.started_at, job.ended_at, job.status, job.exit_code, job.reason,
                job.tensorboard_logdir, json.dumps(job.labels, sort_keys=True), failure_seq, failed_at,
                created_at, now,
            )
            cur.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * len(values))}) "
                "ON CONFLICT (job_id) DO UPDATE SET tenant = excluded.tenant, name = excluded.name, "
                "user_name = excluded.user_name, scheduler = excluded.scheduler, nodes = excluded.nodes, "
                "gpus = excluded.gpus, started_at = excluded.started_at, ended_at = excluded.ended_at, "
                "status = excluded.status, exit_code = excluded.exit_code, reason = excluded.reason, "
                "tensorboard_logdir = excluded.tensorboard_logdir, labels = excluded.labels, "
                "failure_seq = excluded.failure_seq, failed_at = excluded.failed_at, "
                "updated_at = excluded.updated_at",
                values,
            )
            if became_failed:
                self._add_notification(cur, job.job_id, failure_seq, now, notify_targets)
            stored = self._get_job(cur, job.job_id, lock=False)
        assert stored is not None
        return UpsertResult(stored, old is None, became_failed)

    def annotate_job(self, job_id: str, *, tenant: str | None, changes: dict[str, Any]) -> Job | None:
        """Change only the descriptive fields (``name``, ``tensorboard_logdir``, ``labels``) of a
        job, in one statement, so a concurrent finish by the scheduler is never overwritten. With
        ``tenant``, only that tenant's job; None when there is no such job."""
        columns = {"name": "name", "tensorboard_logdir": "tensorboard_logdir", "labels": "labels"}
        sets: list[str] = []
        params: list[Any] = []
        for key, value in changes.items():
            sets.append(f"{columns[key]} = ?")
            params.append(json.dumps(value, sort_keys=True) if key == "labels" else value)
        with self.db.transaction() as cur:
            where = "job_id = ?" + (" AND tenant = ?" if tenant is not None else "")
            cur.execute(f"UPDATE jobs SET {', '.join([*sets, 'updated_at = ?'])} WHERE {where}",
                        (*params, self._clock(), job_id, *((tenant,) if tenant is not None else ())))
            job = self._get_job(cur, job_id, lock=False)
        return job if job is not None and (tenant is None or job.tenant == tenant) else None

    def mark_failed(self, job_id: str, reason: str, at: float, notify_targets: int | None = None
                    ) -> UpsertResult | None:
        """A job-failure alert for a registered job that is not yet failed: record the failure."""
        with self.db.transaction() as cur:
            old = self._get_job(cur, job_id, lock=True)
            if old is None or old.status == "failed":
                return None
            now = self._clock()
            seq = old.failure_seq + 1
            cur.execute(
                "UPDATE jobs SET status = 'failed', reason = ?, ended_at = COALESCE(ended_at, ?), "
                "failure_seq = ?, failed_at = ?, updated_at = ? WHERE job_id = ?",
                (old.reason or reason, at, seq, now, now, job_id),
            )
            self._add_notification(cur, job_id, seq, now, notify_targets)
            stored = self._get_job(cur, job_id, lock=False)
        assert stored is not None
        return UpsertResult(stored, False, True)

    def delete_job(self, job_id: str) -> bool:
        with self.db.transaction() as cur:
            if self._get_job(cur, job_id, lock=True) is None:
                return False
            cur.execute("DELETE FROM notifications WHERE job_id = ?", (job_id,))
            cur.execute("DELETE FROM alert_jobs WHERE job_id = ?", (job_id,))
            cur.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            return True

    def list_jobs(
        self, *, tenant: str | None = None, status: str | None = None, user: str | None = None,
        since: float | None = None, until: float | None = None, limit: int = 100,
        after: tuple[float, str] | None = None, scheduler: str | None = None,
    ) -> list[Job]:
        """Newest first (by creation), keyset-paginated by ``after=(created_at, job_id)``.
        ``since``/``until`` keep jobs whose run overlaps that window."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("tenant", tenant), ("status", status), ("user_name", user),
                              ("scheduler", scheduler)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("(ended_at IS NULL OR ended_at >= ?)")
            params.append(since)
        if until is not None:
            where.append("(started_at IS NULL OR started_at <= ?)")
            params.append(until)
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND job_id < ?))")
            params.extend([after[0], after[0], after[1]])
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, job_id DESC LIMIT ?"
        params.append(limit)
        with self.db.transaction() as cur:
            cur.execute(sql, params)
            return [_job_from_row(row) for row in cur.fetchall()]

    def jobs_updated_since(self, since: float, limit: int) -> list[Job]:
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE updated_at >= ? ORDER BY updated_at DESC LIMIT ?",
                (since, limit),
            )
            return [_job_from_row(row) for row in cur.fetchall()]

    def jobs_on_host(self, host: str, at: float, limit: int = 1000) -> list[Job]:
        """Registered jobs whose node or GPU list names ``host`` and that ran at time ``at``."""
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE (started_at IS NULL OR started_at <= ?) "
                "AND (ended_at IS NULL OR ended_at >= ?) AND (nodes LIKE ? OR gpus LIKE ?) LIMIT ?",
                (at, at, f"%{json.dumps(host)}%", f"%{json.dumps(host)}%", limit),
            )
            rows = [_job_from_row(row) for row in cur.fetchall()]
        # LIKE is only a pre-filter (it would also match a host inside another string).
        return [job for job in rows if host in job.nodes or any(g.get("host") == host for g in job.gpus)]

    def known_job_ids(self, job_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(job_ids))
        if not ids:
            return set()
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT job_id FROM jobs WHERE job_id IN ({', '.join('?' * len(ids))})", ids
            )
            return {row[0] for row in cur.fetchall()}

    # -- alerts -----------------------------------------------------------------------------

    def record_alerts(self, alerts: Sequence[IncomingAlert]) -> list[int]:
        """Store a webhook's alerts and their job mappings in one transaction. The same alert
        (fingerprint, start) seen again updates its status/end and adds new job mappings."""
        now = self._clock()
        ids: list[int] = []
        with self.db.transaction() as cur:
            for alert in alerts:
                cur.execute(
                    "INSERT INTO alerts (fingerprint, alertname, status, labels, annotations, starts_at, "
                    "ends_at, received_at, group_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (fingerprint, starts_at) DO UPDATE SET status = excluded.status, "
                    "ends_at = excluded.ends_at, annotations = excluded.annotations, "
                    "received_at = excluded.received_at RETURNING id",
                    (alert.fingerprint, alert.alertname, alert.status,
                     json.dumps(alert.labels, sort_keys=True), json.dumps(alert.annotations, sort_keys=True),
                     alert.starts_at, alert.ends_at, now, alert.group_key),
                )
                row = cur.fetchone()
                assert row is not None
                alert_id = int(row[0])
                ids.append(alert_id)
                for job_id in sorted(set(alert.job_ids)):
                    cur.execute(
                        "INSERT INTO alert_jobs (alert_id, job_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                        (alert_id, job_id),
                    )
        return ids

    def list_alerts(self, *, job_id: str | None = None, status: str | None = None, limit: int = 100,
                    before_id: int | None = None, alert_id: int | None = None) -> list[Alert]:
        where: list[str] = []
        params: list[Any] = []
        if alert_id is not None:
            where.append("id = ?")
            params.append(alert_id)
        if job_id is not None:
            where.append("id IN (SELECT alert_id FROM alert_jobs WHERE job_id = ?)")
            params.append(job_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        sql = ("SELECT id, fingerprint, alertname, status, labels, annotations, starts_at, ends_at, "
               "received_at FROM alerts")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self.db.transaction() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
            mapping: dict[int, list[str]] = {int(row[0]): [] for row in rows}
            if mapping:
                keys = sorted(mapping)
                cur.execute(
                    "SELECT alert_id, job_id FROM alert_jobs "
                    f"WHERE alert_id IN ({', '.join('?' * len(keys))}) ORDER BY job_id", keys,
                )
                for alert_id, mapped_job in cur.fetchall():
                    mapping[int(alert_id)].append(mapped_job)
        return [
            Alert(int(r[0]), r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6], r[7], r[8],
                  mapping[int(r[0])])
            for r in rows
        ]

    # -- notifications ----------------------------------------------------------------------

    def _add_notification(self, cur: Cursor, job_id: str, failure_seq: int, now: float,
                          targets: int | None) -> None:
        status = "skipped" if targets == 0 else "pending"
        cur.execute(
            "INSERT INTO notifications (job_id, failure_seq, status, attempts, created_at, next_attempt_at, "
            "targets) VALUES (?, ?, ?, 0, ?, ?, ?) ON CONFLICT (job_id, failure_seq) DO NOTHING",
            (job_id, failure_seq, status, now, now + self._notify_delay, targets or 0),
        )

    def add_alert_notification(self, job_id: str, alert_id: int, notify_targets: int | None = None) -> None:
        """Queue one notification to the job's tenant about a firing alert (see
        :attr:`Notification.alert_id`); the same alert again adds nothing."""
        with self.db.transaction() as cur:
            self._add_notification(cur, job_id, -alert_id, self._clock(), notify_targets)

    def due_notifications(self, now: float, limit: int = 20) -> list[Notification]:
        """Pending notifications whose time has come, and ones claimed by a sender that has not
        finished them within its lease (an API replica that died mid-send)."""
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE status IN ('pending', 'sending') "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
                (now, limit),
            )
            return [_notification_from_row(row) for row in cur.fetchall()]

    def claim_notification(self, notification_id: int, now: float, lease: float) -> bool:
        """Take a due notification to send it: True for exactly one of the API replicas that ask
        at once (one UPDATE that only a still-due row matches: PostgreSQL re-checks the condition
        after a concurrent writer commits, SQLite has one writer). Until ``now + lease`` no one
        else may take it; :meth:`finish_notification` records the outcome."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE notifications SET status = 'sending', next_attempt_at = ? "
                "WHERE id = ? AND status IN ('pending', 'sending') AND next_attempt_at <= ? RETURNING id",
                (now + lease, notification_id, now),
            )
            return cur.fetchone() is not None

    def next_notification_due(self) -> float | None:
        with self.db.transaction() as cur:
            cur.execute(
                "SELECT MIN(next_attempt_at) FROM notifications WHERE status IN ('pending', 'sending')")
            row = cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def finish_notification(self, notification_id: int, *, ok: bool, body: str | None, targets: int,
                            error: str | None, retry_at: float | None) -> None:
        """Record one delivery attempt: sent, retried later (``retry_at``), or given up."""
        now = self._clock()
        status = "sent" if ok else ("pending" if retry_at is not None else "failed")
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE notifications SET status = ?, attempts = attempts + 1, sent_at = ?, last_error = ?, "
                "next_attempt_at = ?, body = ?, targets = ? WHERE id = ?",
                (status, now if ok else None, error, retry_at if retry_at is not None else now, body, targets,
                 notification_id),
            )

    def list_notifications(self, job_id: str) -> list[Notification]:
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE job_id = ? ORDER BY id", (job_id,)
            )
            return [_notification_from_row(row) for row in cur.fetchall()]
