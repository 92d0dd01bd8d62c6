"""Durable background work: domain events and the jobs that react to them.

A stage publishes an event inside its transaction; each subscribed handler gets a `JobRecord` row
in that same transaction, so the work owed survives a crash. Only after the commit are the record
ids handed on: to RQ when `REDIS_URL` is set, else run inline in this process (the embedded
default). Handlers are plain importable functions `handler(session, **payload)` named by dotted
path; `run_job` commits their session, and a handler run twice must give the same result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, has_app_context
from redis import Redis
from rq import Queue, Retry
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session
from werkzeug.utils import import_string

from hospital.clock import utcnow
from hospital.db import get_db
from hospital.models import JobRecord, JobStatus

logger = logging.getLogger(__name__)

QUEUES = ("ai", "billing", "notify", "default")
_PENDING_KEY = "hospital.pending_jobs"
_APP_KEY = "hospital.app"


@dataclass(frozen=True)
class Subscription:
    event: str
    handler: str
    queue: str = "default"


@dataclass
class JobRegistry:
    """Per-app table of which handlers react to which events."""

    subscriptions: dict[str, list[Subscription]] = field(default_factory=dict)

    def subscribe(self, event: str, handler: str, queue: str = "default") -> None:
        if queue not in QUEUES:
            raise ValueError(f"unknown queue {queue!r}; expected one of {QUEUES}")
        subs = self.subscriptions.setdefault(event, [])
        if not any(s.handler == handler for s in subs):
            subs.append(Subscription(event, handler, queue))


def init_app(app: Flask) -> None:
    app.extensions["hospital.jobs"] = JobRegistry()


def subscribe(app: Flask, event: str, handler: str, queue: str = "default") -> None:
    app.extensions["hospital.jobs"].subscribe(event, handler, queue)


def publish(session: Session, event: str, **payload: Any) -> list[JobRecord]:
    """Record that `event` happened; every subscriber gets a job, dispatched after commit."""
    registry: JobRegistry = current_app.extensions["hospital.jobs"]
    return [
        _add_record(session, sub.handler, sub.queue, payload, event=event)
        for sub in registry.subscriptions.get(event, [])
    ]


def enqueue(session: Session, handler: str, *, queue: str = "default", **payload: Any) -> JobRecord:
    """Schedule one handler directly (not through an event), dispatched after commit."""
    return _add_record(session, handler, queue, payload, event=None)


def _add_record(session: Session, handler: str, queue: str, payload: dict[str, Any], event: str | None) -> JobRecord:
    record = JobRecord(handler=handler, queue=queue, payload=payload, event=event)
    session.add(record)
    session.flush()
    session.info.setdefault(_PENDING_KEY, []).append(record.id)
    session.info[_APP_KEY] = current_app._get_current_object()  # type: ignore[attr-defined]
    return record


@sa_event.listens_for(Session, "after_commit")
def _dispatch_after_commit(session: Session) -> None:
    pending: list[int] = session.info.pop(_PENDING_KEY, [])
    app: Flask | None = session.info.pop(_APP_KEY, None)
    if pending and app is not None:
        dispatch(app, pending)


@sa_event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)
    session.info.pop(_APP_KEY, None)


def redis_connection(app: Flask) -> Redis | None:
    url = app.config.get("REDIS_URL")
    if not url:
        return None
    conn = app.extensions.get("hospital.redis")
    if conn is None:
        conn = Redis.from_url(url)
        app.extensions["hospital.redis"] = conn
    return conn


def dispatch(app: Flask, record_ids: list[int]) -> None:
    """Hand committed job records to RQ, or run them now when no Redis is configured."""
    conn = redis_connection(app)
    if conn is None:
        for record_id in record_ids:
            _run_inline(app, record_id)
        return
    with get_db(app).session() as session:
        records = [session.get(JobRecord, rid) for rid in record_ids]
    for record in records:
        if record is None:
            continue
        try:
            Queue(record.queue, connection=conn).enqueue(
                "hospital.jobs.run_job",
                record.id,
                job_id=f"hospital-job-{record.id}",
                retry=Retry(max=3, interval=[5, 30, 120]),
                job_timeout=app.config["JOB_TIMEOUT_SECONDS"],
            )
        except Exception:  # noqa: BLE001 - the record stays queued; `hospital jobs sweep` re-sends it
            logger.exception("could not enqueue job record %s; left queued for the sweeper", record.id)


def _run_inline(app: Flask, record_id: int) -> None:
    with app.app_context():
        try:
            run_job(record_id)
        except Exception:  # noqa: BLE001 - recorded as failed on the JobRecord by run_job
            logger.exception("inline job %s failed; its record is marked failed", record_id)


def run_job(record_id: int) -> None:
    """Entry point of every RQ job: load the record, run its handler in a transaction, mark it.

    Returns quietly if the record is gone or already done (a duplicate delivery).
    """
    app = current_app if has_app_context() else None
    if app is None:
        raise RuntimeError("run_job needs an app context; start workers with `hospital worker`")
    db = get_db()
    with db.transaction() as session:
        record = session.get(JobRecord, record_id, with_for_update=True)
        if record is None or record.status is JobStatus.DONE:
            logger.info("job record %s is gone or done; nothing to do", record_id)
            return
        record.status = JobStatus.RUNNING
        record.attempts += 1
        record.started_at = utcnow()
        handler_path, payload = record.handler, dict(record.payload)
    handler: Callable[..., Any] = import_string(handler_path)
    try:
        with db.transaction() as session:
            handler(session, **payload)
    except Exception as exc:
        with db.transaction() as session:
            record = session.get(JobRecord, record_id)
            if record is not None:
                record.status = JobStatus.FAILED
                record.last_error = f"{type(exc).__name__}: {exc}"[:4000]
                record.finished_at = utcnow()
        raise
    with db.transaction() as session:
        record = session.get(JobRecord, record_id)
        if record is not None:
            record.status = JobStatus.DONE
            record.last_error = None
            record.finished_at = utcnow()
