"""The whole closed loop, end to end, on real parts: `hospital dicom` and `hospital worker` run as
their own processes, images travel over real DICOM associations (dcmtk's storescu and
pynetdicom), jobs go through a real RQ queue on Redis into PostgreSQL; and once more on the
embedded default (SQLite, inline jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from pydicom.uid import Comprehensive3DSRStorage, CTImageStorage
from sqlalchemy import func, select

from ai_services.models import DiagnosticReport, Finding
from billing.models import ChargeItem, Invoice
from demo.closed_loop import LoopSummary, dicom_server_process, free_port, run_closed_loop, send_with_pynetdicom
from followup.models import Consultation, FollowUpTask
from hospital.db import get_db
from hospital.migrate import upgrade
from hospital.models import AuditEvent, JobRecord, JobStatus
from hospital.seed import seed_demo
from imaging_orders.archive.models import ImagingInstance, ImagingStudy
from tests.conftest import make_test_app

pytestmark = pytest.mark.e2e

AE_TITLE = "HOSPITAL"
# Riverside's own CT tariff + AI analysis + virtual consultation + one pack of amoxicillin (EUR cents).
EXPECTED_TOTAL_MINOR = 15000 + 2500 + 6000 + 850


def storescu_sender(port: int) -> Callable[[list[Path]], None]:
    def send(files: list[Path]) -> None:
        result = subprocess.run(
            ["storescu", "-aet", "CT1", "-aec", AE_TITLE, "127.0.0.1", str(port), *map(str, files)],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    return send


def pynetdicom_sender(port: int) -> Callable[[list[Path]], None]:
    return lambda files: send_with_pynetdicom("127.0.0.1", port, AE_TITLE, files)


def run_loop(app: Flask, env: dict[str, str], tmp_path: Path, sender: str, drain: Callable[[], None]) -> LoopSummary:
    with get_db(app).transaction() as session:
        seed = seed_demo(session, app)
        ids = (seed.imaging_centre.id, seed.patient.id, seed.pharmacy.id, seed.patient.mrn, seed.patient.dicom_name)
    port = free_port()
    send = storescu_sender(port) if sender == "storescu" else pynetdicom_sender(port)
    with dicom_server_process(env, port, AE_TITLE), app.app_context():
        return run_closed_loop(
            app.test_client(), send_study=send, drain_jobs=drain, work_dir=tmp_path,
            imaging_centre_id=ids[0], patient_id=ids[1], pharmacy_id=ids[2], patient_mrn=ids[3],
            patient_dicom_name=ids[4], timeout=120,
        )


def assert_loop_closed(app: Flask, summary: LoopSummary) -> None:
    assert summary.report_status == "final"
    assert summary.findings, "the AI flagged nothing on a phantom with three lesions"
    assert summary.invoice_total_minor == EXPECTED_TOTAL_MINOR
    assert summary.invoice_status == "balanced"
    assert summary.currency == "EUR"
    assert sorted(c["service_line"] for c in summary.charges) == ["ai-analysis", "consultation", "medication", "scan"]
    with get_db(app).session() as session:
        study = session.get(ImagingStudy, summary.study_id)
        assert study is not None and study.referral_id == summary.referral_id
        ct_instances = select(func.count()).select_from(ImagingInstance).where(ImagingInstance.sop_class_uid == CTImageStorage)
        assert session.scalar(ct_instances) == summary.instances_sent
        # The AI's DICOM outputs went back into the study: a TID 1500 SR and key-image captures.
        outputs = set(session.scalars(select(ImagingInstance.sop_class_uid).where(ImagingInstance.sop_class_uid != CTImageStorage)))
        assert Comprehensive3DSRStorage in outputs and len(outputs) == 2
        assert session.scalar(select(func.count()).select_from(DiagnosticReport)) == 1
        assert session.scalar(select(func.count()).select_from(Finding)) == len(summary.findings)
        assert session.scalar(select(func.count()).select_from(Consultation)) == 1
        assert session.scalar(select(func.count()).select_from(FollowUpTask)) >= 1
        assert session.scalar(select(func.count()).select_from(ChargeItem)) == 4
        invoice = session.get(Invoice, summary.invoice_id)
        assert invoice is not None and invoice.total_minor == sum(i.total_minor for i in invoice.items)
        assert [(p.amount_minor, p.payer.value) for p in invoice.payments] == [(EXPECTED_TOTAL_MINOR, "patient")]
        statuses = set(session.scalars(select(JobRecord.status)))
        assert statuses == {JobStatus.DONE}, statuses
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.patient_id.is_not(None))) > 0


@pytest.mark.parametrize("sender", ["storescu", "pynetdicom"])
def test_closed_loop_on_postgres_with_rq_workers(
    sender: str, live_database: str, redis_url: str, tmp_path: Path
) -> None:
    storage = tmp_path / "dicom"
    app = make_test_app(live_database, tmp_path, REDIS_URL=redis_url, DICOM_STORAGE_DIR=storage)
    env = {**os.environ, "DATABASE_URL": live_database, "REDIS_URL": redis_url, "DICOM_STORAGE_DIR": str(storage),
           "STUDY_QUIET_SECONDS": "1", "SECRET_KEY": "test-secret", "HOSPITAL_INSTANCE_DIR": str(tmp_path)}

    def drain() -> None:
        result = subprocess.run([sys.executable, "-m", "hospital.cli", "worker", "--burst"], env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]

    summary = run_loop(app, env, tmp_path, sender, drain)
    assert_loop_closed(app, summary)


def test_closed_loop_on_embedded_sqlite_with_inline_jobs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hospital.db'}"
    upgrade(url)
    storage = tmp_path / "dicom"
    app = make_test_app(url, tmp_path, REDIS_URL=None, DICOM_STORAGE_DIR=storage)
    env = {**os.environ, "DATABASE_URL": url, "DICOM_STORAGE_DIR": str(storage), "STUDY_QUIET_SECONDS": "1",
           "SECRET_KEY": "test-secret", "HOSPITAL_INSTANCE_DIR": str(tmp_path)}
    env.pop("REDIS_URL", None)
    summary = run_loop(app, env, tmp_path, "pynetdicom", lambda: None)
    assert_loop_closed(app, summary)
