"""FHIR mappings of the AI reading: Device (a model version), DiagnosticReport and the findings as
imaging Observations.

When the series was outside the model's validated range the report carries the conclusionCode
`ai-outcome#not-applicable` and one contained Observation whose dataAbsentReason is
`not-applicable` with the reason as its text. The model card (intended use, operating point,
known failure modes) is the Device's note and the report's presentedForm. A signed report's
presentedForm also links its PDF in each language (ai_services.report_pdf), and the same PDF is a
DocumentReference (id = the report's id, `context.related` the report) that only signed reports have.

An Observation's status follows its report: preliminary until a radiologist signs, final (or
amended) after; a finding the radiologist rejected is 'cancelled' and left out of the report's
results. Confidence is given as a percentage (UCUM '%', 0-100); the key slice's SOP Instance UID
is a component with code text "SOP Instance UID", so a viewer can open the exact image.
"""

from __future__ import annotations

import base64
import logging
from decimal import Decimal
from typing import Any

from flask import Flask
from sqlalchemy import ColumnElement, and_, false, select
from sqlalchemy.orm import joinedload, object_session

from ai_services.applicability import NOT_APPLICABLE_PREFIX
from ai_services.model_card import ModelCard
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    Finding,
    FindingSource,
    ModelVersion,
    ReportStatus,
    ReviewStatus,
)
from ai_services.report_pdf import SIGNED_STATUSES, ReportDocument, last_changed, report_pdf_attachments, signer_name
from ai_services.service import FAILED_PREFIX
from hospital.fhir.registry import (
    CANONICAL_BASE,
    IDENTIFIER_SYSTEM_BASE,
    ResourceMapping,
    SearchParam,
    date_param,
    fhir_instant,
    id_param,
    identifier_param,
    patient_reference_param,
    reference,
    reference_id,
    reference_param,
    register_resource,
    token_param,
)

logger = logging.getLogger(__name__)

WEIGHTS_SHA256_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/model-weights-sha256"
REVIEW_STATUS_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/finding-review-status"
AI_OUTCOME_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/ai-outcome"
DATA_ABSENT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
AI_OUTCOME_ID = "ai-outcome"
AI_RESULT_TEXT = "AI lesion detection result"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
# Partner model packages by "name|version": the model an Observation's finding came from.
MODEL_PACKAGE_SYSTEM = "urn:closed-loop-hospital:model-package"
DEVICE_TYPE_TEXT = "AI lesion detection software"
AI_FINDING_TEXT = "Suspected abnormality (AI lesion-agnostic detection)"
RADIOLOGIST_FINDING_TEXT = "Radiologist-added finding"
SOP_INSTANCE_UID_TEXT = "SOP Instance UID"

RAD_CATEGORY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}]
}
IMAGING_STUDY_CODE = {
    "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
    "text": "Diagnostic imaging study",
}
OBSERVATION_IMAGING_CATEGORY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging", "display": "Imaging"}
    ]
}
REVIEW_STATUS_DISPLAY = {
    ReviewStatus.PENDING: "Awaiting radiologist review",
    ReviewStatus.ACCEPTED: "Accepted by radiologist",
    ReviewStatus.EDITED: "Edited by radiologist",
    ReviewStatus.REJECTED: "Rejected by radiologist",
}
# Observation.status of a finding still standing, by the status of its report.
OBSERVATION_STATUS_BY_REPORT = {
    ReportStatus.PRELIMINARY: "preliminary",
    ReportStatus.FINAL: "final",
    ReportStatus.AMENDED: "amended",
}


def device_to_fhir(model_version: ModelVersion) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": str(model_version.id),
        "identifier": [{"system": WEIGHTS_SHA256_SYSTEM, "value": model_version.weights_sha256}],
        "status": "active" if model_version.active else "inactive",
        "manufacturer": "closed-loop-hospital",
        "deviceName": [{"name": model_version.name, "type": "model-name"}],
        "modelNumber": model_version.name,
        "type": {"text": DEVICE_TYPE_TEXT},
        "version": [{"value": model_version.version}],
        "property": _metric_properties(model_version.metrics or {}) or None,
        "note": [{"text": card.text()}] if (card := model_version.card) else None,
    }




def _metric_properties(metrics: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Held-out metrics as Device.property, nested groups flattened to 'group.key'."""
    properties: list[dict[str, Any]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            properties.extend(_metric_properties(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            properties.append(
                {"type": {"text": f"held-out {name}"}, "valueQuantity": [{"value": Decimal(str(value))}]}
            )
    return properties


def diagnostic_report_to_fhir(report: DiagnosticReport) -> dict[str, Any]:
    status = ReportStatus(report.status)
    findings = report.findings
    job = _analysis_job(report)
    not_applicable = job is not None and AnalysisStatus(job.status) is AnalysisStatus.NOT_APPLICABLE
    # The model failed and the report holds none of its findings: the AI result is absent, in error.
    failed = (job is not None and AnalysisStatus(job.status) is AnalysisStatus.FAILED
              and not any(f.source is FindingSource.AI and f.package_analysis_id is None for f in findings))
    card = job.model_version.card if job is not None and job.model_version is not None else None
    results = [
        reference("Observation", f.id) for f in findings if ReviewStatus(f.review_status) is not ReviewStatus.REJECTED
    ]
    if not_applicable or failed:
        results.append({"reference": f"#{AI_OUTCOME_ID}"})
    return {
        "resourceType": "DiagnosticReport",
        "id": str(report.id),
        "meta": {"lastUpdated": fhir_instant(report.updated_at)},
        "basedOn": [reference("ServiceRequest", report.referral_id)] if report.referral_id is not None else None,
        "status": status.value,
        "category": [RAD_CATEGORY],
        "code": IMAGING_STUDY_CODE,
        "subject": reference("Patient", report.patient_id),
        "issued": fhir_instant(report.signed_at or report.issued_at),
        "performer": _report_performer(report, findings),
        "resultsInterpreter": [_signer(report)] if report.signed_by_user_id is not None else None,
        "imagingStudy": [reference("ImagingStudy", report.study_id)],
        "contained": [_absent_ai_observation(report, job, failed=failed)] if (not_applicable or failed) and job is not None
        else None,
        "result": results or None,
        "conclusion": report_conclusion_text(report) or None,
        "conclusionCode": [_outcome_code(job, failed=failed)] if (not_applicable or failed) and job is not None else None,
        "presentedForm": [*_pdf_attachments(report), *([_card_attachment(card)] if card is not None else [])] or None,
    }


def _pdf_attachments(report: DiagnosticReport) -> list[dict[str, Any]]:
    if ReportStatus(report.status) not in SIGNED_STATUSES:
        return []
    return report_pdf_attachments(report.id, last_changed(report.signed_at, [a.created_at for a in report.addenda]))


def document_reference_to_fhir(document: ReportDocument) -> dict[str, Any]:
    """A signed report's PDF as a document: its languages, who signed it, the report it presents."""
    session = object_session(document)
    report = session.get(DiagnosticReport, document.id) if session is not None else None
    addenda = [a.created_at for a in report.addenda] if report is not None else []
    signer = document.signed_by
    author = ({"reference": f"Practitioner/{signer.practitioner_id}", "display": signer_name(signer)}
              if signer is not None and signer.practitioner_id is not None
              else {"display": signer_name(signer)})
    return {
        "resourceType": "DocumentReference",
        "id": str(document.id),
        "meta": {"lastUpdated": fhir_instant(document.updated_at)},
        "status": "current",
        "docStatus": "amended" if ReportStatus(document.status) is ReportStatus.AMENDED else "final",
        "type": IMAGING_STUDY_CODE,
        "category": [RAD_CATEGORY],
        "subject": reference("Patient", document.patient_id),
        "date": fhir_instant(document.signed_at),
        "author": [author],
        "authenticator": author if "reference" in author else None,
        "description": f"Signed imaging report {document.id}",
        "content": [{"attachment": attachment} for attachment in
                    report_pdf_attachments(document.id, last_changed(document.signed_at, addenda))],
        "context": {
            "related": [reference("DiagnosticReport", document.id), reference("ImagingStudy", document.study_id)],
        },
    }


def document_related_param() -> SearchParam:
    """`related`: the DiagnosticReport (its document has the same id) or the ImagingStudy."""

    def clause(value: str) -> ColumnElement[bool]:
        type_name = "ImagingStudy" if "ImagingStudy/" in value else "DiagnosticReport"
        row_id = reference_id(value, type_name)
        return (ReportDocument.study_id if type_name == "ImagingStudy" else ReportDocument.id) == row_id

    return SearchParam("reference", clause, "The signed DiagnosticReport (or its ImagingStudy) the document presents")


def report_conclusion_text(report: DiagnosticReport) -> str:
    """The signed conclusion followed by each addendum (dated), the original left as it was."""
    parts = [report.conclusion] if report.conclusion else []
    parts += [f"Addendum ({fhir_instant(a.created_at)}): {a.text}" for a in report.addenda]
    return "\n\n".join(parts)


def _analysis_job(report: DiagnosticReport) -> AnalysisJob | None:
    if report.analysis_job is not None or report.analysis_job_id is None:
        return report.analysis_job
    session = object_session(report)
    return session.get(AnalysisJob, report.analysis_job_id) if session is not None else None


def _outcome_code(job: AnalysisJob, *, failed: bool) -> dict[str, Any]:
    if failed:
        return {"coding": [{"system": AI_OUTCOME_SYSTEM, "code": "failed", "display": "AI analysis failed"}],
                "text": f"{FAILED_PREFIX}{job.error}"}
    return {
        "coding": [{"system": AI_OUTCOME_SYSTEM, "code": "not-applicable", "display": "AI not applicable"}],
        "text": f"{NOT_APPLICABLE_PREFIX}{job.not_applicable_reason}",
    }


def _absent_ai_observation(report: DiagnosticReport, job: AnalysisJob, *, failed: bool) -> dict[str, Any]:
    """The AI result that is absent, and why: the series was outside the model's validated range
    (not-applicable), or the model failed on it (error)."""
    absent = ({"coding": [{"system": DATA_ABSENT_REASON_SYSTEM, "code": "error", "display": "Error"}],
               "text": f"{FAILED_PREFIX}{job.error}"} if failed else
              {"coding": [{"system": DATA_ABSENT_REASON_SYSTEM, "code": "not-applicable", "display": "Not Applicable"}],
               "text": f"{NOT_APPLICABLE_PREFIX}{job.not_applicable_reason}"})
    return {
        "resourceType": "Observation",
        "id": AI_OUTCOME_ID,
        "status": OBSERVATION_STATUS_BY_REPORT[ReportStatus(report.status)],
        "category": [OBSERVATION_IMAGING_CATEGORY],
        "code": {"text": AI_RESULT_TEXT},
        "subject": reference("Patient", report.patient_id),
        "effectiveDateTime": fhir_instant(job.finished_at) if job.finished_at else None,
        "dataAbsentReason": absent,
        "device": reference("Device", job.model_version_id) if job.model_version_id is not None else None,
        "derivedFrom": [reference("ImagingStudy", report.study_id)],
    }


def _card_attachment(card: ModelCard) -> dict[str, Any]:
    return {
        "contentType": "text/plain; charset=utf-8",
        "language": "en",
        "title": f"AI model card: {card.model}",
        "data": base64.b64encode(card.text().encode("utf-8")).decode("ascii"),
    }


def _signer(report: DiagnosticReport) -> dict[str, Any]:
    signer = report.signed_by
    if signer is not None and signer.practitioner_id is not None:
        return {"reference": f"Practitioner/{signer.practitioner_id}", "display": signer.username}
    return {"display": signer.username if signer is not None else f"user {report.signed_by_user_id}"}


def _report_performer(report: DiagnosticReport, findings: list[Finding]) -> list[dict[str, Any]] | None:
    """Who produced an unsigned preliminary report: the AI model.

    DiagnosticReport.performer may not reference a Device in R4, so the model is named in a
    display-only reference; each Observation links the Device itself.
    """
    if ReportStatus(report.status) is not ReportStatus.PRELIMINARY or report.signed_by_user_id is not None:
        return None
    model_version = next((f.model_version for f in findings if f.model_version is not None), None)
    if model_version is None and report.analysis_job_id is not None:
        session = object_session(report)
        job = session.get(AnalysisJob, report.analysis_job_id) if session is not None else None
        model_version = job.model_version if job is not None else None
    if model_version is None:
        return None
    return [{"display": f"AI model {model_version.label} (Device/{model_version.id}), not yet reviewed"}]


def observation_status(finding: Finding, report_status: ReportStatus) -> str:
    if ReviewStatus(finding.review_status) is ReviewStatus.REJECTED:
        return "cancelled"
    return OBSERVATION_STATUS_BY_REPORT[ReportStatus(report_status)]


def observation_to_fhir(finding: Finding) -> dict[str, Any]:
    report = finding.report
    review = ReviewStatus(finding.review_status)
    source = FindingSource(finding.source)
    components: list[dict[str, Any]] = [
        {
            "code": {
                "coding": [{"system": LOINC, "code": "21889-1", "display": "Size Tumor"}],
                "text": "Longest diameter",
            },
            "valueQuantity": {
                "value": Decimal(str(round(finding.diameter_mm, 1))),
                "unit": "mm",
                "system": UCUM,
                "code": "mm",
            },
        }
    ]
    if finding.confidence is not None:
        components.append(
            {
                "code": {"text": "AI confidence"},
                "valueQuantity": {
                    "value": Decimal(str(round(finding.confidence * 100, 1))),
                    "unit": "%",
                    "system": UCUM,
                    "code": "%",
                },
            }
        )
    components.extend(
        [
            {
                "code": {"text": "Bounding box (key slice)"},
                "valueString": f"{finding.x0},{finding.y0},{finding.x1},{finding.y1} px on slice {finding.slice_index}",
            },
            {"code": {"text": SOP_INSTANCE_UID_TEXT}, "valueString": finding.sop_instance_uid},
            {"code": {"text": "Slices spanned"}, "valueInteger": finding.n_slices},
        ]
    )
    if finding.label is not None:
        components.append({"code": {"text": "Model output label"}, "valueString": finding.label})
    if finding.volume_mm3 is not None:
        components.append({"code": {"text": "Segmented volume"}, "valueQuantity": {
            "value": Decimal(str(round(finding.volume_mm3, 1))), "unit": "mm3", "system": UCUM, "code": "mm3"}})
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(finding.id),
        "status": observation_status(finding, report.status),
        "category": [OBSERVATION_IMAGING_CATEGORY],
        "code": {"text": AI_FINDING_TEXT if source is FindingSource.AI else RADIOLOGIST_FINDING_TEXT},
        "subject": reference("Patient", finding.patient_id),
        "effectiveDateTime": fhir_instant(finding.created_at),
        "interpretation": [
            {
                "coding": [{"system": REVIEW_STATUS_SYSTEM, "code": review.value, "display": REVIEW_STATUS_DISPLAY[review]}],
                "text": REVIEW_STATUS_DISPLAY[review],
            }
        ],
        "bodySite": {"text": finding.body_site},
        "device": reference("Device", finding.model_version_id),
        "derivedFrom": [reference("ImagingStudy", report.study_id)],
        "component": components,
    }
    analysis = finding.package_analysis
    if analysis is not None:
        # A partner model's finding: the package version is the device and the method, so a client
        # can tell which model said what (packages are not Device resources of ours).
        package = analysis.model_package
        coding = {"system": MODEL_PACKAGE_SYSTEM, "code": f"{package.name}|{package.version}",
                  "display": f"{package.label} ({package.partner_organization.name})"}
        observation["device"] = {"identifier": {"system": MODEL_PACKAGE_SYSTEM, "value": coding["code"]},
                                 "display": f"Partner AI model {coding['display']}"}
        observation["method"] = {"coding": [coding], "text": f"Partner AI model {coding['display']}"}
    return observation


def observation_status_param() -> SearchParam:
    def clause(value: str) -> ColumnElement[bool]:
        code = value.split("|")[-1]
        if code == "cancelled":
            return Finding.review_status == ReviewStatus.REJECTED
        report_status = next((r for r, o in OBSERVATION_STATUS_BY_REPORT.items() if o == code), None)
        if report_status is None:
            return false()
        return and_(
            Finding.review_status != ReviewStatus.REJECTED,
            Finding.report_id.in_(select(DiagnosticReport.id).where(DiagnosticReport.status == report_status)),
        )

    return SearchParam("token", clause, "preliminary | final | amended | cancelled")


def observation_derived_from_param() -> SearchParam:
    def clause(value: str) -> ColumnElement[bool]:
        study_id = reference_id(value, "ImagingStudy")
        return Finding.report_id.in_(select(DiagnosticReport.id).where(DiagnosticReport.study_id == study_id))

    return SearchParam(
        "reference", clause, "The ImagingStudy the finding was read from", target="ImagingStudy", path="derivedFrom"
    )


def diagnostic_report_result_param() -> SearchParam:
    """Reports whose results include the Observation (a rejected finding is no result)."""

    def clause(value: str) -> ColumnElement[bool]:
        finding_id = reference_id(value, "Observation")
        return DiagnosticReport.id.in_(
            select(Finding.report_id).where(Finding.id == finding_id, Finding.review_status != ReviewStatus.REJECTED)
        )

    return SearchParam("reference", clause, "An Observation among the report's results", target="Observation", path="result")


def register_fhir(app: Flask) -> None:
    register_resource(
        app,
        ResourceMapping(
            "Device",
            ModelVersion,
            device_to_fhir,
            None,
            {
                "_id": id_param(ModelVersion.id),
                "identifier": identifier_param(ModelVersion.weights_sha256, WEIGHTS_SHA256_SYSTEM, "Weights sha256"),
                "status": SearchParam(
                    "token", lambda value: ModelVersion.active == (value.split("|")[-1] == "active"), "active | inactive"
                ),
            },
        ),
    )
    report_patient = patient_reference_param(DiagnosticReport.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "DiagnosticReport",
            DiagnosticReport,
            diagnostic_report_to_fhir,
            DiagnosticReport.patient_id,
            {
                "_id": id_param(DiagnosticReport.id),
                "patient": report_patient,
                "subject": report_patient,
                "status": token_param(DiagnosticReport.status, "preliminary | final | amended"),
                "based-on": reference_param(DiagnosticReport.referral_id, "ServiceRequest", "The referral"),
                "issued": date_param(DiagnosticReport.issued_at, "When the report was issued"),
                "result": diagnostic_report_result_param(),
            },
        ),
    )
    finding_patient = patient_reference_param(Finding.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "Observation",
            Finding,
            observation_to_fhir,
            Finding.patient_id,
            {
                "_id": id_param(Finding.id),
                "patient": finding_patient,
                "subject": finding_patient,
                "status": observation_status_param(),
                "derived-from": observation_derived_from_param(),
                "device": reference_param(Finding.model_version_id, "Device", "The AI model version"),
            },
            load_options=(joinedload(Finding.report),),  # its status is the Observation's
        ),
    )
    document_patient = patient_reference_param(ReportDocument.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "DocumentReference",
            ReportDocument,
            document_reference_to_fhir,
            ReportDocument.patient_id,
            {
                "_id": id_param(ReportDocument.id),
                "patient": document_patient,
                "subject": document_patient,
                "related": document_related_param(),
                "date": date_param(ReportDocument.signed_at, "When the report was signed"),
            },
        ),
    )
