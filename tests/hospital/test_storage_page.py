"""The administrator's Storage page: volumes, disk usage per centre, retention rules (asked before
they shorten), legal holds placed and released, and a preview run that deletes nothing."""

from __future__ import annotations

from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.clock import utcnow
from hospital.models import AuditEvent, JobRecord, JobStatus, LegalHold, RetentionRule
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def test_storage_page_shows_volumes_and_usage_per_centre(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    study = ImagingStudy(study_instance_uid="1.2.826.0.9.1", organization_id=demo.imaging_centre.id)
    db_session.add(study)
    db_session.flush()
    series = ImagingSeries(study_id=study.id, series_instance_uid="1.2.826.0.9.1.1", modality="CT")
    db_session.add(series)
    db_session.flush()
    db_session.add(ImagingInstance(series_id=series.id, sop_instance_uid="1.2.826.0.9.1.1.1", sop_class_uid="1.2",
                                   transfer_syntax_uid="1.2.840.10008.1.2.1", path="x.dcm", size_bytes=3_000_000,
                                   sha256="0" * 64))
    db_session.flush()
    sign_in(client, "admin")
    page = client.get("/admin/storage").get_data(as_text=True)
    assert 'href="/admin/storage"' in page  # the nav link
    assert 'data-volume="dicom"' in page and 'data-volume="models"' in page
    row = page.split(f'data-organization-id="{demo.imaging_centre.id}"')[1].split("</tr>")[0]
    assert demo.imaging_centre.name in row and 'data-bytes="3000000"' in row and "3.0 MB" in row


def test_rules_ask_before_they_shorten_and_holds_are_placed_and_released(
        client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    sign_in(client, "admin")
    token = csrf_token_of(client.get("/admin/storage").get_data(as_text=True))
    rule = {"csrf_token": token, "action": "rule", "data_class": "job_records", "keep_days": "30"}
    asked = client.post("/admin/storage", data=rule)
    assert "Keep job_records for 30 days?" in asked.get_data(as_text=True)
    assert db_session.scalar(select(RetentionRule)) is None  # nothing until agreed
    done = client.post("/admin/storage", data={**rule, "confirmed": "yes"}, follow_redirects=True)
    assert "job_records is kept 30 days." in done.get_data(as_text=True)
    assert db_session.scalar(select(RetentionRule.keep_days)) == 30
    longer = client.post("/admin/storage", data={**rule, "keep_days": "90"}, follow_redirects=True)
    assert "job_records is kept 90 days." in longer.get_data(as_text=True)  # longer: no question
    bad = client.post("/admin/storage", data={**rule, "keep_days": "ten"})
    assert bad.status_code == 422 and "whole number of days" in bad.get_data(as_text=True)

    db_session.add(JobRecord(handler="x.y", payload={}, status=JobStatus.DONE, finished_at=utcnow() - timedelta(days=400)))
    db_session.flush()
    preview = client.get("/admin/storage?preview=1").get_data(as_text=True)
    assert '<li data-class="job_records"><strong>job_records</strong>' in preview and "1 to delete" in preview
    assert db_session.scalar(select(JobRecord.id).where(JobRecord.handler == "x.y")) is not None

    hold = {"csrf_token": token, "action": "hold", "mrn": demo.patient.mrn, "reason": "litigation 2026-114"}
    placed = client.post("/admin/storage", data=hold, follow_redirects=True).get_data(as_text=True)
    held = db_session.scalars(select(LegalHold)).one()
    assert held.patient_id == demo.patient.id and f'data-hold-id="{held.id}"' in placed
    unknown = client.post("/admin/storage", data={**hold, "mrn": "NO-SUCH-MRN"})
    assert unknown.status_code == 422 and "no patient has the MRN" in unknown.get_data(as_text=True)
    release = {"csrf_token": token, "action": "release", "hold_id": str(held.id)}
    assert "Release legal hold" in client.post("/admin/storage", data=release).get_data(as_text=True)
    db_session.refresh(held)
    assert held.released_at is None
    client.post("/admin/storage", data={**release, "confirmed": "yes"}, follow_redirects=True)
    db_session.refresh(held)
    assert held.released_at is not None
    audited = db_session.scalars(select(AuditEvent.entity_type).where(
        AuditEvent.entity_type.in_(("RetentionRule", "LegalHold")))).all()
    assert sorted(audited) == ["LegalHold", "LegalHold", "RetentionRule", "RetentionRule"]


def test_only_an_admin_opens_the_storage_page(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    assert client.get("/admin/storage").status_code == 403
