"""Care relationships (issue 13, finding 1): a clinician cannot grant themselves a patient's record
by writing a referral; starting a relationship needs a recorded reason that admins see; revoking
the referral ends it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.access import CARE_RELATIONSHIP_STARTED
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from referrals.fhir import ACCESS_REASON_EXTENSION
from referrals.models import Referral
from tests.hospital.test_fhir_api import new_service_request
from tests.security.care_world import make_care_world


def test_a_referral_without_an_access_reason_opens_nothing(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    world = make_care_world(db_session, demo)
    db_session.commit()
    clinician = as_role("clinician")
    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403
    bare = {k: v for k, v in new_service_request(demo, f"Patient/{demo.patient.id}").items() if k != "extension"}
    refused = clinician.post("/fhir/ServiceRequest", json=bare)
    assert refused.status_code == 403 and "access reason" in refused.get_data(as_text=True)
    assert clinician.post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "reason": "cough"}).status_code == 403
    assert db_session.scalar(select(func.count()).select_from(Referral)) == 1  # only the other clinician's
    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403


def test_a_justified_referral_opens_the_record_until_it_is_revoked(
    as_role: Any, db_session: Session, demo: DemoSeed
) -> None:
    world = make_care_world(db_session, demo)
    db_session.commit()
    clinician = as_role("clinician")
    body = new_service_request(demo, f"Patient/{demo.patient.id}")
    body["extension"] = [{"url": ACCESS_REASON_EXTENSION, "valueString": "took over care from Dr Test"}]
    created = clinician.post("/fhir/ServiceRequest", json=body)
    assert created.status_code == 201, created.get_data(as_text=True)
    started = db_session.scalar(select(AuditEvent).where(AuditEvent.description.startswith(CARE_RELATIONSHIP_STARTED)))
    assert started is not None and started.patient_id == demo.patient.id
    assert started.description.endswith("took over care from Dr Test")
    audit_page = as_role("admin").get("/admin/audit?relationships=1").get_data(as_text=True)
    assert "took over care from Dr Test" in audit_page

    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 200
    assert clinician.get(f"/reports/{world.report.id}").status_code == 200
    # A second referral while the first is live needs no new reason: the patient is in their care.
    again = new_service_request(demo, f"Patient/{demo.patient.id}", "MR")
    again.pop("extension")
    assert clinician.post("/fhir/ServiceRequest", json=again).status_code == 201

    for referral_id in (created.get_json()["id"], db_session.scalars(select(Referral.id).order_by(Referral.id.desc())).first()):
        current = clinician.get(f"/fhir/ServiceRequest/{referral_id}").get_json()
        revoked = clinician.put(f"/fhir/ServiceRequest/{referral_id}", json={**current, "status": "revoked"})
        assert revoked.status_code == 200, revoked.get_data(as_text=True)
    assert clinician.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403
    assert clinician.get(f"/api/reports/{world.report.id}").status_code == 403
    assert clinician.get(f"/fhir/Patient/{demo.patient.id}").status_code == 403
    # The clinician still sees their own (revoked) orders and their status, and nothing more.
    mine = clinician.get("/api/referrals").get_json()
    assert {r["status"] for r in mine} == {"cancelled"} and len(mine) == 2
    assert all(r["requester_id"] == demo.users["clinician"].practitioner_id for r in mine)


def test_the_centre_loses_the_record_when_the_referral_is_cancelled(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    world = make_care_world(db_session, demo)
    db_session.commit()
    clinician, staff = as_role("clinician"), as_role("imaging_staff")
    assert staff.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403
    referral = clinician.post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "reason": "cough", "access_reason": "new patient at the practice"}).get_json()
    assert staff.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 200
    assert as_role("far_staff").get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403
    assert clinician.post(f"/api/referrals/{referral['id']}/cancel", json={"reason": "wrong patient"}).status_code == 200
    assert staff.get(f"/fhir/DiagnosticReport/{world.report.id}").status_code == 403
    assert staff.get(f"/api/referrals/{referral['id']}").status_code == 403
