"""Durable jobs: records written with the event, handed to RQ after commit, run once, failures
recorded, lost work re-dispatched by the sweeper."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from redis import Redis
from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.cli import cli
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.events import DomainEvent, withdraw_event_type
from hospital.jobs import (
    UnsubscribedEvent,
    enqueue,
    publish,
    run_job,
    runs_of_a_failing_job,
    subscribe,
    sweep_if_due,
    sweep_lost_jobs,
)
from hospital.models import AuditEvent, JobRecord, JobStatus
from tests.conftest import REDIS_URL, make_test_app

CALLS: list[dict[str, Any]] = []


@dataclass(frozen=True)
class Happened(DomainEvent):
    name = "test.happened"

    n: int


def record_call(session: Session, event: Happened | None = None, **payload: Any) -> None:
    payload = event.payload() if event is not None else payload
    CALLS.append(payload)
    session.add(AuditEvent(action="E", entity_type="TestJob", entity_id=str(payload.get("n")), source="system"))


def always_fails(session: Session, **payload: Any) -> None:
    raise ValueError(f"cannot handle {payload}")


@pytest.fixture()
def redis_app(live_database: str, redis_url: str, tmp_path: Path) -> Flask:
    app = make_test_app(live_database, tmp_path, REDIS_URL=redis_url)
    subscribe(app, Happened, "tests.hospital.test_jobs.record_call", queue="default")
    return app


def test_records_are_enqueued_only_after_commit(redis_app: Flask, redis_url: str) -> None:
    queue = Queue("default", connection=Redis.from_url(redis_url))
    with redis_app.app_context():
        session = get_db().session()
        record = publish(session, Happened(n=1))[0]
        assert queue.count == 0, "nothing may reach a worker before the transaction commits"
        session.commit()
        assert queue.job_ids == [f"hospital-job-{record.id}"]
        rolled_back = publish(session, Happened(n=2))[0].id
        session.rollback()
        assert queue.job_ids == [f"hospital-job-{record.id}"]
        session.close()
        with get_db().session() as check:
            assert check.get(JobRecord, rolled_back) is None


def test_a_job_delivered_twice_runs_once(redis_app: Flask) -> None:
    CALLS.clear()
    with redis_app.app_context():
        with get_db().transaction() as session:
            record_id = enqueue(session, "tests.hospital.test_jobs.record_call", n=7).id
        run_job(record_id)
        run_job(record_id)
        assert CALLS == [{"n": 7}]
        with get_db().session() as session:
            record = session.get(JobRecord, record_id)
            assert record is not None and record.status is JobStatus.DONE and record.attempts == 1


def test_a_failing_job_is_recorded_and_re_raised(redis_app: Flask) -> None:
    with redis_app.app_context():
        with get_db().transaction() as session:
            record_id = enqueue(session, "tests.hospital.test_jobs.always_fails", n=1).id
        with pytest.raises(ValueError, match="cannot handle"):
            run_job(record_id)
        with get_db().session() as session:
            record = session.get(JobRecord, record_id)
            assert record is not None and record.status is JobStatus.FAILED
            assert record.last_error == "ValueError: cannot handle {'n': 1}"


def test_sweeper_re_dispatches_work_that_redis_lost(redis_app: Flask, redis_url: str) -> None:
    connection = Redis.from_url(redis_url)
    with redis_app.app_context():
        with get_db().transaction() as session:
            record_id = enqueue(session, "tests.hospital.test_jobs.record_call", n=3).id
    connection.flushdb()  # Redis restarted empty
    result = redis_app.test_cli_runner().invoke(cli, ["jobs", "sweep", "--older-than", "0"])
    assert result.exit_code == 0, result.output
    assert "re-dispatched 1" in result.output
    assert Queue("default", connection=connection).job_ids == [f"hospital-job-{record_id}"]


def test_inline_mode_runs_handlers_after_commit(db_session: Session, app: Flask) -> None:
    CALLS.clear()
    subscribe(app, Happened, "tests.hospital.test_jobs.record_call")
    publish(db_session, Happened(n=5))
    assert CALLS == []
    db_session.commit()
    assert CALLS == [{"n": 5}]
    assert db_session.scalar(select(AuditEvent.entity_id).where(AuditEvent.entity_type == "TestJob")) == "5"


def _record_in_state(app: Flask, status: JobStatus, started_seconds_ago: float | None = None, n: int = 1) -> int:
    with app.app_context(), get_db().transaction() as session:
        record = enqueue(session, "tests.hospital.test_jobs.record_call", n=n)
        record.created_at = utcnow() - timedelta(seconds=3600)
        record.status = status
        if started_seconds_ago is not None:
            record.started_at = utcnow() - timedelta(seconds=started_seconds_ago)
        return record.id


def test_sweeper_leaves_live_work_alone_and_re_sends_what_redis_lost(redis_app: Flask, redis_url: str) -> None:
    connection = Redis.from_url(redis_url)
    queued = _record_in_state(redis_app, JobStatus.QUEUED)  # dispatched after commit: RQ holds it
    assert sweep_lost_jobs(redis_app, older_than_seconds=60) == []
    connection.flushdb()
    assert sweep_lost_jobs(redis_app, older_than_seconds=60) == [queued]
    assert Queue("default", connection=connection).job_ids == [f"hospital-job-{queued}"]


def test_sweeper_re_sends_work_of_a_dead_worker_once_its_lease_ran_out(redis_app: Flask, redis_url: str) -> None:
    CALLS.clear()
    timeout = redis_app.config["JOB_TIMEOUT_SECONDS"]
    alive = _record_in_state(redis_app, JobStatus.RUNNING, started_seconds_ago=timeout / 2, n=1)
    dead = _record_in_state(redis_app, JobStatus.RUNNING, started_seconds_ago=timeout + 120, n=2)
    Redis.from_url(redis_url).flushdb()  # the dead worker's RQ job expired with it
    with redis_app.app_context():
        run_job(alive)  # a second delivery while its worker holds it: does nothing
        assert CALLS == []
        assert sweep_lost_jobs(redis_app, older_than_seconds=60) == [dead]
        assert sweep_lost_jobs(redis_app, older_than_seconds=60) == [], "claimed once, queued in RQ now"
        with get_db().session() as session:
            assert session.get(JobRecord, dead).status is JobStatus.QUEUED
        run_job(dead)
        assert CALLS == [{"n": 2}]


def test_sweeper_re_sends_queued_work_a_dead_worker_took_from_rq(redis_app: Flask, redis_url: str) -> None:
    """A worker killed between RQ's dequeue and run_job's first commit leaves the record queued and
    RQ's job "started" for ever (until RQ's own clean-up): once that start is older than the job
    timeout, it is lost; a recent start is a live worker's."""
    connection = Redis.from_url(redis_url)
    timeout = redis_app.config["JOB_TIMEOUT_SECONDS"]
    taken_by_dead = _record_in_state(redis_app, JobStatus.QUEUED, n=1)
    taken_just_now = _record_in_state(redis_app, JobStatus.QUEUED, n=2)
    for record_id, seconds_ago in ((taken_by_dead, timeout + 120), (taken_just_now, 1)):
        job = Queue("default", connection=connection).fetch_job(f"hospital-job-{record_id}")
        assert job is not None
        connection.hset(job.key, mapping={"status": "started",
                                          "started_at": (utcnow() - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
    assert sweep_lost_jobs(redis_app, older_than_seconds=60) == [taken_by_dead]


def test_sweeper_re_sends_queued_work_a_dead_worker_took_off_the_queue(redis_app: Flask, redis_url: str) -> None:
    """RQ moves a job off its queue before the worker marks it started; a worker that dies between
    the two leaves it "queued" but in no queue (until RQ's own clean-up, ten minutes away)."""
    connection = Redis.from_url(redis_url)
    taken = _record_in_state(redis_app, JobStatus.QUEUED, n=1)
    waiting = _record_in_state(redis_app, JobStatus.QUEUED, n=2)
    for record_id in (taken, waiting):
        connection.hset(f"rq:job:hospital-job-{record_id}", "enqueued_at",
                        (utcnow() - timedelta(seconds=600)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    connection.lmove("rq:queue:default", "rq:queue:default:intermediate", "LEFT", "RIGHT")  # as a worker's dequeue
    assert connection.lrange("rq:queue:default:intermediate", 0, -1) == [f"hospital-job-{taken}".encode()]
    assert sweep_lost_jobs(redis_app, older_than_seconds=60) == [taken]
    assert Queue("default", connection=connection).job_ids == [f"hospital-job-{waiting}", f"hospital-job-{taken}"]


def _retry_scheduled(connection: Redis, record_id: int, seconds_from_now: float) -> None:
    """RQ holds the record's job as a retry scheduled for then (as `Retry` leaves a failed job)."""
    job_id = f"hospital-job-{record_id}"
    connection.hset(f"rq:job:{job_id}", "status", "scheduled")
    connection.zadd("rq:scheduled:default", {job_id: (utcnow() + timedelta(seconds=seconds_from_now)).timestamp()})


def test_sweeper_re_sends_a_retry_no_scheduler_will_move(redis_app: Flask, redis_url: str) -> None:
    """RQ's retries wait in a scheduled registry for the scheduler of a worker holding the queue's
    lock; when that worker died, another takes over only at its next maintenance, minutes later. A
    retry overdue by more than the sweep delay is lost work, whether the record still says queued
    (the database was down before run_job's first commit) or failed (the handler failed)."""
    connection = Redis.from_url(redis_url)
    overdue_queued = _record_in_state(redis_app, JobStatus.QUEUED, n=1)
    due_later = _record_in_state(redis_app, JobStatus.QUEUED, n=2)
    overdue_failed = _record_in_state(redis_app, JobStatus.FAILED, n=3)
    failed_for_good = _record_in_state(redis_app, JobStatus.FAILED, n=4)  # RQ gave up: an operator's call
    with redis_app.app_context(), get_db().transaction() as session:
        for record_id in (overdue_failed, failed_for_good):
            session.get(JobRecord, record_id).finished_at = utcnow() - timedelta(seconds=300)  # type: ignore[union-attr]
    _retry_scheduled(connection, overdue_queued, -120)
    _retry_scheduled(connection, due_later, 30)
    _retry_scheduled(connection, overdue_failed, -120)
    connection.hset(f"rq:job:hospital-job-{failed_for_good}", "status", "failed")
    assert sweep_lost_jobs(redis_app, older_than_seconds=60) == [overdue_queued, overdue_failed]


def test_sweeper_re_sends_running_work_whose_retry_no_scheduler_will_move_or_a_dead_worker_took(
    redis_app: Flask, redis_url: str,
) -> None:
    """A record still RUNNING past its lease whose RQ job is a retry nobody moves (the run failed
    while the database was down, so the record could not say so, and the worker holding the
    scheduler's lock is dead), or "queued" but taken off the queue by a worker that died: lost, as
    a dead worker's "started" job is. A retry still due and a job waiting in its queue are live."""
    connection = Redis.from_url(redis_url)
    timeout = redis_app.config["JOB_TIMEOUT_SECONDS"]
    overdue, due_later, taken, waiting = (
        _record_in_state(redis_app, JobStatus.RUNNING, started_seconds_ago=timeout + 120, n=n) for n in range(1, 5))
    _retry_scheduled(connection, overdue, -120)
    _retry_scheduled(connection, due_later, 30)
    for record_id in (taken, waiting):
        connection.hset(f"rq:job:hospital-job-{record_id}", "enqueued_at",
                        (utcnow() - timedelta(seconds=600)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    # The queue holds the four jobs enqueued at dispatch; the two scheduled ones leave it, and a
    # worker's dequeue moves `taken` to the intermediate queue.
    for record_id in (overdue, due_later):
        connection.lrem("rq:queue:default", 0, f"hospital-job-{record_id}")
    connection.lmove("rq:queue:default", "rq:queue:default:intermediate", "LEFT", "RIGHT")
    assert connection.lrange("rq:queue:default:intermediate", 0, -1) == [f"hospital-job-{taken}".encode()]
    assert sorted(sweep_lost_jobs(redis_app, older_than_seconds=60)) == sorted([overdue, taken])
    with redis_app.app_context(), get_db().session() as session:
        assert [session.get(JobRecord, r).status for r in (overdue, due_later, taken, waiting)] == [  # type: ignore[union-attr]
            JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.RUNNING]


def test_only_one_sweep_per_interval_across_workers(redis_app: Flask, redis_url: str) -> None:
    Redis.from_url(redis_url).flushdb()
    assert sweep_if_due(redis_app, every_seconds=30, older_than_seconds=60) == []
    assert sweep_if_due(redis_app, every_seconds=30, older_than_seconds=60) is None


def test_a_long_job_within_its_own_timeout_is_not_taken_for_lost(redis_app: Flask) -> None:
    """Retraining may run for hours: its longer timeout, not the default, decides when it is lost."""
    redis_app.config["JOB_TIMEOUTS"] = {"tests.hospital.test_jobs.record_call": 7200}
    with redis_app.app_context():
        with get_db().transaction() as session:
            record = enqueue(session, "tests.hospital.test_jobs.record_call", n=9)
            record.status = JobStatus.RUNNING
            record.started_at = utcnow() - timedelta(seconds=redis_app.config["JOB_TIMEOUT_SECONDS"] + 300)
            record_id = record.id
        Redis.from_url(redis_app.config["REDIS_URL"]).flushdb()  # its worker and RQ's record of it are gone
        assert sweep_lost_jobs(redis_app, older_than_seconds=60) == []
        with get_db().transaction() as session:
            session.get(JobRecord, record_id).started_at = utcnow() - timedelta(seconds=7200 + 300)
        assert sweep_lost_jobs(redis_app, older_than_seconds=60) == [record_id]


@dataclass(frozen=True)
class NobodyListens(DomainEvent):
    name = "test.nobody_listens"

    n: int


def test_publishing_an_event_nobody_subscribes_to_is_an_error(db_session: Session, app: Flask) -> None:
    with pytest.raises(UnsubscribedEvent, match="test.nobody_listens"):
        publish(db_session, NobodyListens(n=1))
    assert db_session.scalar(select(JobRecord.id).where(JobRecord.event == "test.nobody_listens")) is None


def test_a_stage_event_without_subscriber_stops_the_app_at_start_up(database_url: str, tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Orphan(DomainEvent):
        name = "billing.orphan"

    Orphan.__module__ = "billing.events"  # as if a stage declared it; nothing subscribes to it
    try:
        with pytest.raises(UnsubscribedEvent, match="billing.orphan"):
            make_test_app(database_url, tmp_path)
    finally:
        withdraw_event_type("billing.orphan")
    make_test_app(database_url, tmp_path)  # and without it the app starts


def test_events_carry_plain_values_only() -> None:
    with pytest.raises(TypeError, match="must be an int, str, bool or None"):
        Happened(n=utcnow())  # type: ignore[arg-type]
    assert Happened.from_payload(Happened(n=3).payload()) == Happened(n=3)


def test_jobs_published_in_a_savepoint_wait_for_the_outer_commit(db_session: Session, app: Flask) -> None:
    """Form actions and batch entries run in savepoints: releasing one must not hand its jobs on
    (nothing is committed yet), and undoing one must not forget jobs published before it."""
    CALLS.clear()
    subscribe(app, Happened, "tests.hospital.test_jobs.record_call")
    publish(db_session, Happened(n=1))
    with db_session.begin_nested():
        publish(db_session, Happened(n=2))
    assert CALLS == [], "a released savepoint is not a commit"
    with pytest.raises(RuntimeError), db_session.begin_nested():
        publish(db_session, Happened(n=3))
        raise RuntimeError("this action is undone")
    db_session.commit()
    assert sorted(call["n"] for call in CALLS) == [1, 2]


def test_a_failing_job_runs_once_inline_and_with_each_retry_under_rq(database_url: str, tmp_path: Path) -> None:
    inline = make_test_app(database_url, tmp_path / "inline")
    queued = make_test_app(database_url, tmp_path / "rq", REDIS_URL=REDIS_URL)
    assert runs_of_a_failing_job(inline) == 1
    assert runs_of_a_failing_job(queued) == 4  # RQ's first run and its three retries (5 s, 30 s, 120 s)
