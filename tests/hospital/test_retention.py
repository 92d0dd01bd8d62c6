"""Retention rules and legal holds (issue #21): only what a rule names, past its period and not on
hold, is deleted; every deletion is audited; audit rows are archived and checkpointed so the hash
chain still verifies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import delete, select
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from hospital.audit import verify_chain
from hospital.backup import backup, restore
from hospital.cli import cli
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.errors import InvalidInput
from hospital.migrate import upgrade
from hospital.models import (
    AuditCheckpoint,
    AuditEvent,
    JobRecord,
    JobStatus,
    Organization,
    OrganizationKind,
    Patient,
)
from hospital.retention import (
    DataClass,
    place_hold,
    release_hold,
    remove_rule,
    retention_job,
    run_retention,
    set_rule,
    storage_usage,
)
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from tests.conftest import make_test_app

YEARS_AGO = timedelta(days=3 * 365)


# --- job records, on the suite's database ------------------------------------------------------------

def job(session: Session, status: JobStatus, finished_days_ago: int | None) -> int:
    now = utcnow()
    finished = None if finished_days_ago is None else now - timedelta(days=finished_days_ago)
    record = JobRecord(handler="x.y", queue="default", payload={}, status=status, created_at=now - timedelta(days=400),
                       finished_at=finished)
    session.add(record)
    session.flush()
    return record.id


def test_without_a_rule_nothing_is_deleted(app: Flask, db_session: Session) -> None:
    old = job(db_session, JobStatus.DONE, 4000)
    report = run_retention(app, db_session, dry_run=False)
    assert report.outcomes == []
    assert db_session.get(JobRecord, old) is not None


def test_done_job_records_past_their_period_go_and_owed_work_stays(app: Flask, db_session: Session) -> None:
    old_done = job(db_session, JobStatus.DONE, 100)
    recent_done = job(db_session, JobStatus.DONE, 10)
    old_failed = job(db_session, JobStatus.FAILED, 100)
    old_queued = job(db_session, JobStatus.QUEUED, None)
    set_rule(db_session, None, DataClass.JOB_RECORDS, 30)

    dry = run_retention(app, db_session, dry_run=True)
    assert [o.deleted for o in dry.outcomes] == [[f"job_record {old_done}"]]
    assert db_session.get(JobRecord, old_done) is not None

    audit_before = db_session.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1)) or 0
    done = run_retention(app, db_session, dry_run=False)
    assert [o.deleted for o in done.outcomes] == [[f"job_record {old_done}"]]
    db_session.expire_all()
    assert db_session.get(JobRecord, old_done) is None
    assert all(db_session.get(JobRecord, i) is not None for i in (recent_done, old_failed, old_queued))
    audited = db_session.scalars(select(AuditEvent).where(AuditEvent.id > audit_before,
                                                          AuditEvent.entity_type == "JobRecord")).all()
    assert [(a.action, a.source, a.entity_id) for a in audited] == [("D", "retention", f"{old_done}..{old_done}")]


def test_rules_and_holds_are_checked(db_session: Session) -> None:
    with pytest.raises(InvalidInput, match="between 1 and"):
        set_rule(db_session, None, DataClass.IMAGES, 0)
    with pytest.raises(InvalidInput, match="one patient or on one study"):
        place_hold(db_session, None, reason="litigation 2026-114")
    with pytest.raises(InvalidInput, match="needs a reason"):
        place_hold(db_session, None, reason="  ", study_instance_uid="1.2.3")
    with pytest.raises(InvalidInput, match="digits and dots"):
        place_hold(db_session, None, reason="case", study_instance_uid="1.2.x")
    set_rule(db_session, None, DataClass.IMAGES, 3650)
    remove_rule(db_session, None, DataClass.IMAGES)


# --- the audit trail, on a database of its own (its rows cannot be rolled back by others) ----------

@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    url = request.getfixturevalue("empty_postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(url)
    app = make_test_app(url, tmp_path, AUDIT_ARCHIVE_DIR=tmp_path / "audit-archive")
    with app.app_context():
        yield app
    get_db(app).engine.dispose()


def add_audit(session: Session, age: timedelta, patient_id: int | None = None) -> int:
    event = AuditEvent(action="R", entity_type="Patient", entity_id="1", patient_id=patient_id, outcome=0,
                       source="web", recorded_at=utcnow() - age)
    session.add(event)
    session.flush()
    return event.id


def test_audit_rows_are_archived_checkpointed_and_the_chain_still_verifies(fresh_app: Flask, tmp_path: Path) -> None:
    db = get_db(fresh_app)
    with db.transaction() as session:
        held = Patient(mrn="HELD-1", family_name="Held", given_name="Patient")
        session.add(held)
        session.flush()
        old = [add_audit(session, YEARS_AGO) for _ in range(3)]
        held_row = add_audit(session, YEARS_AGO, patient_id=held.id)
        after_held = [add_audit(session, YEARS_AGO) for _ in range(2)]
        recent = add_audit(session, timedelta(days=1))
        hold = place_hold(session, None, reason="litigation 2026-114", patient_id=held.id)
        set_rule(session, None, DataClass.AUDIT, 365)
        hold_id = hold.id

    with db.transaction() as session:
        dry = run_retention(fresh_app, session, dry_run=True)
    assert dry.outcomes[0].deleted == [f"audit_event {old[0]}..{old[-1]} (3 rows)"]
    assert dry.outcomes[0].kept_on_hold == [f"audit rows from {held_row} on (a patient on hold)"]
    assert not (tmp_path / "audit-archive").exists()

    with db.transaction() as session:
        run_retention(fresh_app, session, dry_run=False)
    with db.transaction() as session:
        assert session.scalars(select(AuditEvent.id).where(AuditEvent.id <= old[-1])).all() == []
        assert session.get(AuditEvent, held_row) is not None and session.get(AuditEvent, recent) is not None
        checkpoint = session.scalars(select(AuditCheckpoint)).one()
        assert (checkpoint.first_event_id, checkpoint.up_to_event_id, checkpoint.rows) == (old[0], old[-1], 3)
        report = verify_chain(session)
        assert report.broken is None, report.broken
        removal = session.scalars(select(AuditEvent).where(AuditEvent.entity_type == "AuditEvent")).one()
        assert removal.action == "D" and removal.source == "retention" and checkpoint.archive_sha256 in (removal.description or "")
    archive = (tmp_path / "audit-archive" / checkpoint.archive_name).read_bytes()
    assert hashlib.sha256(archive).hexdigest() == checkpoint.archive_sha256
    lines = [json.loads(line) for line in archive.splitlines()]
    assert [line["id"] for line in lines] == old and lines[-1]["row_hash"] == checkpoint.head_hash

    # The database itself refuses to delete a row no checkpoint covers, even outside the run.
    with pytest.raises(DatabaseError, match="append-only"), db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.id == held_row))

    with db.transaction() as session:
        release_hold(session, None, hold_id)
    with db.transaction() as session:
        again = run_retention(fresh_app, session, dry_run=False)
        assert again.outcomes[0].deleted == [f"audit_event {held_row}..{after_held[-1]} (3 rows)"]
    with db.transaction() as session:
        assert verify_chain(session).broken is None
        assert len(session.scalars(select(AuditCheckpoint)).all()) == 2


def test_audit_chain_broken_before_the_checkpoint_is_reported(fresh_app: Flask) -> None:
    """A checkpoint does not excuse a gap after it: the first remaining row must follow its hash."""
    db = get_db(fresh_app)
    with db.transaction() as session:
        rows = [add_audit(session, YEARS_AGO) for _ in range(4)]
        add_audit(session, timedelta(0))
        set_rule(session, None, DataClass.AUDIT, 365)
    with db.transaction() as session:
        run_retention(fresh_app, session, dry_run=False)
    with db.transaction() as session:
        assert verify_chain(session).broken is None
        checkpoint = session.scalars(select(AuditCheckpoint)).one()
        assert checkpoint.up_to_event_id == rows[-1]
        first = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).first()
        assert first is not None and first.prev_hash == checkpoint.head_hash


def test_retention_run_command_dry_run_and_no_rules(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(url)
    env = {"DATABASE_URL": url, "REDIS_URL": "", "HOSPITAL_INSTANCE_DIR": str(tmp_path / "i")}
    result = CliRunner().invoke(cli, ["retention", "run", "--dry-run"], env=env, catch_exceptions=False)
    assert result.exit_code == 0 and "no retention rules: nothing is deleted" in result.output
    app = make_test_app(url, tmp_path)
    with app.app_context(), get_db(app).transaction() as session:
        session.add(JobRecord(handler="x.y", payload={}, status=JobStatus.DONE, finished_at=utcnow() - YEARS_AGO))
        set_rule(session, None, DataClass.JOB_RECORDS, 30)
    result = CliRunner().invoke(cli, ["retention", "run", "--dry-run"], env=env, catch_exceptions=False)
    assert "job_records (keep 30 days" in result.output and "would delete: job_record 1" in result.output
    result = CliRunner().invoke(cli, ["retention", "run"], env=env, catch_exceptions=False)
    assert result.exit_code == 0 and "deleted: job_record 1" in result.output
    result = CliRunner().invoke(cli, ["retention", "run", "--class", "nonsense"], env=env)
    assert result.exit_code == 2


# --- images and derived AI outputs (the archive's classes) ----------------------------------------------

def add_study(session: Session, storage: Path, uid: str, age: timedelta, *, organization_id: int | None,
              patient_id: int | None = None, derived_too: bool = True) -> dict[str, list[Path]]:
    study = ImagingStudy(study_instance_uid=uid, patient_id=patient_id, organization_id=organization_id,
                         last_instance_at=utcnow() - age, received_at=utcnow() - age)
    session.add(study)
    session.flush()
    files: dict[str, list[Path]] = {"acquired": [], "derived": []}
    for derived in (False, True) if derived_too else (False,):
        series = ImagingSeries(study_id=study.id, series_instance_uid=f"{uid}.{int(derived) + 1}", modality="CT",
                               derived=derived)
        session.add(series)
        session.flush()
        for n in range(2):
            relative = f"{uid}/{int(derived)}/{n}.dcm"
            (storage / relative).parent.mkdir(parents=True, exist_ok=True)
            (storage / relative).write_bytes(b"x" * 100)
            session.add(ImagingInstance(series_id=series.id, sop_instance_uid=f"{uid}.{int(derived) + 1}.{n}",
                                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                                        number=n, path=relative, size_bytes=100, sha256="0" * 64))
            files["derived" if derived else "acquired"].append(storage / relative)
    session.flush()
    return files


def test_images_and_ai_outputs_past_their_period_go_unless_held(fresh_app: Flask, tmp_path: Path) -> None:
    storage = Path(fresh_app.config["DICOM_STORAGE_DIR"])
    db = get_db(fresh_app)
    with db.transaction() as session:
        centre = Organization(name="Riverside Imaging", kind=OrganizationKind.IMAGING_CENTRE)
        patient = Patient(mrn="HOLD-2", family_name="Held", given_name="Imaging")
        session.add_all([centre, patient])
        session.flush()
        old = add_study(session, storage, "1.2.826.1", YEARS_AGO, organization_id=centre.id)
        held_patient = add_study(session, storage, "1.2.826.2", YEARS_AGO, organization_id=centre.id, patient_id=patient.id)
        held_study = add_study(session, storage, "1.2.826.3", YEARS_AGO, organization_id=None)
        recent = add_study(session, storage, "1.2.826.4", timedelta(days=10), organization_id=centre.id)
        place_hold(session, None, reason="claim 77", patient_id=patient.id)
        place_hold(session, None, reason="claim 78", study_instance_uid="1.2.826.3")
        usage = {u.label: u for u in storage_usage(fresh_app, session)}
        assert (usage["Riverside Imaging"].studies, usage["Riverside Imaging"].instances,
                usage["Riverside Imaging"].size_bytes) == (3, 12, 1200)
        assert usage["No centre (unmatched)"].size_bytes == 400
        set_rule(session, None, DataClass.AI_OUTPUTS, 365)

    with db.transaction() as session:  # only the derived outputs have a rule yet
        report = run_retention(fresh_app, session, dry_run=False)
    (outcome,) = report.outcomes
    assert outcome.data_class is DataClass.AI_OUTPUTS and outcome.freed_bytes == 200
    assert [d.split(":")[0] for d in outcome.deleted] == [f"study 1.2.826.1 ({1})"]
    assert sorted(k.split(" (")[0] for k in outcome.kept_on_hold) == ["study 1.2.826.2", "study 1.2.826.3"]
    assert not any(p.exists() for p in old["derived"]) and all(p.exists() for p in old["acquired"])
    assert all(p.exists() for f in (held_patient, held_study, recent) for p in f["acquired"] + f["derived"])

    with db.transaction() as session:
        set_rule(session, None, DataClass.IMAGES, 365)
        dry = run_retention(fresh_app, session, dry_run=True)
        assert [len(o.deleted) for o in dry.outcomes] == [0, 1]  # ai_outputs, images
        assert all(p.exists() for p in old["acquired"])
    with pytest.raises(RuntimeError), db.transaction() as session:  # a failed run keeps every file
        run_retention(fresh_app, session, dry_run=False)
        raise RuntimeError("the unit of work fails after the deletes")
    assert all(p.exists() for p in old["acquired"])
    with db.transaction() as session:
        run_retention(fresh_app, session, dry_run=False)
    assert not any(p.exists() for p in old["acquired"])
    with db.transaction() as session:
        study = session.scalars(select(ImagingStudy).where(ImagingStudy.study_instance_uid == "1.2.826.1")).one()
        assert session.scalars(select(ImagingSeries).where(ImagingSeries.study_id == study.id)).all() == []
        audits = session.scalars(select(AuditEvent).where(AuditEvent.entity_type == "ImagingStudy",
                                                          AuditEvent.entity_id == str(study.id))).all()
        assert [(a.action, a.source) for a in audits] == [("D", "retention"), ("D", "retention")]
        assert verify_chain(session).broken is None


def test_archived_audit_rows_travel_with_the_backup_and_the_restored_chain_verifies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(url)
    app = make_test_app(url, tmp_path / "a", AUDIT_ARCHIVE_DIR=tmp_path / "a" / "audit-archive")
    with app.app_context():
        with get_db(app).transaction() as session:
            for _ in range(3):
                add_audit(session, YEARS_AGO)
            add_audit(session, timedelta(0))
            set_rule(session, None, DataClass.AUDIT, 365)
        with get_db(app).transaction() as session:
            run_retention(app, session, dry_run=False)
        manifest = backup(app, tmp_path / "backup")
    archived = [name for name in manifest["files"] if name.startswith("audit-archive/")]
    assert len(archived) == 1
    restored_url = f"sqlite:///{tmp_path / 'r.db'}"
    other = make_test_app(restored_url, tmp_path / "b", AUDIT_ARCHIVE_DIR=tmp_path / "b" / "audit-archive")
    with other.app_context():
        result = restore(other, tmp_path / "backup")
    assert result.audit.broken is None
    assert (tmp_path / "b" / archived[0]).read_bytes() == (tmp_path / "a" / archived[0]).read_bytes()


def test_the_daily_job_runs_every_class_but_the_audit_trail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(url)
    app = make_test_app(url, tmp_path, RETENTION_EVERY_SECONDS=3600)
    assert any(job.handler == "hospital.retention.retention_job" and job.every_seconds == 3600
               for job in app.extensions["hospital.periodic"])
    assert not any(job.handler == "hospital.retention.retention_job"
                   for job in make_test_app(url, tmp_path, RETENTION_EVERY_SECONDS=0).extensions["hospital.periodic"])
    with app.app_context():
        with get_db(app).transaction() as session:
            old_audit = add_audit(session, YEARS_AGO)
            session.add(JobRecord(handler="x.y", payload={}, status=JobStatus.DONE, finished_at=utcnow() - YEARS_AGO))
            set_rule(session, None, DataClass.AUDIT, 30)
            set_rule(session, None, DataClass.JOB_RECORDS, 30)
        with get_db(app).transaction() as session:
            retention_job(session)
        with get_db(app).transaction() as session:
            assert session.scalars(select(JobRecord)).all() == []
            assert session.get(AuditEvent, old_audit) is not None
