"""Emergency access, "break the glass" (issue 13): a clinician with no care relationship opens a
patient's record by giving a reason; the grant ends by itself, is audited, alerts every active
administrator once, and waits on the admin review page until an administrator reviews it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital import notifications
from hospital.clock import utcnow
from hospital.emergency import EMERGENCY_ACCESS, alert_administrators
from hospital.models import AuditEvent, EmergencyAccess, Notification, Role, User
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingStudy
from tests.ai_services.test_report_pages import store_slices
from tests.referrals.test_referral_pages import csrf_token_of, sign_in
from tests.security.care_world import CareWorld, make_care_world
from tests.smtp import Mailbox, mail_through, smtp_server

__all__ = ["mail_through", "smtp_server"]  # fixtures, used by name

REASON = "unconscious in the emergency department, no referring clinician reachable"


ADMIN_MAIL = "admin@hospital.example.org"


@pytest.fixture()
def alerts(db_session: Session, demo: DemoSeed, smtp_server: Mailbox, mail_through: Any) -> Mailbox:
    """The administrators' alerts as they arrive at a real SMTP server: the demo administrator has
    an address on their account."""
    demo.users["admin"].email = ADMIN_MAIL
    db_session.commit()
    mail_through(smtp_server.port)
    return smtp_server


@pytest.fixture()
def world(db_session: Session, demo: DemoSeed) -> CareWorld:
    made = make_care_world(db_session, demo)
    db_session.commit()
    return made


def _grants(db_session: Session) -> list[EmergencyAccess]:
    return list(db_session.scalars(select(EmergencyAccess).order_by(EmergencyAccess.id)))


def test_without_a_grant_a_clinician_is_refused(as_role: Any, world: CareWorld, demo: DemoSeed) -> None:
    clinician = as_role("clinician")
    assert clinician.get(f"/fhir/Patient/{demo.patient.id}").status_code == 403
    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403
    assert clinician.get(f"/api/reports/{world.report.id}").status_code == 403


def test_a_reason_opens_the_record_everywhere_and_is_audited(
    as_role: Any, db_session: Session, world: CareWorld, demo: DemoSeed, alerts: Mailbox
) -> None:
    clinician = as_role("clinician")
    granted = clinician.post("/api/emergency-access", json={"patient_id": demo.patient.id, "reason": REASON})
    assert granted.status_code == 201, granted.get_data(as_text=True)
    body = granted.get_json()
    assert body["patient_id"] == demo.patient.id and body["reason"] == REASON and body["expires_at"]

    assert clinician.get(f"/fhir/Patient/{demo.patient.id}").status_code == 200
    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 200
    assert clinician.get(f"/api/reports/{world.report.id}").status_code == 200
    searched = clinician.get(f"/fhir/DiagnosticReport?patient={demo.patient.id}").get_json()
    assert {e["resource"]["id"] for e in searched.get("entry", [])} == {str(world.report.id)}

    audited = db_session.scalar(select(AuditEvent).where(AuditEvent.entity_type == "EmergencyAccess"))
    assert audited is not None and audited.user_id == demo.users["clinician"].id
    assert audited.patient_id == demo.patient.id and audited.action == "C"
    assert audited.description == f"{EMERGENCY_ACCESS}: {REASON}"
    read = db_session.scalar(select(AuditEvent).where(
        AuditEvent.entity_type == "DiagnosticReport", AuditEvent.entity_id == str(world.report.id),
        AuditEvent.user_id == demo.users["clinician"].id, AuditEvent.action == "R", AuditEvent.outcome == 0))
    assert read is not None and read.patient_id == demo.patient.id
    # The grant is the clinician's own: it opens nothing to anyone else.
    assert as_role("far_staff").get(f"/fhir/Patient/{demo.patient.id}").status_code == 403
    assert as_role("pharmacist").post("/api/emergency-access", json={
        "patient_id": demo.patient.id, "reason": REASON}).status_code == 403


@pytest.mark.parametrize("reason", ["", "   ", "urgent", None])
def test_a_missing_or_too_short_reason_is_refused(
    as_role: Any, db_session: Session, world: CareWorld, demo: DemoSeed, reason: str | None
) -> None:
    clinician = as_role("clinician")
    refused = clinician.post("/api/emergency-access", json={"patient_id": demo.patient.id, "reason": reason})
    assert refused.status_code == 400
    assert refused.mimetype == "application/problem+json" and "reason" in refused.get_json()["detail"]
    assert _grants(db_session) == []
    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403


def test_an_unknown_patient_is_refused_and_the_attempt_audited(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    refused = as_role("clinician").post("/api/emergency-access", json={"patient_id": 999_999, "reason": REASON})
    assert refused.status_code == 404
    assert _grants(db_session) == []
    denial = db_session.scalar(select(AuditEvent).where(AuditEvent.entity_type == "EmergencyAccess"))
    assert denial is not None and denial.outcome == 4 and denial.user_id == demo.users["clinician"].id


def test_the_grant_ends_by_itself(
    app: Flask, as_role: Any, db_session: Session, world: CareWorld, demo: DemoSeed
) -> None:
    clinician = as_role("clinician")
    assert clinician.post("/api/emergency-access", json={
        "patient_id": demo.patient.id, "reason": REASON}).status_code == 201
    (grant,) = _grants(db_session)
    assert grant.expires_at - grant.started_at == timedelta(minutes=app.config["EMERGENCY_ACCESS_MINUTES"])
    assert app.config["EMERGENCY_ACCESS_MINUTES"] == 60
    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 200

    grant.started_at, grant.expires_at = utcnow() - timedelta(minutes=61), utcnow() - timedelta(minutes=1)
    db_session.commit()
    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403
    assert clinician.get(f"/fhir/Patient/{demo.patient.id}").status_code == 403
    assert clinician.get(f"/api/reports/{world.report.id}").status_code == 403


def test_administrators_are_alerted_once_per_grant(
    app: Flask, as_role: Any, db_session: Session, world: CareWorld, demo: DemoSeed, alerts: Mailbox
) -> None:
    admin = demo.users["admin"]
    second = User(username="admin2", role=Role.ADMIN, password_hash=admin.password_hash, locale="zh_CN",
                  timezone="Asia/Shanghai", email="admin2@hospital.example.org")
    retired = User(username="admin_retired", role=Role.ADMIN, password_hash=admin.password_hash, active=False)
    db_session.add_all([second, retired])
    db_session.commit()
    clinician = as_role("clinician")
    payload = {"patient_id": demo.patient.id, "reason": REASON}
    assert clinician.post("/api/emergency-access", json=payload).status_code == 201
    # One notification per active administrator, in the app; a mail to each with an address, in
    # their own language, naming who and until when on the reader's clock, and no patient nor reason.
    told = db_session.scalars(select(Notification).where(Notification.kind == "emergency_access_used")
                              .order_by(Notification.user_id)).all()
    assert [n.user_id for n in told] == [admin.id, second.id]
    [english] = alerts.to(ADMIN_MAIL)
    [chinese] = alerts.to("admin2@hospital.example.org")
    assert len(alerts.messages) == 2
    assert english["Subject"] == "Emergency access used" and chinese["Subject"] == "有人使用了紧急访问"
    assert "clinician used emergency access to open a patient's record, until " in english.get_content()
    assert "UTC. Please review it." in english.get_content()
    assert "clinician 使用紧急访问打开了一位患者的病历，有效期至 " in chinese.get_content()
    assert "CST。请进行审核。" in chinese.get_content()  # on their own clock (Asia/Shanghai)
    for mail in (english, chinese):  # no PHI
        assert REASON not in mail.get_content() and demo.patient.family_name not in mail.get_content()
        assert demo.patient.mrn not in mail.get_content()
    with app.test_request_context("/"):
        assert notifications.target_path(told[0]) == "/admin/emergency-access"

    # Asking again while the grant is active changes nothing: the same grant, no second alert.
    again = clinician.post("/api/emergency-access", json=payload)
    assert again.status_code == 200 and again.get_json()["id"] == _grants(db_session)[0].id
    assert len(alerts.messages) == 2 and len(_grants(db_session)) == 1
    assert _grants(db_session)[0].alerted_at is not None


def test_only_administrators_see_the_review_page(
    app: Flask, as_role: Any, client: FlaskClient, world: CareWorld, demo: DemoSeed
) -> None:
    as_role("clinician").post("/api/emergency-access", json={"patient_id": demo.patient.id, "reason": REASON})
    for role in ("clinician", "radiologist", "imaging_staff", "pharmacist", "patient"):
        assert as_role(role).get("/admin/emergency-access").status_code == 403
    sign_in(client, "clinician")
    assert client.get("/admin/emergency-access").status_code == 403
    admin = app.test_client()
    sign_in(admin, "admin")
    page = admin.get("/admin/emergency-access").get_data(as_text=True)
    assert REASON in page and demo.patient.mrn in page and "clinician" in page and "awaiting review" in page
    assert 'href="/admin/emergency-access"' in admin.get("/").get_data(as_text=True)  # in the admin nav


def test_reviewing_a_grant_records_who_and_when(
    client: FlaskClient, as_role: Any, db_session: Session, world: CareWorld, demo: DemoSeed
) -> None:
    as_role("clinician").post("/api/emergency-access", json={"patient_id": demo.patient.id, "reason": REASON})
    (grant,) = _grants(db_session)
    sign_in(client, "admin")
    page = client.get("/admin/emergency-access").get_data(as_text=True)
    token = csrf_token_of(page)
    empty = client.post("/admin/emergency-access", data={"grant_id": grant.id, "note": " ", "csrf_token": token})
    assert empty.status_code == 422 and "note" in empty.get_data(as_text=True)
    db_session.refresh(grant)
    assert grant.reviewed_at is None

    before = utcnow()
    done = client.post("/admin/emergency-access", data={
        "grant_id": grant.id, "note": "Confirmed with the ED rota: justified.", "csrf_token": token},
        follow_redirects=True)
    assert done.status_code == 200 and "Confirmed with the ED rota" in done.get_data(as_text=True)
    db_session.refresh(grant)
    assert grant.reviewed_by_user_id == demo.users["admin"].id
    assert grant.reviewed_at is not None and grant.reviewed_at >= before
    assert grant.review_note == "Confirmed with the ED rota: justified."
    reviewed = db_session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.entity_type == "EmergencyAccess", AuditEvent.action == "U", AuditEvent.entity_id == str(grant.id)))
    assert reviewed == 1
    # A review is kept: a second one is refused rather than overwriting the first.
    again = client.post("/admin/emergency-access", data={"grant_id": grant.id, "note": "changed my mind", "csrf_token": token})
    assert again.status_code == 422
    db_session.refresh(grant)
    assert grant.review_note == "Confirmed with the ED rota: justified."


def test_a_clinician_breaks_the_glass_from_the_page(
    client: FlaskClient, db_session: Session, world: CareWorld, demo: DemoSeed, alerts: Mailbox
) -> None:
    sign_in(client, "clinician")
    refused = client.get(f"/reports/{world.report.id}")
    assert refused.status_code == 403
    assert "/emergency-access" in refused.get_data(as_text=True)  # the refusal offers the way in
    form_page = client.get(f"/emergency-access?next=/reports/{world.report.id}")
    assert form_page.status_code == 200
    token = csrf_token_of(form_page.get_data(as_text=True))
    short = client.post("/emergency-access", data={"mrn": demo.patient.mrn, "reason": "now", "csrf_token": token,
                                                   "next": f"/reports/{world.report.id}"})
    assert short.status_code == 422 and _grants(db_session) == []
    opened = client.post("/emergency-access", data={"mrn": demo.patient.mrn, "reason": REASON, "csrf_token": token,
                                                    "next": f"/reports/{world.report.id}"})
    assert opened.status_code == 302 and opened.headers["Location"].endswith(f"/reports/{world.report.id}")
    assert client.get(f"/reports/{world.report.id}").status_code == 200
    assert len(alerts.messages) == 1


def test_a_radiologist_breaks_the_glass_for_dicomweb_too(
    app: Flask, as_role: Any, db_session: Session, world: CareWorld, demo: DemoSeed
) -> None:
    store_slices(db_session, app, demo, world.report)
    db_session.commit()
    study = db_session.get(ImagingStudy, world.report.study_id)
    assert study is not None
    radiologist = as_role("radiologist")  # of the demo centre; the patient was imaged at another
    urls = (f"/dicomweb/studies/{study.study_instance_uid}/metadata", f"/fhir/ImagingStudy/{study.id}",
            f"/fhir/DiagnosticReport/{world.report.id}")
    assert [radiologist.get(url).status_code for url in urls] == [403, 403, 403]
    assert radiologist.post("/api/emergency-access", json={
        "patient_id": demo.patient.id, "reason": REASON}).status_code == 201
    assert [radiologist.get(url).status_code for url in urls] == [200, 200, 200]
    # Imaging staff perform what was ordered from their centre: no glass to break.
    assert as_role("imaging_staff").post("/api/emergency-access", json={
        "patient_id": demo.patient.id, "reason": REASON}).status_code == 403


def test_the_alert_job_run_twice_alerts_once(
    as_role: Any, db_session: Session, world: CareWorld, demo: DemoSeed, alerts: Mailbox
) -> None:
    as_role("clinician").post("/api/emergency-access", json={"patient_id": demo.patient.id, "reason": REASON})
    (grant,) = _grants(db_session)
    assert len(alerts.messages) == 1
    alert_administrators(db_session, grant.id)  # a redelivered job (RQ retry, the sweeper)
    alert_administrators(db_session, 999_999)  # a grant that is gone: nothing, quietly
    assert len(alerts.messages) == 1
