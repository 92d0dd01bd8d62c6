"""Issue 13: a care relationship started for a patient not yet in one's care, and emergency access,
are visible to the patient (page and `GET /api/me/record-access`), only to that patient."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.models import EmergencyAccess
from hospital.seed import DemoSeed
from tests.security.care_world import make_care_world


def test_a_patient_sees_who_opened_their_record_and_nobody_else_does(
    as_role: Any, db_session: Session, demo: DemoSeed
) -> None:
    make_care_world(db_session, demo)
    demo.patient.timezone = "Europe/Berlin"
    db_session.commit()
    clinician, radiologist, patient = as_role("clinician"), as_role("radiologist"), as_role("patient")
    referral = clinician.post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "reason": "cough", "access_reason": "took over care from Dr Grace"})
    assert referral.status_code == 201, referral.get_data(as_text=True)
    grant = radiologist.post("/api/emergency-access", json={
        "patient_id": demo.patient.id, "reason": "unconscious in the emergency department"})
    assert grant.status_code == 201, grant.get_data(as_text=True)

    openings = patient.get("/api/me/record-access")
    assert openings.status_code == 200
    body = openings.get_json()
    assert [o["kind"] for o in body] == ["emergency access", "care relationship"]  # newest first
    emergency, care = body
    clinician_user, radiologist_user = demo.users["clinician"], demo.users["radiologist"]
    assert care["reason"] == "took over care from Dr Grace"
    assert care["by"] == clinician_user.practitioner.display_name
    assert care["organisation"] == clinician_user.organization.name
    assert emergency["reason"] == "unconscious in the emergency department"
    assert emergency["by"] == radiologist_user.practitioner.display_name and emergency["until"]

    page = patient.get("/my-record-access")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "took over care from Dr Grace" in html and "unconscious in the emergency department" in html
    started = db_session.scalar(select(EmergencyAccess.started_at).where(EmergencyAccess.patient_id == demo.patient.id))
    assert started is not None
    assert started.astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M") in html  # the patient's own clock
    assert "Who opened my record" in patient.get("/").get_data(as_text=True)

    # Another patient sees none of it, and staff see nothing here at all.
    other = as_role("patient2")
    assert other.get("/api/me/record-access").get_json() == []
    assert "took over care" not in other.get("/my-record-access").get_data(as_text=True)
    for role in ("clinician", "radiologist", "imaging_staff", "pharmacist", "admin"):
        assert as_role(role).get("/api/me/record-access").status_code == 403, role
        assert as_role(role).get("/my-record-access").status_code == 403, role
