"""`hospital backup` and `hospital restore` (hospital/backup.py), and the drill that proves a backup
by restoring it: a loop on PostgreSQL, a backup taken while writes go on, a restore into a fresh
database and storage, and every acknowledged study, report, charge and audit row found again."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select

from ai_services.models import DiagnosticReport
from billing.models import ChargeItem
from hospital.audit import verify_chain
from hospital.backup import BackupError, BackupIntegrityError, RestoreRefused, backup, restore
from hospital.db import get_db
from hospital.migrate import upgrade
from hospital.models import AuditEvent
from hospital.seed import seed_demo
from imaging_orders.archive.models import ImagingInstance, ImagingStudy
from tests.conftest import login_api, make_test_app
from tests.hospital.inprocess_loop import run_loop_in_process


def embedded_app(root: Path, migrate: bool = True) -> Flask:
    url = f"sqlite:///{root / 'hospital.db'}"
    root.mkdir(parents=True, exist_ok=True)
    if migrate:
        upgrade(url)
    return make_test_app(url, root, DICOM_STORAGE_DIR=root / "dicom", AI_MODELS_DIR=root / "models")


def seeded_embedded_app(root: Path) -> Flask:
    app = embedded_app(root)
    with app.app_context(), get_db(app).transaction() as session:
        seed_demo(session, app)
    (root / "dicom" / "1.2.3").mkdir(parents=True)
    (root / "dicom" / "1.2.3" / "a.dcm").write_bytes(b"DICM" * 100)
    (root / "dicom" / "1.2.3" / ".incoming-x.tmp").write_bytes(b"half written")
    (root / "models").mkdir(parents=True)
    (root / "models" / "candidate.pt").write_bytes(b"weights")
    return app


def counts(app: Flask) -> dict[str, int]:
    with app.app_context(), get_db(app).session() as session:
        return {"audit": session.scalar(select(func.count()).select_from(AuditEvent)) or 0,
                "studies": session.scalar(select(func.count()).select_from(ImagingStudy)) or 0}


def test_backup_and_restore_the_embedded_default(tmp_path: Path) -> None:
    source = seeded_embedded_app(tmp_path / "a")
    with source.app_context():
        manifest = backup(source, tmp_path / "backup")
    assert manifest["schema_revision"] and manifest["database"]["kind"] == "sqlite"
    assert set(manifest["files"]) == {"database.sqlite3", "dicom/1.2.3/a.dcm", "models/candidate.pt"}
    on_disk = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert on_disk["files"]["dicom/1.2.3/a.dcm"]["sha256"] == hashlib.sha256(b"DICM" * 100).hexdigest()

    target = embedded_app(tmp_path / "b", migrate=False)
    with target.app_context():
        result = restore(target, tmp_path / "backup")
    assert result.audit.broken is None
    assert (tmp_path / "b" / "dicom" / "1.2.3" / "a.dcm").read_bytes() == b"DICM" * 100
    assert (tmp_path / "b" / "models" / "candidate.pt").read_bytes() == b"weights"
    assert not (tmp_path / "b" / "dicom" / "1.2.3" / ".incoming-x.tmp").exists()
    # The restored trail: the source's rows, the backup's own record, and the restore's.
    assert counts(target)["audit"] == counts(source)["audit"] + 1
    with target.app_context(), get_db(target).session() as session:
        descriptions = list(session.scalars(select(AuditEvent.description).where(AuditEvent.entity_type == "Backup")))
    assert [d.split(" ")[0] for d in descriptions] == ["backup", "restored"]


def test_restore_refuses_a_non_empty_installation(tmp_path: Path) -> None:
    source = seeded_embedded_app(tmp_path / "a")
    with source.app_context():
        backup(source, tmp_path / "backup")
        with pytest.raises(RestoreRefused, match="not empty"):
            restore(source, tmp_path / "backup")
    # Empty database but files in the DICOM store: refused too.
    target = embedded_app(tmp_path / "b", migrate=False)
    (tmp_path / "b" / "dicom").mkdir(parents=True)
    (tmp_path / "b" / "dicom" / "left-over.dcm").write_bytes(b"x")
    with target.app_context(), pytest.raises(RestoreRefused, match="DICOM_STORAGE_DIR"):
        restore(target, tmp_path / "backup")


def test_restore_refuses_a_backup_that_does_not_match_its_manifest(tmp_path: Path) -> None:
    source = seeded_embedded_app(tmp_path / "a")
    with source.app_context():
        backup(source, tmp_path / "backup")
    (tmp_path / "backup" / "dicom" / "1.2.3" / "a.dcm").write_bytes(b"DICM" * 99 + b"EVIL")
    target = embedded_app(tmp_path / "b", migrate=False)
    with target.app_context(), pytest.raises(BackupIntegrityError, match="a.dcm: sha256"):
        restore(target, tmp_path / "backup")
    assert not (tmp_path / "b" / "dicom").exists(), "nothing is restored from a backup that fails its check"
    (tmp_path / "backup" / "manifest.json").unlink()
    with target.app_context(), pytest.raises(BackupIntegrityError, match="no manifest.json"):
        restore(target, tmp_path / "backup")


def test_backup_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    source = seeded_embedded_app(tmp_path / "a")
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "old").write_text("x")
    with source.app_context(), pytest.raises(BackupError, match="not empty"):
        backup(source, tmp_path / "backup")


def test_backup_and_restore_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hospital.cli import cli

    seeded_embedded_app(tmp_path / "a")
    runner = CliRunner()

    def run(root: Path, *args: str) -> Any:
        monkeypatch.setenv("HOSPITAL_INSTANCE_DIR", str(root))
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{root / 'hospital.db'}")
        monkeypatch.setenv("DICOM_STORAGE_DIR", str(root / "dicom"))
        monkeypatch.setenv("AI_MODELS_DIR", str(root / "models"))
        monkeypatch.setenv("SECRET_KEY", "test-secret")
        monkeypatch.delenv("REDIS_URL", raising=False)
        return runner.invoke(cli, list(args), catch_exceptions=False)

    made = run(tmp_path / "a", "backup", str(tmp_path / "backup"))
    assert made.exit_code == 0, made.output
    assert "3 files" in made.output
    (tmp_path / "b").mkdir()
    restored = run(tmp_path / "b", "restore", str(tmp_path / "backup"))
    assert restored.exit_code == 0, restored.output
    assert "audit chain intact" in restored.output
    again = run(tmp_path / "b", "restore", str(tmp_path / "backup"))
    assert again.exit_code == 1 and "not empty" in again.output


# --- the drill ---------------------------------------------------------------------------------

def test_drill_backup_under_load_restores_every_acknowledged_record(
    live_database: str, empty_postgres_url: str, tmp_path: Path
) -> None:
    app = make_test_app(live_database, tmp_path / "live", DICOM_STORAGE_DIR=tmp_path / "live" / "dicom",
                        AI_MODELS_DIR=tmp_path / "live" / "models", STUDY_QUIET_SECONDS=3)
    summary, _mrn, _name = run_loop_in_process(app, tmp_path / "work")
    assert summary.report_status == "final" and len(summary.charges) == 4

    with app.app_context(), get_db(app).session() as session:
        acknowledged = {
            "studies": set(session.scalars(select(ImagingStudy.id))),
            "instances": {(i.path, i.sha256) for i in session.scalars(select(ImagingInstance))},
            "reports": set(session.scalars(select(DiagnosticReport.id))),
            "charges": set(session.scalars(select(ChargeItem.id))),
            "audit": set(session.scalars(select(AuditEvent.id))),
        }
        patient_id = session.get(ImagingStudy, summary.study_id).patient_id  # type: ignore[union-attr]
    assert acknowledged["instances"] and acknowledged["charges"]

    # Writes go on while the backup runs: an administrator reading records (audit rows) and the
    # clinician's referrals, each acknowledged by its answer.
    stop = threading.Event()
    written: list[int] = []

    def keep_writing() -> None:
        with app.app_context():
            client = app.test_client()
            admin = login_api(client, "admin")
            while not stop.is_set():
                response = admin.get(f"/fhir/Patient/{patient_id}")
                assert response.status_code == 200
                written.append(1)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        with app.app_context():
            manifest = backup(app, tmp_path / "backup")
    finally:
        stop.set()
        writer.join(timeout=30)
    assert written, "no write ran during the backup"
    assert manifest["database"]["kind"] == "postgresql"

    restored = make_test_app(empty_postgres_url, tmp_path / "restored", DICOM_STORAGE_DIR=tmp_path / "restored" / "dicom",
                             AI_MODELS_DIR=tmp_path / "restored" / "models")
    with restored.app_context():
        result = restore(restored, tmp_path / "backup")
        assert result.audit.broken is None
        with get_db(restored).session() as session:
            assert acknowledged["studies"] <= set(session.scalars(select(ImagingStudy.id)))
            assert acknowledged["reports"] <= set(session.scalars(select(DiagnosticReport.id)))
            assert acknowledged["charges"] <= set(session.scalars(select(ChargeItem.id)))
            assert acknowledged["audit"] <= set(session.scalars(select(AuditEvent.id)))
            report = verify_chain(session)
            assert report.broken is None and report.rows >= len(acknowledged["audit"]) + 2
        storage = tmp_path / "restored" / "dicom"
        for path, sha256 in acknowledged["instances"]:
            assert hashlib.sha256((storage / path).read_bytes()).hexdigest() == sha256, path
        # The restored installation works: the signed report is served from it.
        client = restored.test_client()
        radiologist = login_api(client, "radiologist")
        answer = radiologist.get(f"/fhir/DiagnosticReport/{summary.report_id}")
        assert answer.status_code == 200 and answer.get_json()["status"] == "final"
    get_db(restored).engine.dispose()
