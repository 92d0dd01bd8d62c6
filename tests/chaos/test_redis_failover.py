"""Redis behind Sentinel (`REDIS_SENTINELS`): the master is SIGKILLed, the sentinels promote the
replica, and the app and a `hospital worker` follow it with nobody's help: the app enqueues on the
new master, the worker (busy with a job when the master died) runs on, readiness says Redis is fine
again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.jobs import enqueue, redis_connection
from hospital.models import AuditEvent, JobRecord, JobStatus
from hospital.readiness import readiness
from tests.chaos.conftest import SWEEP_ENV
from tests.chaos.processes import SentinelRedis, hospital_env, kill_hard, start_worker, wait_until
from tests.conftest import make_test_app

pytestmark = pytest.mark.chaos

HANDLER = "tests.hospital.test_jobs.record_call"
SLOW_HANDLER = "tests.chaos.test_redis_failover.slow_call"


def slow_call(session: Session, n: int, seconds: float) -> None:
    """A job still running when the master dies: its worker must report it done on the new one."""
    time.sleep(seconds)
    session.add(AuditEvent(action="E", entity_type="TestJob", entity_id=str(n), source="system"))


@pytest.fixture()
def sentinel_redis() -> Iterator[SentinelRedis]:
    cluster = SentinelRedis()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def job_done(app: Flask, record_id: int) -> bool:
    with get_db(app).session() as session:
        return session.scalar(select(JobRecord.status).where(JobRecord.id == record_id)) is JobStatus.DONE


def enqueue_one(app: Flask, n: int, handler: str = HANDLER, **payload: float) -> int:
    with app.app_context(), get_db(app).transaction() as session:
        return enqueue(session, handler, n=n, **payload).id


def job_running(app: Flask, record_id: int) -> bool:
    with get_db(app).session() as session:
        return session.scalar(select(JobRecord.status).where(JobRecord.id == record_id)) is JobStatus.RUNNING


def test_app_and_worker_follow_a_sentinel_failover(live_database: str, sentinel_redis: SentinelRedis,
                                                   tmp_path: Path) -> None:
    settings = {"REDIS_SENTINELS": sentinel_redis.addresses, "REDIS_SENTINEL_MASTER": sentinel_redis.name}
    app = make_test_app(live_database, tmp_path, **settings)
    env = hospital_env(live_database, "", tmp_path / "dicom", tmp_path, **settings, **SWEEP_ENV)
    worker = start_worker(env, "default", log=tmp_path / "worker.log")
    try:
        first = enqueue_one(app, 1)
        wait_until("the job before the failover", lambda: job_done(app, first), 30)
        old_master = sentinel_redis.master().address
        assert redis_connection(app).connection_pool.get_master_address() == old_master  # type: ignore[union-attr]

        # The worker is busy when the master dies: afterwards it writes the job's end and its own
        # state through connections that knew only the old master.
        busy = enqueue_one(app, 3, SLOW_HANDLER, seconds=4.0)
        wait_until("the slow job to start", lambda: job_running(app, busy), 30)
        seconds = sentinel_redis.kill_master()
        assert sentinel_redis.master().address != old_master
        assert seconds < 15

        # The app's next command reconnects through the sentinels to the promoted replica; a
        # dispatch that failed meanwhile would leave its record queued for the worker's sweeper.
        second = enqueue_one(app, 2)
        wait_until("the job after the failover", lambda: job_done(app, second), 45)
        wait_until("the job that ran through the failover", lambda: job_done(app, busy), 45)
        with app.app_context():
            assert readiness(app)["redis"] == "ok"
        assert redis_connection(app).connection_pool.get_master_address() != old_master  # type: ignore[union-attr]
        assert worker.poll() is None, "the worker must ride out the failover, not exit"
    finally:
        kill_hard(worker)
