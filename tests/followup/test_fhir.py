"""Care after the report -> FHIR Encounter, CarePlan, Task, MedicationRequest and
MedicationDispense, and their REST read/search."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from ai_services.models import DiagnosticReport, ReportStatus
from followup.fhir import (
    MEDICATION_CATALOG_SYSTEM,
    REASON_REFERENCE_EXTENSION,
    care_plan_to_fhir,
    encounter_to_fhir,
    medication_dispense_to_fhir,
    medication_request_to_fhir,
    task_to_fhir,
)
from followup.models import (
    CarePlan,
    Consultation,
    ConsultationStatus,
    FollowUpTask,
    MedicationDispense,
    MedicationRequest,
    MedicationRequestStatus,
    TaskStatus,
)
from hospital.fhir.registry import validate_resource
from hospital.models import Role, User
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingStudy, StudyStatus

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def make_consultation(**overrides: object) -> Consultation:
    values: dict[str, object] = dict(
        id=50, report_id=40, patient_id=7, practitioner_id=3, status=ConsultationStatus.FINISHED, priority="urgent",
        reason="Discuss 14 mm lung nodule", created_at=NOW, started_at=NOW, ended_at=NOW + timedelta(minutes=20),
    )
    values.update(overrides)
    return Consultation(**values)


def make_request(**overrides: object) -> MedicationRequest:
    values: dict[str, object] = dict(
        id=70, consultation_id=50, patient_id=7, prescriber_id=3, pharmacy_organization_id=9,
        medication_code="J01CA04", medication_display="Amoxicillin 500 mg capsules", dosage_text="1 capsule 3 times a day for 7 days",
        quantity=21, refills=1, status=MedicationRequestStatus.ACTIVE, created_at=NOW,
    )
    values.update(overrides)
    return MedicationRequest(**values)


@pytest.mark.parametrize("status", list(ConsultationStatus))
def test_encounter_is_a_virtual_visit_for_the_report(status: ConsultationStatus) -> None:
    resource = validate_resource(encounter_to_fhir(make_consultation(status=status)))

    assert resource["status"] == status.value
    assert resource["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR", "display": "virtual"}
    assert resource["priority"]["coding"][0]["code"] == "UR"
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["participant"][0]["individual"] == {"reference": "Practitioner/3"}
    assert resource["extension"] == [{"url": REASON_REFERENCE_EXTENSION, "valueReference": {"reference": "DiagnosticReport/40"}}]
    assert resource["reasonCode"] == [{"text": "Discuss 14 mm lung nodule"}]
    assert resource["period"] == {"start": "2025-03-14T09:30:00Z", "end": "2025-03-14T09:50:00Z"}


def test_planned_encounter_has_no_period() -> None:
    resource = validate_resource(encounter_to_fhir(make_consultation(status=ConsultationStatus.PLANNED, started_at=None, ended_at=None)))

    assert "period" not in resource


def test_care_plan_lists_its_tasks_and_tasks_point_back() -> None:
    care_plan = CarePlan(id=60, consultation_id=50, patient_id=7, title="Nodule follow-up", status="active", created_at=NOW)
    due = NOW + timedelta(days=90)
    task = FollowUpTask(id=61, care_plan_id=60, care_plan=care_plan, patient_id=7, kind="repeat-scan",
                        description="Repeat CT chest in 3 months", status=TaskStatus.REQUESTED, due_at=due, created_at=NOW)

    plan = validate_resource(care_plan_to_fhir(care_plan))
    task_resource = validate_resource(task_to_fhir(task))

    assert plan["status"] == "active"
    assert plan["intent"] == "plan"
    assert plan["title"] == "Nodule follow-up"
    assert plan["subject"] == {"reference": "Patient/7"}
    assert plan["activity"] == [{"reference": {"reference": "Task/61"}}]
    assert task_resource["status"] == "requested"
    assert task_resource["intent"] == "order"
    assert task_resource["code"]["text"] == "repeat-scan"
    assert task_resource["description"] == "Repeat CT chest in 3 months"
    assert task_resource["for"] == {"reference": "Patient/7"}
    assert task_resource["basedOn"] == [{"reference": "CarePlan/60"}]
    assert task_resource["restriction"]["period"]["end"] == "2025-06-12T09:30:00Z"
    assert task_resource["authoredOn"] == "2025-03-14T09:30:00Z"


@pytest.mark.parametrize("status", list(TaskStatus))
def test_task_status_is_carried_over(status: TaskStatus) -> None:
    task = FollowUpTask(id=61, care_plan_id=60, patient_id=7, kind="visit", description="Visit", status=status, created_at=NOW)

    assert validate_resource(task_to_fhir(task))["status"] == status.value


def test_unknown_care_plan_status_becomes_unknown() -> None:
    care_plan = CarePlan(id=60, consultation_id=50, patient_id=7, title="x", status="paused", created_at=NOW)

    assert validate_resource(care_plan_to_fhir(care_plan))["status"] == "unknown"


@pytest.mark.parametrize("status", list(MedicationRequestStatus))
def test_medication_request_maps_drug_dosage_and_supply(status: MedicationRequestStatus) -> None:
    resource = validate_resource(medication_request_to_fhir(make_request(status=status)))

    assert resource["status"] == status.value
    assert resource["intent"] == "order"
    assert resource["medicationCodeableConcept"] == {
        "coding": [{"system": MEDICATION_CATALOG_SYSTEM, "code": "J01CA04", "display": "Amoxicillin 500 mg capsules"}],
        "text": "Amoxicillin 500 mg capsules",
    }
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["requester"] == {"reference": "Practitioner/3"}
    assert resource["encounter"] == {"reference": "Encounter/50"}
    assert resource["dosageInstruction"] == [{"text": "1 capsule 3 times a day for 7 days"}]
    assert resource["dispenseRequest"]["quantity"] == {"value": 21}
    assert resource["dispenseRequest"]["numberOfRepeatsAllowed"] == 1
    assert resource["dispenseRequest"]["performer"] == {"reference": "Organization/9"}


def test_medication_dispense_points_at_its_prescription() -> None:
    request = make_request()
    pharmacist = User(id=8, username="pia", role=Role.PHARMACIST, practitioner_id=5)
    dispense = MedicationDispense(id=80, request_id=70, request=request, patient_id=7, quantity=21, dispensed_by_user_id=8,
                                  dispensed_by=pharmacist, dispensed_at=NOW)

    resource = validate_resource(medication_dispense_to_fhir(dispense))

    assert resource["status"] == "completed"
    assert resource["medicationCodeableConcept"]["coding"][0]["code"] == "J01CA04"
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["authorizingPrescription"] == [{"reference": "MedicationRequest/70"}]
    assert resource["quantity"] == {"value": 21}
    assert resource["whenHandedOver"] == "2025-03-14T09:30:00Z"
    assert resource["performer"] == [{"actor": {"reference": "Practitioner/5", "display": "pia"}}]


# --- through the app -----------------------------------------------------------------------------


def insert_care(db_session: Session, demo: DemoSeed) -> tuple[Consultation, CarePlan, FollowUpTask, MedicationRequest, MedicationDispense]:
    study = ImagingStudy(study_instance_uid="2.25.8001", patient_id=demo.patient.id, status=StudyStatus.AVAILABLE)
    db_session.add(study)
    db_session.flush()
    report = DiagnosticReport(study_id=study.id, patient_id=demo.patient.id, status=ReportStatus.FINAL)
    db_session.add(report)
    db_session.flush()
    clinician = demo.users["clinician"]
    consultation = make_consultation(id=None, report_id=report.id, patient_id=demo.patient.id, practitioner_id=clinician.practitioner_id)
    db_session.add(consultation)
    db_session.flush()
    care_plan = CarePlan(consultation_id=consultation.id, patient_id=demo.patient.id, title="Nodule follow-up")
    request = make_request(id=None, consultation_id=consultation.id, patient_id=demo.patient.id,
                           prescriber_id=clinician.practitioner_id, pharmacy_organization_id=demo.pharmacy.id)
    db_session.add_all([care_plan, request])
    db_session.flush()
    task = FollowUpTask(care_plan_id=care_plan.id, patient_id=demo.patient.id, kind="repeat-scan", description="Repeat CT",
                        due_at=NOW + timedelta(days=90))
    dispense = MedicationDispense(request_id=request.id, patient_id=demo.patient.id, quantity=21,
                                  dispensed_by_user_id=demo.users["pharmacist"].id)
    db_session.add_all([task, dispense])
    db_session.commit()
    return consultation, care_plan, task, request, dispense


def test_read_and_search_followup_resources(as_role, demo, db_session) -> None:
    consultation, care_plan, task, request, dispense = insert_care(db_session, demo)
    admin = as_role("admin")

    for type_name, row in (("Encounter", consultation), ("CarePlan", care_plan), ("Task", task),
                           ("MedicationRequest", request), ("MedicationDispense", dispense)):
        read = admin.get(f"/fhir/{type_name}/{row.id}")
        assert read.status_code == 200, read.get_data(as_text=True)
        validate_resource(read.get_json())
        searched = admin.get(f"/fhir/{type_name}?patient=Patient/{demo.patient.id}")
        assert searched.status_code == 200, searched.get_data(as_text=True)
        bundle = validate_resource(searched.get_json())
        assert str(row.id) in {e["resource"]["id"] for e in bundle["entry"]}, type_name

    def total(url: str) -> int:
        response = admin.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        return validate_resource(response.get_json())["total"]

    assert total(f"/fhir/Task?based-on=CarePlan/{care_plan.id}&status=requested") == 1
    assert total(f"/fhir/MedicationRequest?encounter=Encounter/{consultation.id}&status=active") == 1
    assert total(f"/fhir/MedicationDispense?prescription=MedicationRequest/{request.id}") == 1
    assert total(f"/fhir/Encounter?patient={demo.patient.id}&status=finished&date=ge2025-03-14") == 1
    plan = validate_resource(admin.get(f"/fhir/CarePlan/{care_plan.id}").get_json())
    assert plan["activity"] == [{"reference": {"reference": f"Task/{task.id}"}}]


def test_a_patient_cannot_read_another_patients_care_records(as_role, demo, db_session) -> None:
    consultation, care_plan, task, request, dispense = insert_care(db_session, demo)

    for type_name, row in (("Encounter", consultation), ("CarePlan", care_plan), ("Task", task),
                           ("MedicationRequest", request), ("MedicationDispense", dispense)):
        assert as_role("patient").get(f"/fhir/{type_name}/{row.id}").status_code == 200, type_name
        denied = as_role("patient2").get(f"/fhir/{type_name}/{row.id}")
        assert denied.status_code == 403, type_name
        assert denied.get_json()["resourceType"] == "OperationOutcome"


def test_a_returned_prescription_is_on_hold_with_the_pharmacys_reason_and_a_coded_item_keeps_its_system() -> None:
    request = make_request(status=MedicationRequestStatus.ON_HOLD, status_reason="Allergy noted at the counter",
                           medication_system="http://www.whocc.no/atc")
    resource = validate_resource(medication_request_to_fhir(request))

    assert resource["status"] == "on-hold"
    assert resource["statusReason"] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-status-reason", "code": "clarif",
                    "display": "Prescription requires clarification"}],
        "text": "Allergy noted at the counter"}
    assert resource["medicationCodeableConcept"]["coding"][0]["system"] == "http://www.whocc.no/atc"
    assert "statusReason" not in validate_resource(medication_request_to_fhir(make_request()))
