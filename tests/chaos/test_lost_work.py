"""Chaos on real processes: a worker killed with SIGKILL in the middle of an AI analysis, and
Redis restarted empty with jobs waiting. The sweeper inside `hospital worker` must recover the
work with nobody's help, and each billable event must end with exactly one charge."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis
from rq import Queue
from sqlalchemy import func, select

from ai_services.models import AnalysisJob, AnalysisStatus, DiagnosticReport
from billing.models import ChargeItem, ServiceLine
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.jobs import deliver, sweep_lost_jobs
from hospital.models import JobRecord, JobStatus
from hospital.seed import seed_demo
from imaging_orders.archive.ingest import complete_quiet_studies, store_instance
from referrals.models import ReferralStatus
from synthetic.dicom_factory import write_ct_series
from synthetic.phantoms import make_ct_phantom
from tests.chaos.conftest import JOB_TIMEOUT_SECONDS
from tests.chaos.processes import OwnRedis, kill_hard, wait_until
from tests.conftest import make_test_app
from tests.factories import analysis_completed, make_preliminary_report, make_referral, study_completed

pytestmark = pytest.mark.chaos


@pytest.fixture()
def chaos_app(live_database: str, own_redis: OwnRedis, tmp_path: Path) -> Flask:
    return make_test_app(live_database, tmp_path, REDIS_URL=own_redis.url, DICOM_STORAGE_DIR=tmp_path / "dicom",
                         JOB_TIMEOUT_SECONDS=JOB_TIMEOUT_SECONDS)


def count(app: Flask, statement) -> int:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        return int(session.scalar(statement) or 0)


def all_jobs_done(app: Flask) -> bool:
    with get_db(app).session() as session:
        return set(session.scalars(select(JobRecord.status).distinct())) == {JobStatus.DONE}


def receive_study(app: Flask, work_dir: Path, n_slices: int) -> int:
    """A matched CT study received and completed; its completion event goes to RQ."""
    with app.app_context():
        with get_db(app).transaction() as session:
            seed = seed_demo(session, app)
            referral = make_referral(session, seed, ReferralStatus.ACCEPTED)
            mrn, name, accession = seed.patient.mrn, seed.patient.dicom_name, referral.accession_number
        files = write_ct_series(make_ct_phantom(30_003, n_slices=n_slices, n_lesions=3), work_dir / "study",
                                patient_id=mrn, patient_name=name, accession_number=accession)
        for path in files:
            store_instance(app, path.read_bytes(), transfer_syntax_uid=None, calling_ae="CT1")
        (study_id,) = complete_quiet_studies(app, now=utcnow() + timedelta(hours=1))
    return study_id


def test_worker_killed_mid_inference_ends_with_one_report_and_one_ai_charge(
    chaos_app: Flask, workers: Callable[..., object], tmp_path: Path
) -> None:
    study_id = receive_study(chaos_app, tmp_path, n_slices=96)
    doomed = workers()

    def analysing() -> bool:
        with get_db(chaos_app).session() as session:
            job = session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
            return job is not None and job.status is AnalysisStatus.RUNNING and job.slices_done > 0

    wait_until("the analysis to make progress", analysing, timeout=60, interval=0.02)
    kill_hard(doomed)  # type: ignore[arg-type]
    assert count(chaos_app, select(func.count()).select_from(DiagnosticReport)) == 0, "killed too late"
    with get_db(chaos_app).session() as session:
        assert session.scalar(select(JobRecord.status).where(JobRecord.handler == "ai_services.jobs.analyse_study")) \
            is JobStatus.RUNNING

    workers()  # a fresh worker: its sweeper re-sends the analysis once the dead one's lease runs out
    wait_until("every job to finish after the kill", lambda: all_jobs_done(chaos_app) and count(
        chaos_app, select(func.count()).select_from(ChargeItem).where(ChargeItem.service_line == ServiceLine.AI_ANALYSIS)
    ) >= 1, timeout=JOB_TIMEOUT_SECONDS + 60, interval=0.5)

    assert count(chaos_app, select(func.count()).select_from(DiagnosticReport)
                 .where(DiagnosticReport.study_id == study_id)) == 1
    for line in (ServiceLine.AI_ANALYSIS, ServiceLine.SCAN):
        assert count(chaos_app, select(func.count()).select_from(ChargeItem).where(ChargeItem.service_line == line)) == 1
    with get_db(chaos_app).session() as session:
        job = session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
        assert job is not None and job.status is AnalysisStatus.COMPLETED and job.attempts == 2


def test_redis_restarted_empty_with_jobs_waiting_loses_no_charge(
    chaos_app: Flask, own_redis: OwnRedis, workers: Callable[..., object]
) -> None:
    with chaos_app.app_context(), get_db(chaos_app).transaction() as session:
        seed = seed_demo(session, chaos_app)
        reports = [make_preliminary_report(session, seed, [(10, 10, 30, 30)]) for _ in range(6)]
        for report in reports:
            deliver(session, "billing.jobs.charge_scan", study_completed(session, report.study_id), queue="billing")
            deliver(session, "billing.jobs.charge_ai_analysis", analysis_completed(session, report), queue="billing")
    assert Queue("billing", connection=Redis.from_url(own_redis.url)).count == 12

    own_redis.kill()
    with chaos_app.app_context(), get_db(chaos_app).transaction() as session:
        # Published while Redis is down: the enqueue fails after commit; the record stays queued.
        deliver(session, "billing.jobs.charge_scan", study_completed(session, reports[0].study_id), queue="billing")
    own_redis.start()  # back, empty
    assert Queue("billing", connection=Redis.from_url(own_redis.url)).count == 0

    workers(), workers()  # two workers, two sweepers: still one charge per event
    wait_until("every job to finish after the Redis restart", lambda: all_jobs_done(chaos_app), timeout=60, interval=0.5)

    with get_db(chaos_app).session() as session:
        keys = list(session.scalars(select(ChargeItem.event_key)))
    assert len(keys) == 12 and len(set(keys)) == 12, keys
    assert count(chaos_app, select(func.count()).select_from(JobRecord)) == 13
    assert sweep_lost_jobs(chaos_app, older_than_seconds=0) == []
