"""Least privilege per role (`hospital.policy`): a pharmacist with a prescription for a patient sees
the prescription, its dispenses and who the patient is, and nothing else of the record, on every
surface: the JSON API, FHIR read/search/_include/_revinclude/history/Bundle, DICOMweb and pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import ReportStatus, ReviewStatus
from followup.service import open_consultation
from hospital.models import AuditEvent, Role
from hospital.policy import POLICY, may_see_type
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingStudy
from tests.ai_services.test_report_pages import store_slices
from tests.billing.test_fhir import insert_invoice
from tests.factories import make_preliminary_report

# Every patient-bound FHIR type a pharmacist must not see, with how the test finds an id of it.
CLOSED_TYPES = ("DiagnosticReport", "Observation", "ImagingStudy", "Encounter", "ChargeItem", "Invoice",
                "ServiceRequest", "Communication", "CarePlan", "Task")


@dataclass
class PharmacyWorld:
    ids: dict[str, int]
    study_uid: str
    report_id: int
    finding_id: int
    medication_request_id: int


@pytest.fixture()
def world(as_role: Any, app: Flask, db_session: Session, demo: DemoSeed) -> PharmacyWorld:
    """demo.patient with a signed report (images, findings), a consultation, a bill, and a
    prescription sent to the demo pharmacy."""
    report = make_preliminary_report(db_session, demo, [(10, 10, 14, 14)])
    store_slices(db_session, app, demo, report)
    report.findings[0].review_status = ReviewStatus.ACCEPTED
    report.status = ReportStatus.FINAL
    consultation = open_consultation(db_session, report.id)
    assert consultation is not None
    db_session.commit()
    _entry, charge, invoice = insert_invoice(db_session, demo)
    clinician = as_role("clinician")
    med = clinician.post(f"/api/consultations/{consultation.id}/prescriptions", json={
        "medication_code": "J01CA04", "dosage_text": "500 mg tds", "quantity": 2,
        "pharmacy_organization_id": demo.pharmacy.id})
    assert med.status_code == 201, med.get_data(as_text=True)
    assert clinician.post(f"/api/consultations/{consultation.id}/messages", json={"body": "How are you?"}).status_code == 201
    ids = {"DiagnosticReport": report.id, "Observation": report.findings[0].id, "ImagingStudy": report.study_id,
           "Encounter": consultation.id, "ChargeItem": charge.id, "Invoice": invoice.id,
           "ServiceRequest": report.referral_id}
    study = db_session.get(ImagingStudy, report.study_id)
    assert study is not None
    return PharmacyWorld(ids, study.study_instance_uid, report.id, report.findings[0].id, med.get_json()["id"])


def test_the_policy_table_gives_pharmacists_medication_and_demographics_only() -> None:
    assert {grant.role for grant in POLICY} == set(Role)
    assert may_see_type(Role.PHARMACIST, "MedicationRequest") and may_see_type(Role.PHARMACIST, "Patient")
    assert not any(may_see_type(Role.PHARMACIST, t) for t in CLOSED_TYPES)
    # Clinicians get the care record, not the bills; imaging staff and radiologists the examination.
    assert all(may_see_type(Role.CLINICIAN, t) for t in set(CLOSED_TYPES) - {"ChargeItem", "Invoice"})
    assert not any(may_see_type(Role.CLINICIAN, t) for t in ("ChargeItem", "Invoice"))
    for role in (Role.IMAGING_STAFF, Role.RADIOLOGIST):
        assert all(may_see_type(role, t) for t in ("ImagingStudy", "DiagnosticReport", "Observation"))
        assert not any(may_see_type(role, t) for t in ("Encounter", "Communication", "MedicationRequest", "Invoice"))


def test_pharmacist_reads_the_prescription_and_the_patient(as_role: Any, demo: DemoSeed, world: PharmacyWorld) -> None:
    pharmacist = as_role("pharmacist")
    assert pharmacist.get(f"/fhir/MedicationRequest/{world.medication_request_id}").status_code == 200
    assert pharmacist.get(f"/fhir/Patient/{demo.patient.id}").status_code == 200
    assert [m["id"] for m in pharmacist.get("/api/dispense-queue").get_json()] == [world.medication_request_id]


def test_pharmacist_cannot_read_the_rest_of_the_record_over_fhir(
    as_role: Any, db_session: Session, demo: DemoSeed, world: PharmacyWorld
) -> None:
    pharmacist = as_role("pharmacist")
    leaks = []
    for type_name, row_id in world.ids.items():
        for url in (f"/fhir/{type_name}/{row_id}", f"/fhir/{type_name}/{row_id}/_history",
                    f"/fhir/{type_name}/{row_id}/_history/1"):
            if (status := pharmacist.get(url).status_code) != 403:
                leaks.append(f"{url}: {status}")
    for type_name in CLOSED_TYPES:
        for url in (f"/fhir/{type_name}?patient=Patient/{demo.patient.id}", f"/fhir/{type_name}/_history"):
            response = pharmacist.get(url)
            if response.status_code == 200 and response.get_json().get("entry"):
                leaks.append(f"{url}: {len(response.get_json()['entry'])} entries")
    assert not leaks, "\n".join(leaks)
    denial = db_session.scalar(select(AuditEvent).where(
        AuditEvent.user_id == demo.users["pharmacist"].id, AuditEvent.entity_type == "DiagnosticReport",
        AuditEvent.outcome == 4))
    assert denial is not None


def test_pharmacist_includes_and_bundles_carry_nothing_closed(as_role: Any, demo: DemoSeed, world: PharmacyWorld) -> None:
    pharmacist = as_role("pharmacist")
    revincludes = "&".join(f"_revinclude={t}:patient" for t in ("DiagnosticReport", "ImagingStudy", "Invoice",
                                                                   "ChargeItem", "Encounter", "Observation"))
    found = pharmacist.get(f"/fhir/Patient?_id={demo.patient.id}&{revincludes}")
    assert found.status_code == 200, found.get_data(as_text=True)
    assert {e["resource"]["resourceType"] for e in found.get_json()["entry"]} == {"Patient"}
    med = pharmacist.get(f"/fhir/MedicationRequest?_id={world.medication_request_id}&_include=MedicationRequest:encounter")
    if med.status_code == 200:  # only when the include is offered
        assert {e["resource"]["resourceType"] for e in med.get_json()["entry"]} == {"MedicationRequest"}
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"{t}/{i}"}} for t, i in world.ids.items()
    ] + [{"request": {"method": "GET", "url": f"DiagnosticReport?patient={demo.patient.id}"}}]}
    answer = pharmacist.post("/fhir", json=batch, content_type="application/fhir+json")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    entries = answer.get_json()["entry"]
    assert [e["response"]["status"][:3] for e in entries[:-1]] == ["403"] * len(world.ids)
    assert not entries[-1].get("resource", {}).get("entry")


def test_pharmacist_cannot_see_images_reports_or_bills_on_pages_api_and_dicomweb(
    as_role: Any, demo: DemoSeed, world: PharmacyWorld
) -> None:
    pharmacist = as_role("pharmacist")
    refused = [
        f"/api/reports/{world.report_id}", f"/reports/{world.report_id}",
        f"/reports/{world.report_id}/slices/0.png", f"/reports/{world.report_id}/findings/{world.finding_id}/image.png",
        f"/api/studies/{world.ids['ImagingStudy']}", f"/api/consultations/{world.ids['Encounter']}",
        f"/api/consultations/{world.ids['Encounter']}/messages", f"/api/referrals/{world.ids['ServiceRequest']}",
        f"/dicomweb/studies/{world.study_uid}/metadata", f"/dicomweb/studies/{world.study_uid}",
        f"/api/invoices/{world.ids['Invoice']}",
    ]
    leaks = [f"{url}: {status}" for url in refused if (status := pharmacist.get(url).status_code) not in (403, 404)]
    for url in ("/api/reports", "/api/studies", "/api/consultations", "/api/referrals",
                f"/dicomweb/studies?PatientID={demo.patient.mrn}"):
        response = pharmacist.get(url)
        if response.status_code == 200 and response.get_data(as_text=True).strip() not in ("[]", ""):
            leaks.append(f"{url}: {response.get_data(as_text=True)[:120]}")
    assert not leaks, "\n".join(leaks)
