"""Referral -> FHIR ServiceRequest: the mapping, the status folding, and the REST read/search."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from hospital.fhir.registry import validate_resource
from hospital.seed import DemoSeed
from referrals.fhir import ACCESSION_SYSTEM, service_request_to_fhir
from referrals.models import Priority, Referral, ReferralStatus

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def make_referral(**overrides: object) -> Referral:
    values: dict[str, object] = dict(
        id=12, patient_id=7, requester_id=3, created_by_user_id=5, performer_organization_id=2,
        status=ReferralStatus.ACCEPTED, priority=Priority.URGENT, modality="CT", body_part="CHEST",
        procedure_description="CT chest with contrast", reason="Persistent cough, 6 weeks",
        accession_number="ACC0001", replaces_referral_id=None, status_reason=None, created_at=NOW, updated_at=NOW,
    )
    values.update(overrides)
    return Referral(**values)


def test_service_request_maps_the_order() -> None:
    resource = validate_resource(service_request_to_fhir(make_referral(replaces_referral_id=9)))

    assert resource["status"] == "active"
    assert resource["intent"] == "order"
    assert resource["priority"] == "urgent"
    assert resource["category"][0]["coding"][0] == {"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}
    assert resource["code"]["text"] == "CT chest with contrast"
    assert resource["code"]["coding"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["requester"] == {"reference": "Practitioner/3"}
    assert resource["performer"] == [{"reference": "Organization/2"}]
    assert resource["reasonCode"] == [{"text": "Persistent cough, 6 weeks"}]
    assert resource["bodySite"] == [{"text": "CHEST"}]
    assert resource["authoredOn"] == "2025-03-14T09:30:00Z"
    assert resource["replaces"] == [{"reference": "ServiceRequest/9"}]
    identifier = resource["identifier"][0]
    assert identifier["system"] == ACCESSION_SYSTEM
    assert identifier["value"] == "ACC0001"
    assert identifier["type"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0203"
    assert identifier["type"]["coding"][0]["code"] == "ACSN"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (ReferralStatus.ACTIVE, "active"),
        (ReferralStatus.ACCEPTED, "active"),
        (ReferralStatus.SCHEDULED, "active"),
        (ReferralStatus.IN_PROGRESS, "active"),
        (ReferralStatus.COMPLETED, "completed"),
        (ReferralStatus.REJECTED, "revoked"),
        (ReferralStatus.CANCELLED, "revoked"),
    ],
)
def test_referral_statuses_fold_into_service_request_statuses(status: ReferralStatus, expected: str) -> None:
    assert validate_resource(service_request_to_fhir(make_referral(status=status)))["status"] == expected


def test_new_referral_has_no_accession_identifier_and_a_rejection_keeps_its_reason() -> None:
    resource = validate_resource(
        service_request_to_fhir(
            make_referral(accession_number=None, status=ReferralStatus.REJECTED, status_reason="No contrast slots")
        )
    )

    assert "identifier" not in resource
    assert "replaces" not in resource
    assert resource["note"] == [{"text": "rejected: No contrast slots"}]


# --- through the app -----------------------------------------------------------------------------


def insert_referral(db_session: Session, demo: DemoSeed, **overrides: object) -> Referral:
    clinician = demo.users["clinician"]
    values: dict[str, object] = dict(
        patient_id=demo.patient.id, requester_id=clinician.practitioner_id, created_by_user_id=clinician.id,
        performer_organization_id=demo.imaging_centre.id, modality="CT", body_part="CHEST",
        procedure_description="CT chest", reason="Cough", status=ReferralStatus.ACCEPTED, accession_number="FHIRT01",
    )
    values.update(overrides)
    referral = Referral(**values)
    db_session.add(referral)
    db_session.commit()
    return referral


def test_read_and_search_service_requests(as_role, demo, db_session) -> None:
    referral = insert_referral(db_session, demo)
    cancelled = insert_referral(db_session, demo, accession_number=None, status=ReferralStatus.CANCELLED)
    clinician = as_role("clinician")

    read = clinician.get(f"/fhir/ServiceRequest/{referral.id}")
    assert read.status_code == 200, read.get_data(as_text=True)
    assert validate_resource(read.get_json())["identifier"][0]["value"] == "FHIRT01"

    def ids(query: str) -> set[str]:
        response = clinician.get(f"/fhir/ServiceRequest?{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        bundle = validate_resource(response.get_json())
        return {entry["resource"]["id"] for entry in bundle.get("entry", [])}

    both = {str(referral.id), str(cancelled.id)}
    assert ids(f"patient=Patient/{demo.patient.id}") >= both
    assert ids(f"subject={demo.patient.id}&_id={referral.id}") == {str(referral.id)}
    assert str(cancelled.id) in ids(f"patient={demo.patient.id}&status=revoked")
    assert str(referral.id) not in ids(f"patient={demo.patient.id}&status=revoked")
    assert ids(f"identifier={ACCESSION_SYSTEM}|FHIRT01") == {str(referral.id)}
    assert ids("identifier=FHIRT01") == {str(referral.id)}
    assert ids("identifier=urn:other|FHIRT01") == set()
    assert ids(f"requester=Practitioner/{demo.users['clinician'].practitioner_id}&performer=Organization/{demo.imaging_centre.id}") >= both

    bad = clinician.get("/fhir/ServiceRequest?requester=Patient/1")
    assert bad.status_code == 400
    assert bad.get_json()["resourceType"] == "OperationOutcome"


def test_a_patient_cannot_read_another_patients_service_request(as_role, demo, db_session) -> None:
    referral = insert_referral(db_session, demo)

    assert as_role("patient").get(f"/fhir/ServiceRequest/{referral.id}").status_code == 200
    denied = as_role("patient2").get(f"/fhir/ServiceRequest/{referral.id}")
    assert denied.status_code == 403
    assert denied.get_json()["resourceType"] == "OperationOutcome"
    listed = validate_resource(as_role("patient2").get(f"/fhir/ServiceRequest?patient={demo.patient.id}").get_json())
    assert listed["total"] == 0
