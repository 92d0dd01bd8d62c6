"""Durable background work: domain events and the jobs that react to them.

A stage publishes a typed event (`hospital.events.DomainEvent`) inside its transaction; each
subscribed handler gets a `JobRecord` row in that same transaction, so the work owed survives a
crash. Only after the commit are the record ids handed on: to RQ when Redis is configured
(`REDIS_URL`, or `REDIS_SENTINELS` for a master that Sentinel fails over), else run inline in this
process (the embedded default). Handlers are plain importable functions named by
dotted path: `handler(session, event)` for an event, `handler(session, **payload)` for work
scheduled directly with `enqueue`. `run_job` is their unit of work (it commits or rolls back their
session; a handler never commits), and a handler run twice must give the same result.

Work that Redis or a worker lost is found again by `sweep_lost_jobs`, which every `hospital worker`
runs in the background: records still queued whose RQ job is gone or dead, and records left
running by a worker that died (older than the job timeout, past which RQ would have killed it).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Flask, current_app, has_app_context
from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry
from redis.sentinel import Sentinel, SentinelManagedConnection
from rq import Queue, Retry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.utils import utcparse
from sqlalchemy import event as sa_event
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.utils import import_string

from hospital.clock import utcnow
from hospital.config import parse_host_ports
from hospital.db import Database, get_db
from hospital.events import DomainEvent, declared_event_types, event_type
from hospital.logging_setup import current_request_id, new_request_id, request_id_scope
from hospital.models import JobRecord, JobStatus

logger = logging.getLogger(__name__)

QUEUES = ("ai", "billing", "notify", "default")
_PENDING_KEY = "hospital.pending_jobs"
_APP_KEY = "hospital.app"
_SWEEP_LOCK_KEY = "hospital:jobs:sweep-lock"
# RQ states in which a job will still run (or is running) without our help.
_LIVE_RQ_STATES = frozenset({"queued", "scheduled", "deferred", "started"})
# RQ runs a failed job again after each of these delays (seconds); inline, a job runs once.
RETRY_INTERVALS = (5, 30, 120)
# How long after a failure RQ may still hold a retry of it (the intervals, and time to spare).
_RETRY_WINDOW = timedelta(hours=1)


class UnsubscribedEvent(RuntimeError):
    """An event type that no handler subscribes to: its work would be silently dropped."""


@dataclass(frozen=True)
class Subscription:
    event: type[DomainEvent]
    handler: str
    queue: str = "default"


@dataclass
class JobRegistry:
    """Per-app table of which handlers react to which event types."""

    subscriptions: dict[type[DomainEvent], list[Subscription]] = field(default_factory=dict)

    def subscribe(self, event: type[DomainEvent], handler: str, queue: str = "default") -> None:
        if not (isinstance(event, type) and issubclass(event, DomainEvent)):
            raise TypeError(f"subscribe to a DomainEvent subclass, not {event!r}")
        if queue not in QUEUES:
            raise ValueError(f"unknown queue {queue!r}; expected one of {QUEUES}")
        subs = self.subscriptions.setdefault(event, [])
        if not any(s.handler == handler for s in subs):
            subs.append(Subscription(event, handler, queue))

    def all(self) -> list[Subscription]:
        return [sub for subs in self.subscriptions.values() for sub in subs]


def init_app(app: Flask) -> None:
    app.extensions["hospital.jobs"] = JobRegistry()


def subscribe(app: Flask, event: type[DomainEvent], handler: str, queue: str = "default") -> None:
    app.extensions["hospital.jobs"].subscribe(event, handler, queue)


def registry(app: Flask) -> JobRegistry:
    reg: JobRegistry = app.extensions["hospital.jobs"]
    return reg


def check_subscriptions(app: Flask, packages: Iterable[str]) -> None:
    """At start-up: every event type declared by these packages (the wired stages) has at least one
    subscriber (see hospital.events)."""
    subscribed = set(registry(app).subscriptions)
    roots = set(packages)
    missing = [
        cls for cls in declared_event_types() if cls.__module__.split(".")[0] in roots and cls not in subscribed
    ]
    if missing:
        names = ", ".join(f"{cls.name} ({cls.__module__}.{cls.__qualname__})" for cls in missing)
        raise UnsubscribedEvent(f"events declared with no subscriber: {names}")


def publish(session: Session, event: DomainEvent) -> list[JobRecord]:
    """Record that `event` happened; every subscriber gets a job, dispatched after commit."""
    subscriptions = registry(current_app).subscriptions.get(type(event), [])
    if not subscriptions:
        raise UnsubscribedEvent(f"{type(event).__name__} ({event.name}) has no subscriber")
    return [
        _add_record(session, sub.handler, sub.queue, event.payload(), event=event.name)
        for sub in subscriptions
    ]


def deliver(session: Session, handler: str, event: DomainEvent, *, queue: str = "default") -> JobRecord:
    """Schedule one handler's job for `event` without publishing it to the others (an operator's
    re-delivery), dispatched after commit."""
    return _add_record(session, handler, queue, event.payload(), event=event.name)


def enqueue(session: Session, handler: str, *, queue: str = "default", **payload: Any) -> JobRecord:
    """Schedule one handler directly (not through an event), dispatched after commit."""
    return _add_record(session, handler, queue, payload, event=None)


def _add_record(session: Session, handler: str, queue: str, payload: dict[str, Any], event: str | None) -> JobRecord:
    record = JobRecord(handler=handler, queue=queue, payload=payload, event=event, request_id=current_request_id() or new_request_id("sys-"))
    session.add(record)
    session.flush()
    session.info.setdefault(_PENDING_KEY, []).append(record.id)
    session.info[_APP_KEY] = current_app._get_current_object()  # type: ignore[attr-defined]
    return record


@sa_event.listens_for(Session, "after_commit")
def _dispatch_after_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        # A savepoint was released (a form action, a batch entry): nothing is durable until the
        # unit of work's own transaction commits, so its records wait for that.
        return
    pending: list[int] = session.info.pop(_PENDING_KEY, [])
    app: Flask | None = session.info.pop(_APP_KEY, None)
    if pending and app is not None:
        dispatch(app, pending)


@sa_event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        # Only a savepoint was undone: what was published before it still stands. Its own records
        # are gone with it, and `run_job` skips an id it cannot find.
        return
    session.info.pop(_PENDING_KEY, None)
    session.info.pop(_APP_KEY, None)


class _FollowingMasterConnection(SentinelManagedConnection):
    """A connection to the master the sentinels name each time it (re)connects.

    redis-py's own asks them only in `connect()`, but a command sent on a dropped connection
    reconnects through `connect_check_health()`, to the address it had: after a failover, the dead
    master, again and again, until the retries run out (an RQ worker then exits). Here every
    reconnection asks, and tries that one address once, so each retry of the command may find the
    new master."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)


# Backoff 0.05 s doubling to 1 s: 20 tries span about 16 s (a Sentinel failover with a 5 s
# down-after-milliseconds takes 6-8 s).
SENTINEL_RETRIES = 20


def redis_configured(app: Flask) -> bool:
    """Whether jobs go to RQ (a Redis URL or sentinels are set), rather than run inline."""
    return bool(app.config.get("REDIS_URL") or app.config.get("REDIS_SENTINELS"))


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """`REDIS_SENTINELS` ("host:port,host:port") as (host, port) pairs."""
    return parse_host_ports(value, "REDIS_SENTINELS")


def open_redis(url: str | None, sentinels: str = "", master: str = "hospital") -> Redis:
    """A Redis client: straight to `url`, or, with `sentinels`, to whichever server the sentinels
    name as `master` now. The Sentinel client asks them again on every new connection, and drops a
    connection that finds its server demoted to a replica, so after a failover the next command
    reaches the new master (the one that failed meanwhile leaves its job record queued for the
    sweeper, see `dispatch`)."""
    addresses = parse_sentinels(sentinels)
    if not addresses:
        if not url:
            raise ValueError("open_redis needs REDIS_URL or REDIS_SENTINELS")
        return Redis.from_url(url)
    # Only the database and credentials of REDIS_URL apply: the sentinels say where the master is.
    options: dict[str, Any] = {}
    if url:
        parts = urlsplit(url)
        options = {"db": int(parts.path.strip("/") or 0), "username": unquote(parts.username) if parts.username else None,
                   "password": unquote(parts.password) if parts.password else None}
    # Short timeouts towards the sentinels (a dead one is skipped for the next); none on commands
    # to the master, whose blocking reads (RQ's dequeue) wait longer than any fixed timeout.
    sentinel = Sentinel(addresses, socket_connect_timeout=2, sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1})
    # A command that meets a dead master is tried again, each time on a new connection to whichever
    # server the sentinels name then, for about 16 s (SENTINEL_RETRIES): longer than a failover takes,
    # so a worker, a request or the DICOM node waits it out instead of failing (redis-py retries a
    # Sentinel client's commands not at all by default, and an RQ worker whose heartbeat fails exits).
    retry = RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), SENTINEL_RETRIES)
    conn: Redis = sentinel.master_for(master, socket_connect_timeout=2, socket_keepalive=True, retry=retry,
                                      connection_class=_FollowingMasterConnection, **options)
    return conn


def redis_connection(app: Flask) -> Redis | None:
    if not redis_configured(app):
        return None
    conn = app.extensions.get("hospital.redis")
    if conn is None:
        conn = open_redis(app.config.get("REDIS_URL"), app.config.get("REDIS_SENTINELS") or "",
                          app.config.get("REDIS_SENTINEL_MASTER") or "hospital")
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
                retry=Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS)),
                job_timeout=job_timeout(app, record.handler),
            )
        except Exception:  # noqa: BLE001 - the record stays queued; `hospital jobs sweep` re-sends it
            logger.exception("could not enqueue job record %s; left queued for the sweeper", record.id)


def runs_of_a_failing_job(app: Flask) -> int:
    """How many times the bus runs a job that keeps raising: once inline, then RQ's retries. A
    handler that must say "given up" (and not only fail) records that on its last run."""
    return 1 if redis_connection(app) is None else 1 + len(RETRY_INTERVALS)


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
        if record.status is JobStatus.RUNNING and not _lease_expired(record, job_timeout(app, record.handler)):
            # A second delivery (RQ retry of an abandoned job, a sweep) while another worker holds
            # it: running it concurrently would race the handler against itself. If that worker
            # died, the sweeper hands the record on once its lease (the job timeout) has run out.
            logger.info("job record %s is running elsewhere since %s; this delivery stops", record_id, record.started_at)
            return
        record.status = JobStatus.RUNNING
        record.attempts += 1
        record.started_at = utcnow()
        handler_path, payload, event_name = record.handler, dict(record.payload), record.event
        request_id = record.request_id or new_request_id("sys-")
    with request_id_scope(request_id):
        _run_handler(db, record_id, handler_path, payload, event_name)


def _run_handler(db: Database, record_id: int, handler_path: str, payload: dict[str, Any], event_name: str | None) -> None:
    """Run a claimed record's handler in its own transaction and mark the record done or failed
    (the jobs it publishes carry the same request id)."""
    handler: Callable[..., Any] = import_string(handler_path)
    try:
        with db.transaction() as session:
            if event_name is not None:
                handler(session, event_type(event_name).from_payload(payload))
            else:
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


def job_timeout(app: Flask, handler: str) -> int:
    """RQ's timeout for a handler: the default, or the longer one configured for it."""
    return int(app.config["JOB_TIMEOUTS"].get(handler, app.config["JOB_TIMEOUT_SECONDS"]))


def _lease_expired(record: JobRecord, timeout_seconds: float) -> bool:
    return record.started_at is None or record.started_at < utcnow() - timedelta(seconds=timeout_seconds)


@dataclass(frozen=True)
class _RqJob:
    """What RQ holds of a record's job: its status (None: no such job), when a worker started it,
    and when a retry is scheduled for (None: none is)."""

    status: str | None
    started_at: datetime | None
    scheduled_for: datetime | None
    enqueued_at: datetime | None
    taken: bool  # in the queue's intermediate list: a worker took it off the queue, has not started it


def _rq_states(conn: Redis, queues: dict[int, str]) -> dict[int, _RqJob]:
    """RQ's view of each record's job (`queues`: record id -> its queue), in one round trip."""
    record_ids = list(queues)
    with conn.pipeline(transaction=False) as pipe:
        for record_id in record_ids:
            job_id = f"hospital-job-{record_id}"
            pipe.hmget(Job.key_for(job_id), ["status", "started_at", "enqueued_at"])
            pipe.zscore(ScheduledJobRegistry.key_template.format(queues[record_id]), job_id)
            # Short: a job stays there only between a worker's dequeue and its start.
            pipe.lpos(IntermediateQueue.get_intermediate_queue_key(Queue.redis_queue_namespace_prefix + queues[record_id]),
                      job_id)
        raw = pipe.execute()

    def text(value: Any) -> str | None:
        return value.decode() if isinstance(value, bytes) else value

    states: dict[int, _RqJob] = {}
    for index, rid in enumerate(record_ids):
        (status, started, enqueued), score, position = raw[3 * index:3 * index + 3]
        started, enqueued = text(started), text(enqueued)
        states[rid] = _RqJob(text(status), utcparse(started) if started else None,
                             datetime.fromtimestamp(float(score), UTC) if score is not None else None,
                             utcparse(enqueued) if enqueued else None, position is not None)
    return states


def sweep_lost_jobs(app: Flask, *, older_than_seconds: float, include_failed: bool = False) -> list[int]:
    """Hand on again the job records whose work was lost; returns their ids.

    Lost means: QUEUED for longer than `older_than_seconds` while RQ holds no live job for it
    (Redis restarted empty, or RQ gave up while the database was unreachable) or holds one a worker
    took off its queue more than `older_than_seconds` ago, or started before the job timeout plus
    `older_than_seconds` (it died before marking the record running), or a retry scheduled for more than `older_than_seconds` ago (no scheduler runs for
    its queue), or RUNNING since before the job timeout plus `older_than_seconds` (its worker died:
    RQ kills any job that outlives its timeout, so no live execution can be that old) unless RQ
    still holds it waiting in its queue or as a retry that is not overdue, or FAILED
    lately with RQ's retry of it overdue likewise. `include_failed` re-sends every FAILED record
    (an operator's choice after fixing the cause). Safe to run from several
    processes at once: a stale RUNNING record is claimed by a conditional UPDATE, and `run_job`
    runs a record at most once at a time.
    """
    now = utcnow()
    queued_cutoff = now - timedelta(seconds=older_than_seconds)

    def running_cutoff(handler: str) -> datetime:
        return queued_cutoff - timedelta(seconds=job_timeout(app, handler))

    conn = redis_connection(app)
    db = get_db(app)
    with db.session() as session:
        queued_rows = session.execute(
            select(JobRecord.id, JobRecord.handler, JobRecord.queue).where(JobRecord.status == JobStatus.QUEUED,
                                                                          JobRecord.created_at < queued_cutoff)
        ).all()
        handlers = {rid: handler for rid, handler, _ in queued_rows}
        queues = {rid: queue for rid, _, queue in queued_rows}
        queued = list(handlers)
        running = session.execute(
            select(JobRecord.id, JobRecord.handler, JobRecord.queue, JobRecord.started_at)
            .where(JobRecord.status == JobStatus.RUNNING)
        ).all()
        # RUNNING always has a start time (run_job sets both together).
        stale = [(rid, handler) for rid, handler, _, started in running
                 if started is not None and started < running_cutoff(handler)]
        queues.update({rid: queue for rid, _, queue, _ in running})
        failed = list(session.scalars(
            select(JobRecord.id).where(JobRecord.status == JobStatus.FAILED, JobRecord.created_at < queued_cutoff)
        )) if include_failed else []
        # Failed lately, so RQ may still have a retry scheduled (its intervals are minutes long).
        retrying = dict(session.execute(
            select(JobRecord.id, JobRecord.queue).where(JobRecord.status == JobStatus.FAILED,
                                                        JobRecord.finished_at > now - _RETRY_WINDOW)
        ).all()) if not include_failed else {}
    if conn is not None:
        states = _rq_states(conn, {**queues, **retrying})

        def retry_overdue(rid: int) -> bool:
            # RQ meant to run it again, but no scheduler is moving it to its queue: the worker whose
            # scheduler held the queue's lock died, and another takes the lock over only at its next
            # maintenance, up to ten minutes later.
            job = states[rid]
            return job.status == "scheduled" and (job.scheduled_for is None or job.scheduled_for < queued_cutoff)

        def lost_while_queued(rid: int) -> bool:
            job = states[rid]
            if job.status == "started":
                # Taken by a worker that died before its first transaction (the record still says
                # queued): RQ would keep calling it started until its own clean-up, minutes away.
                return job.started_at is None or job.started_at < running_cutoff(handlers[rid])
            if job.status == "queued" and job.taken:
                # Taken off the queue by a worker that died before it marked the job started: RQ
                # says queued, but no worker will find it until RQ's clean-up, minutes away.
                return job.enqueued_at is None or job.enqueued_at < queued_cutoff
            return job.status not in _LIVE_RQ_STATES or retry_overdue(rid)

        def lost_while_running(rid: int) -> bool:
            # The record outlived its lease, so "started" is a dead worker's leftover; so is a job
            # taken off its queue by a worker that died before starting it, and a retry no scheduler
            # moves (the run failed while the database was down, so the record still says running).
            job = states[rid]
            if job.status == "queued" and job.taken:
                return job.enqueued_at is None or job.enqueued_at < queued_cutoff
            return job.status not in _LIVE_RQ_STATES - {"started"} or retry_overdue(rid)

        queued = [rid for rid in queued if lost_while_queued(rid)]
        failed = [rid for rid in retrying if retry_overdue(rid)]
        stale = [(rid, h) for rid, h in stale if lost_while_running(rid)]
    claimed: list[int] = []
    if stale:
        with db.transaction() as session:
            for rid, handler in stale:
                result = session.execute(
                    update(JobRecord)
                    .where(JobRecord.id == rid, JobRecord.status == JobStatus.RUNNING,
                           JobRecord.started_at < running_cutoff(handler))
                    .values(status=JobStatus.QUEUED, last_error="worker lost; re-dispatched by the sweeper")
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(rid)
    lost = sorted(set(queued) | set(claimed) | set(failed))
    if lost:
        logger.warning("re-dispatching %d lost job record(s): %s", len(lost), lost[:50])
        dispatch(app, lost)
    return lost


def sweep_if_due(app: Flask, *, every_seconds: float, older_than_seconds: float) -> list[int] | None:
    """One sweep, unless another process swept within `every_seconds` (a Redis lock decides);
    so N workers each running a sweeper still sweep about once per interval."""
    conn = redis_connection(app)
    if conn is None:
        return None
    if not conn.set(_SWEEP_LOCK_KEY, "1", nx=True, ex=max(1, int(every_seconds))):
        return None
    return sweep_lost_jobs(app, older_than_seconds=older_than_seconds)


class JobSweeper:
    """Sweeps for lost work every `every_seconds`, in a process of its own beside `hospital worker`.

    Not a thread of the worker: RQ forks a work horse for every job, and a fork taken while another
    thread holds a lock (a connection pool's, a client library's) leaves that lock held for ever in
    the horse, which then hangs until the job timeout. A process forked before the first job shares
    no such state. It only reads the database and enqueues ids; a failed sweep (Redis or PostgreSQL
    down) is logged and tried again next interval, which is the whole point of a sweeper.
    """

    def __init__(self, app: Flask, *, every_seconds: float, older_than_seconds: float) -> None:
        context = multiprocessing.get_context("fork")  # the app and its configuration go along as they are
        self.app = app
        self.every_seconds = every_seconds
        self.older_than_seconds = older_than_seconds
        self._stopped = context.Event()
        self._parent_pid = os.getpid()
        self._process = context.Process(target=self._run, name="hospital-job-sweeper", daemon=True)

    def start(self) -> None:
        self._process.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.every_seconds):
            if os.getppid() != self._parent_pid:
                return  # the worker died without stopping us (SIGKILL): no sweeper outlives its worker
            try:
                with self.app.app_context():
                    sweep_if_due(self.app, every_seconds=self.every_seconds, older_than_seconds=self.older_than_seconds)
            except Exception:  # noqa: BLE001 - not a job: nothing retries a sweep but the next tick
                logger.exception("job sweep failed; trying again in %s s", self.every_seconds)

    def stop(self) -> None:
        self._stopped.set()
        self._process.join(timeout=self.every_seconds + 5)
        if self._process.is_alive():
            self._process.terminate()
