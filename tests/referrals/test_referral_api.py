"""Creating, reading and cancelling referrals through the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from referrals.models import Referral


def referral_body(demo: DemoSeed, **overrides: Any) -> dict[str, Any]:
    body = {"patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "ct",
            "body_part": "chest", "reason": "Haemoptysis", "priority": "urgent",
            "access_reason": "new patient of the practice"}
    body.update(overrides)
    return body


def test_clinician_creates_a_referral(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    response = as_role("clinician").post("/api/referrals", json=referral_body(demo))
    assert response.status_code == 201
    data = response.get_json()
    assert (data["status"], data["modality"], data["body_part"], data["priority"]) == ("active", "CT", "CHEST", "urgent")
    assert response.headers["Location"].endswith(f"/api/referrals/{data['id']}")
    audit = db_session.scalar(select(AuditEvent).where(AuditEvent.entity_type == "ServiceRequest", AuditEvent.action == "C"))
    assert audit is not None and audit.patient_id == demo.patient.id


def test_referral_without_a_patient_is_refused_and_nothing_is_written(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    clinician = as_role("clinician")
    missing = clinician.post("/api/referrals", json=referral_body(demo, patient_id=None))
    assert missing.status_code == 400 and missing.get_json()["detail"] == "patient_id is required"
    unknown = clinician.post("/api/referrals", json=referral_body(demo, patient_id=999_999))
    assert unknown.status_code == 400 and "does not exist" in unknown.get_json()["detail"]
    wrong_type = clinician.post("/api/referrals", json=referral_body(demo, patient_id="1"))
    assert wrong_type.status_code == 400
    bad_modality = clinician.post("/api/referrals", json=referral_body(demo, modality="XYZ"))
    assert bad_modality.status_code == 400
    assert db_session.scalar(select(func.count()).select_from(Referral)) == 0


def test_only_clinicians_create_referrals(as_role: Any, demo: DemoSeed) -> None:
    response = as_role("patient").post("/api/referrals", json=referral_body(demo))
    assert response.status_code == 403


def test_clinician_cancels_own_open_referral(as_role: Any, demo: DemoSeed) -> None:
    clinician = as_role("clinician")
    referral = clinician.post("/api/referrals", json=referral_body(demo)).get_json()
    cancelled = clinician.post(f"/api/referrals/{referral['id']}/cancel", json={"reason": "resolved"})
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    again = clinician.post(f"/api/referrals/{referral['id']}/cancel", json={"reason": "resolved"})
    assert again.status_code == 409


def test_other_patient_cannot_read_the_referral(as_role: Any, demo: DemoSeed) -> None:
    referral = as_role("clinician").post("/api/referrals", json=referral_body(demo)).get_json()
    assert as_role("patient").get(f"/api/referrals/{referral['id']}").status_code == 200
    assert as_role("patient2").get(f"/api/referrals/{referral['id']}").status_code == 403
