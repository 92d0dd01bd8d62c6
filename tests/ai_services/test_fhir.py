"""AI reading -> FHIR Device, DiagnosticReport and Observation, and their REST read/search."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from ai_services.fhir import (
    AI_FINDING_TEXT,
    RADIOLOGIST_FINDING_TEXT,
    REVIEW_STATUS_SYSTEM,
    SOP_INSTANCE_UID_TEXT,
    WEIGHTS_SHA256_SYSTEM,
    device_to_fhir,
    diagnostic_report_to_fhir,
    observation_to_fhir,
)
from ai_services.models import DiagnosticReport, Finding, FindingSource, ModelVersion, ReportStatus, ReviewStatus
from hospital.fhir.registry import validate_resource
from hospital.models import Role, User
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingStudy, StudyStatus

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
SIGNED = datetime(2025, 3, 14, 11, 0, tzinfo=UTC)
SOP_UID = "1.2.826.0.1.3680043.8.498.1.1.12"


def make_model_version() -> ModelVersion:
    return ModelVersion(
        id=1, name="lesion-unet", version="1.2.0", weights_path="w.pt", weights_sha256="ab" * 32, active=True,
        metrics={"froc_sensitivity_at_4fp": 0.8125, "n_scans": 40, "sensitivity_by_size_at_4fp": {"small": 0.5}},
        manifest={}, created_at=NOW,
    )


def make_finding(report: DiagnosticReport, finding_id: int, **overrides: object) -> Finding:
    values: dict[str, object] = dict(
        id=finding_id, report_id=report.id, report=report, patient_id=7, source=FindingSource.AI, model_version_id=1,
        model_version=make_model_version(), sop_instance_uid=SOP_UID, slice_index=12, x0=100, y0=80, x1=124, y1=101,
        diameter_mm=14.26, n_slices=3, confidence=0.87, body_site="chest", review_status=ReviewStatus.PENDING,
        created_at=NOW,
    )
    values.update(overrides)
    return Finding(**values)


def make_report(status: ReportStatus = ReportStatus.PRELIMINARY, signed: bool = False) -> DiagnosticReport:
    report = DiagnosticReport(
        id=40, study_id=21, patient_id=7, referral_id=12, analysis_job_id=None, status=status,
        conclusion="One 14 mm nodule in the right upper lobe." if signed else "", issued_at=NOW,
        signed_by_user_id=6 if signed else None, signed_at=SIGNED if signed else None, updated_at=NOW,
        signed_by=User(id=6, username="dr-rosa", role=Role.RADIOLOGIST, practitioner_id=4) if signed else None,
    )
    make_finding(report, 100)
    make_finding(report, 101, review_status=ReviewStatus.REJECTED)
    make_finding(report, 102, source=FindingSource.RADIOLOGIST, model_version_id=None, model_version=None,
                 confidence=None, review_status=ReviewStatus.ACCEPTED)
    return report


def test_device_carries_name_version_weights_hash_and_metrics() -> None:
    resource = validate_resource(device_to_fhir(make_model_version()))

    assert resource["identifier"] == [{"system": WEIGHTS_SHA256_SYSTEM, "value": "ab" * 32}]
    assert resource["deviceName"] == [{"name": "lesion-unet", "type": "model-name"}]
    assert resource["version"] == [{"value": "1.2.0"}]
    assert resource["type"]["text"] == "AI lesion detection software"
    properties = {p["type"]["text"]: p["valueQuantity"][0]["value"] for p in resource["property"]}
    assert properties == {
        "held-out froc_sensitivity_at_4fp": 0.8125,
        "held-out n_scans": 40,
        "held-out sensitivity_by_size_at_4fp.small": 0.5,
    }


def test_preliminary_report_is_performed_by_the_model_and_lists_standing_findings() -> None:
    report = make_report()

    resource = validate_resource(diagnostic_report_to_fhir(report))

    assert resource["status"] == "preliminary"
    assert resource["category"][0]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0074"
    assert resource["category"][0]["coding"][0]["code"] == "RAD"
    assert resource["code"]["coding"][0] == {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["basedOn"] == [{"reference": "ServiceRequest/12"}]
    assert resource["imagingStudy"] == [{"reference": "ImagingStudy/21"}]
    assert resource["result"] == [{"reference": "Observation/100"}, {"reference": "Observation/102"}]
    assert "Device/1" in resource["performer"][0]["display"]
    assert "resultsInterpreter" not in resource
    assert "conclusion" not in resource


def test_signed_report_names_its_radiologist() -> None:
    resource = validate_resource(diagnostic_report_to_fhir(make_report(ReportStatus.FINAL, signed=True)))

    assert resource["status"] == "final"
    assert resource["resultsInterpreter"] == [{"reference": "Practitioner/4", "display": "dr-rosa"}]
    assert "performer" not in resource
    assert resource["issued"] == "2025-03-14T11:00:00Z"
    assert resource["conclusion"].startswith("One 14 mm nodule")


@pytest.mark.parametrize(
    ("report_status", "review", "expected"),
    [
        (ReportStatus.PRELIMINARY, ReviewStatus.PENDING, "preliminary"),
        (ReportStatus.PRELIMINARY, ReviewStatus.ACCEPTED, "preliminary"),
        (ReportStatus.PRELIMINARY, ReviewStatus.EDITED, "preliminary"),
        (ReportStatus.PRELIMINARY, ReviewStatus.REJECTED, "cancelled"),
        (ReportStatus.FINAL, ReviewStatus.ACCEPTED, "final"),
        (ReportStatus.FINAL, ReviewStatus.EDITED, "final"),
        (ReportStatus.FINAL, ReviewStatus.REJECTED, "cancelled"),
        (ReportStatus.AMENDED, ReviewStatus.ACCEPTED, "amended"),
    ],
)
def test_observation_status_follows_report_and_review(report_status: ReportStatus, review: ReviewStatus, expected: str) -> None:
    report = make_report(report_status, signed=report_status is not ReportStatus.PRELIMINARY)
    finding = make_finding(report, 103, review_status=review)

    resource = validate_resource(observation_to_fhir(finding))

    assert resource["status"] == expected
    assert resource["interpretation"][0]["coding"][0] == {
        "system": REVIEW_STATUS_SYSTEM, "code": review.value, "display": resource["interpretation"][0]["text"],
    }


def test_ai_finding_observation_components() -> None:
    finding = make_report().findings[0]

    resource = validate_resource(observation_to_fhir(finding))

    assert resource["category"][0]["coding"][0]["code"] == "imaging"
    assert resource["code"]["text"] == AI_FINDING_TEXT
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["bodySite"] == {"text": "chest"}
    assert resource["device"] == {"reference": "Device/1"}
    assert resource["derivedFrom"] == [{"reference": "ImagingStudy/21"}]
    components = {c["code"]["text"]: c for c in resource["component"]}
    diameter = components["Longest diameter"]
    assert diameter["code"]["coding"][0]["code"] == "21889-1"
    assert diameter["valueQuantity"] == {"value": 14.3, "unit": "mm", "system": "http://unitsofmeasure.org", "code": "mm"}
    assert components["AI confidence"]["valueQuantity"]["value"] == 87.0
    assert components["AI confidence"]["valueQuantity"]["code"] == "%"
    assert components["Bounding box (key slice)"]["valueString"] == "100,80,124,101 px on slice 12"
    assert components[SOP_INSTANCE_UID_TEXT]["valueString"] == SOP_UID
    assert components["Slices spanned"]["valueInteger"] == 3


def test_radiologist_added_finding_has_no_confidence_or_device() -> None:
    finding = make_report().findings[2]

    resource = validate_resource(observation_to_fhir(finding))

    assert resource["code"]["text"] == RADIOLOGIST_FINDING_TEXT
    assert "device" not in resource
    assert "AI confidence" not in {c["code"]["text"] for c in resource["component"]}


def test_confidence_percentage_is_decimal_not_float_noise() -> None:
    finding = make_finding(make_report(), 104, confidence=0.1 + 0.2)

    components = {c["code"]["text"]: c for c in observation_to_fhir(finding)["component"]}

    assert components["AI confidence"]["valueQuantity"]["value"] == Decimal("30.0")


# --- through the app -----------------------------------------------------------------------------


def insert_report(db_session: Session, demo: DemoSeed, status: ReportStatus = ReportStatus.PRELIMINARY) -> DiagnosticReport:
    study = ImagingStudy(study_instance_uid="2.25.7001", patient_id=demo.patient.id, status=StudyStatus.AVAILABLE,
                         organization_id=demo.imaging_centre.id)
    model = ModelVersion(name="fhir-test-model", version="0.0.1", weights_path="w.pt", weights_sha256="cd" * 32)
    db_session.add_all([study, model])
    db_session.flush()
    report = DiagnosticReport(study_id=study.id, patient_id=demo.patient.id, status=status)
    db_session.add(report)
    db_session.flush()
    common = dict(report_id=report.id, patient_id=demo.patient.id, sop_instance_uid="2.25.7001.1.1", slice_index=3,
                  x0=1, y0=2, x1=10, y1=12, diameter_mm=6.0)
    db_session.add_all([
        Finding(source=FindingSource.AI, model_version_id=model.id, confidence=0.66, **common),
        Finding(source=FindingSource.AI, model_version_id=model.id, confidence=0.2, review_status=ReviewStatus.REJECTED, **common),
    ])
    db_session.commit()
    return report


def test_read_and_search_reports_observations_and_devices(as_role, demo, db_session) -> None:
    report = insert_report(db_session, demo)
    admin = as_role("admin")

    read = admin.get(f"/fhir/DiagnosticReport/{report.id}")
    assert read.status_code == 200, read.get_data(as_text=True)
    body = validate_resource(read.get_json())
    assert len(body["result"]) == 1

    def bundle(url: str) -> dict:
        response = admin.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        return validate_resource(response.get_json())

    assert bundle(f"/fhir/DiagnosticReport?patient={demo.patient.id}&status=preliminary")["total"] == 1
    findings = bundle(f"/fhir/Observation?patient=Patient/{demo.patient.id}&derived-from=ImagingStudy/{report.study_id}")
    assert {e["resource"]["status"] for e in findings["entry"]} == {"preliminary", "cancelled"}
    assert bundle(f"/fhir/Observation?patient={demo.patient.id}&status=preliminary")["total"] == 1
    assert bundle(f"/fhir/Observation?patient={demo.patient.id}&status=cancelled")["total"] == 1
    assert bundle(f"/fhir/Observation?patient={demo.patient.id}&status=final")["total"] == 0

    device_id = findings["entry"][0]["resource"]["device"]["reference"].split("/")[1]
    device = bundle(f"/fhir/Device?identifier={WEIGHTS_SHA256_SYSTEM}|{'cd' * 32}")
    assert [e["resource"]["id"] for e in device["entry"]] == [device_id]
    assert as_role("patient").get(f"/fhir/Device/{device_id}").status_code == 200


def test_a_patient_cannot_read_another_patients_report_or_findings(as_role, demo, db_session) -> None:
    report = insert_report(db_session, demo, ReportStatus.FINAL)
    finding_id = report.findings[0].id

    assert as_role("patient").get(f"/fhir/DiagnosticReport/{report.id}").status_code == 200
    own = as_role("patient").get(f"/fhir/Observation/{finding_id}")
    assert validate_resource(own.get_json())["status"] == "final"
    for url in (f"/fhir/DiagnosticReport/{report.id}", f"/fhir/Observation/{finding_id}"):
        denied = as_role("patient2").get(url)
        assert denied.status_code == 403
        assert denied.get_json()["resourceType"] == "OperationOutcome"
