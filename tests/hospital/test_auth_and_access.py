"""Authentication and patient-compartment authorisation across the API and FHIR."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from hospital.auth import MAX_FAILED_LOGINS, SIGN_IN_FAILED
from hospital.clock import utcnow
from hospital.models import ApiToken, AuditEvent, User
from hospital.seed import DEMO_PASSWORD, DemoSeed
from imaging_orders.archive.models import ImagingStudy
from tests.conftest import make_test_app


def test_request_without_token_gets_401_in_the_callers_format(client: FlaskClient, demo: DemoSeed) -> None:
    fhir = client.get(f"/fhir/Patient/{demo.patient.id}")
    assert fhir.status_code == 401
    assert fhir.mimetype == "application/fhir+json"
    assert fhir.get_json()["resourceType"] == "OperationOutcome"
    assert fhir.get_json()["issue"][0]["code"] == "login"

    api = client.get("/api/referrals")
    assert api.status_code == 401
    assert api.mimetype == "application/problem+json"

    page = client.get("/worklist")
    assert page.status_code == 302 and "/login" in page.headers["Location"]


def test_invalid_or_revoked_token_is_refused(client: FlaskClient, demo: DemoSeed) -> None:
    assert client.get("/api/me", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    token = client.post("/api/auth/token", json={"username": "patient", "password": DEMO_PASSWORD}).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/me", headers=headers).get_json()["role"] == "patient"
    assert client.post("/api/auth/revoke", headers=headers).status_code == 204
    assert client.get("/api/me", headers=headers).status_code == 401


def test_patient_cannot_read_another_patients_resources(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    patient = as_role("patient")
    assert patient.get(f"/fhir/Patient/{demo.patient.id}").status_code == 200
    denied = patient.get(f"/fhir/Patient/{demo.other_patient.id}")
    assert denied.status_code == 403
    assert denied.get_json()["resourceType"] == "OperationOutcome"
    # A search cannot widen the compartment either: the other patient's record is simply absent.
    bundle = patient.get(f"/fhir/Patient?_id={demo.other_patient.id}").get_json()
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == 0
    denial = db_session.scalars(
        select(AuditEvent).where(AuditEvent.entity_type == "Patient", AuditEvent.outcome == 4)
    ).all()
    assert [(a.entity_id, a.user_id) for a in denial] == [(str(demo.other_patient.id), demo.users["patient"].id)]


def test_clinician_sees_only_patients_they_referred(as_role: Any, demo: DemoSeed) -> None:
    clinician = as_role("clinician")
    assert clinician.get(f"/fhir/Patient/{demo.patient.id}").status_code == 403
    created = clinician.post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "reason": "cough", "access_reason": "new patient referred to me",
    })
    assert created.status_code == 201
    assert clinician.get(f"/fhir/Patient/{demo.patient.id}").status_code == 200
    assert clinician.get(f"/fhir/Patient/{demo.other_patient.id}").status_code == 403


def test_every_patient_read_is_audited(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    as_role("patient").get(f"/fhir/Patient/{demo.patient.id}")
    reads = db_session.scalars(
        select(AuditEvent).where(AuditEvent.action == "R", AuditEvent.patient_id == demo.patient.id)
    ).all()
    assert len(reads) == 1
    assert reads[0].user_id == demo.users["patient"].id and reads[0].source == "fhir" and reads[0].outcome == 0


def test_account_locks_after_repeated_failures(client: FlaskClient, demo: DemoSeed, db_session: Session) -> None:
    for _ in range(MAX_FAILED_LOGINS):
        assert client.post("/api/auth/token", json={"username": "admin", "password": "wrong"}).status_code == 401
    locked = client.post("/api/auth/token", json={"username": "admin", "password": DEMO_PASSWORD})
    assert locked.status_code == 401
    assert locked.get_json()["detail"] == SIGN_IN_FAILED  # the same answer as for an unknown user
    db_session.expire_all()
    user = db_session.scalar(select(User).where(User.username == "admin"))
    assert user is not None and user.failed_logins == MAX_FAILED_LOGINS


def test_malformed_json_body_is_a_400_problem(as_role: Any, demo: DemoSeed) -> None:
    response = as_role("clinician").post("/api/referrals", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["detail"] == "the request body must be a JSON object"


def test_unknown_fhir_type_is_404_operation_outcome(as_role: Any, demo: DemoSeed) -> None:
    response = as_role("admin").get("/fhir/Spaceship/1")
    assert response.status_code == 404
    assert response.get_json()["issue"][0]["code"] == "not-found"


def test_unknown_search_parameter_is_400(as_role: Any, demo: DemoSeed) -> None:
    response = as_role("admin").get("/fhir/Patient?colour=blue")
    assert response.status_code == 400
    assert "colour" in response.get_json()["issue"][0]["diagnostics"]


def test_cookie_form_post_without_csrf_token_is_refused(client: FlaskClient, demo: DemoSeed) -> None:
    assert client.post("/login", data={"username": "clinician", "password": DEMO_PASSWORD}).status_code == 403
    page = client.get("/login")
    token = page.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    signed_in = client.post("/login", data={"username": "clinician", "password": DEMO_PASSWORD, "csrf_token": token})
    assert signed_in.status_code == 302
    assert client.get("/referrals").status_code == 200


def test_unmatched_study_is_readable_only_by_centre_staff(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    study = ImagingStudy(study_instance_uid="1.2.3.999", dicom_patient_id="SOMEONE-ELSE", dicom_patient_name="Doe^Jane")
    db_session.add(study)
    db_session.commit()
    for username in ("patient2", "clinician", "pharmacist"):
        assert as_role(username).get(f"/fhir/ImagingStudy/{study.id}").status_code == 403, username
        assert as_role(username).get(f"/api/studies/{study.id}").status_code == 403, username
    assert as_role("imaging_staff").get(f"/fhir/ImagingStudy/{study.id}").status_code == 200
    assert as_role("imaging_staff").get(f"/api/studies/{study.id}").status_code == 200


def test_login_attempts_are_rate_limited_per_address(database_url: str, tmp_path: Any, db_session: Session) -> None:
    limited = make_test_app(database_url, tmp_path, LOGIN_ATTEMPTS_PER_MINUTE=3)
    client = limited.test_client()
    codes = [client.post("/api/auth/token", json={"username": "nobody", "password": "x"}).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    throttled = client.post("/api/auth/token", json={"username": "nobody", "password": "x"})
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0


def test_tokens_are_stored_hashed_and_expire(client: FlaskClient, demo: DemoSeed, db_session: Session) -> None:
    token = client.post("/api/auth/token", json={"username": "patient", "password": DEMO_PASSWORD}).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    stored = db_session.scalars(select(ApiToken).where(ApiToken.user_id == demo.users["patient"].id)).all()
    assert stored and all(token not in (row.token_sha256 or "") for row in stored), "the plain token is kept"
    assert any(row.token_sha256 == hashlib.sha256(token.encode()).hexdigest() for row in stored)
    assert client.get("/api/me", headers=headers).status_code == 200
    for row in stored:
        row.expires_at = utcnow() - timedelta(seconds=1)
    db_session.commit()
    assert client.get("/api/me", headers=headers).status_code == 401


def test_audit_trail_is_append_only_in_the_database(db_session: Session, demo: DemoSeed) -> None:
    event = AuditEvent(action="R", entity_type="Patient", entity_id=str(demo.patient.id), patient_id=demo.patient.id)
    db_session.add(event)
    db_session.flush()
    record_id = event.id
    for statement in (update(AuditEvent).where(AuditEvent.id == record_id).values(outcome=0),
                      delete(AuditEvent).where(AuditEvent.id == record_id)):
        nested = db_session.begin_nested()
        with pytest.raises(DBAPIError, match="append-only"):
            db_session.execute(statement)
        nested.rollback()
