"""Consultation, prescription and dispensing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import ReportStatus, ReviewStatus
from followup.models import Consultation, FollowUpTask
from followup.service import open_consultation
from hospital.models import JobRecord
from hospital.seed import DemoSeed
from tests.factories import make_preliminary_report


def signed_consultation(db_session: Session, demo: DemoSeed, box: tuple[int, int, int, int]) -> int:
    report = make_preliminary_report(db_session, demo, [box])
    report.findings[0].review_status = ReviewStatus.ACCEPTED
    report.status = ReportStatus.FINAL
    consultation = open_consultation(db_session, report.id)
    assert consultation is not None
    db_session.commit()
    return consultation.id


def test_large_confirmed_finding_makes_an_urgent_consultation_with_a_repeat_scan(db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 40, 40))  # 30 mm
    tasks = db_session.scalars(select(FollowUpTask).order_by(FollowUpTask.id)).all()
    assert [t.kind for t in tasks] == ["visit", "repeat-scan"]
    assert db_session.get(Consultation, consultation_id).priority == "urgent"


def test_prescribe_dispense_and_refuse_overdispense(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    clinician = as_role("clinician")
    body = {"medication_code": "J01CA04", "dosage_text": "500 mg tds", "quantity": 2, "refills": 1,
            "pharmacy_organization_id": demo.pharmacy.id}
    med = clinician.post(f"/api/consultations/{consultation_id}/prescriptions", json=body)
    assert med.status_code == 201
    med_id = med.get_json()["id"]
    pharmacist = as_role("pharmacist")
    assert [m["id"] for m in pharmacist.get("/api/dispense-queue").get_json()] == [med_id]
    assert pharmacist.post(f"/api/medication-requests/{med_id}/dispense", json={"quantity": 1}).status_code == 201
    assert pharmacist.post(f"/api/medication-requests/{med_id}/dispense", json={"quantity": 2}).status_code == 201
    over = pharmacist.post(f"/api/medication-requests/{med_id}/dispense", json={"quantity": 2})
    assert over.status_code == 400 and "1..1" in over.get_json()["detail"]
    assert pharmacist.post(f"/api/medication-requests/{med_id}/dispense", json={"quantity": 1}).status_code == 201
    assert pharmacist.get("/api/dispense-queue").get_json() == []
    events = db_session.scalars(select(JobRecord.event).where(JobRecord.event == "followup.medication_dispensed")).all()
    assert len(events) == 3
    assert as_role("imaging_staff").post(f"/api/medication-requests/{med_id}/dispense", json={}).status_code == 403


def test_finishing_needs_a_note_and_is_done_once(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    clinician = as_role("clinician")
    assert clinician.post(f"/api/consultations/{consultation_id}/finish", json={"note": " "}).status_code == 400
    assert clinician.post(f"/api/consultations/{consultation_id}/finish", json={"note": "Discussed."}).status_code == 200
    assert clinician.post(f"/api/consultations/{consultation_id}/finish", json={"note": "Again."}).status_code == 200
    finished = db_session.scalars(select(JobRecord).where(JobRecord.event == "followup.consultation_finished")).all()
    assert len(finished) == 1
    assert as_role("patient").get(f"/api/consultations/{consultation_id}").status_code == 200
    assert as_role("patient2").get(f"/api/consultations/{consultation_id}").status_code == 403
