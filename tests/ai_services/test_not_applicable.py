"""A study outside the model's validated range, through the product: stored like a modality's
C-STOREs, analysed by the job, and the result is "AI not applicable: <reason>" on the job, the
report, the worklist's status API and FHIR; nothing is billed as an AI analysis, and the
radiologist still reads and signs it. A normal synthetic CT is still analysed and billed."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
from flask import Flask
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.fhir import (
    AI_OUTCOME_SYSTEM,
    DATA_ABSENT_REASON_SYSTEM,
    device_to_fhir,
    diagnostic_report_to_fhir,
)
from ai_services.jobs import analyse_study_again
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    ReportStatus,
)
from ai_services.report_outputs import report_outputs_request
from ai_services.service import sign_report
from hospital.fhir.registry import validate_resource
from hospital.models import JobRecord
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingStudy, StudyStatus
from imaging_orders.archive.public import store_instance
from referrals.models import ReferralStatus
from tests.ai_services import gate_series
from tests.factories import make_referral


def store_study(app: Flask, session: Session, demo: DemoSeed, build: Callable[[str], list[pydicom.Dataset]]) -> int:
    """Store the series as a complete study of the demo patient at the demo imaging centre."""
    referral = make_referral(session, demo, ReferralStatus.COMPLETED)
    session.commit()
    results = [store_instance(app, ds, transfer_syntax_uid=None, calling_ae="TESTMOD") for ds in build(generate_uid())]
    study = session.get(ImagingStudy, results[0].study_id)
    assert study is not None
    study.patient_id, study.referral_id = demo.patient.id, referral.id
    study.organization_id, study.status = demo.imaging_centre.id, StudyStatus.AVAILABLE
    session.commit()
    return study.id


def analysed(app: Flask, session: Session, demo: DemoSeed, build: Callable[[str], list[pydicom.Dataset]]) -> tuple[AnalysisJob, DiagnosticReport]:
    study_id = store_study(app, session, demo, build)
    analyse_study_again(session, study_id)
    session.flush()
    job = session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
    report = session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == study_id))
    assert job is not None and report is not None
    return job, report


def published(session: Session, event: str) -> list[JobRecord]:
    return list(session.scalars(select(JobRecord).where(JobRecord.event == event)))


CASES = {
    "nm": (gate_series.nm, "modality NM"),
    "rtdose": (gate_series.rtdose, "modality RTDOSE"),
    "mr": (gate_series.mr, "modality MR"),
    "localizer": (gate_series.localizer, "image type LOCALIZER"),
    "crop-128px": (gate_series.chest_crop_128, "field of view 192 mm"),
    "sagittal": (gate_series.sagittal, "sagittal images"),
    "nm-counts-as-ct": (lambda uid: gate_series.mislabelled_as_ct(gate_series.nm_counts_volume(), uid),
                        "pixel values do not look like CT"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_series_outside_the_validated_range_is_not_applicable_and_not_billed(
    case: str, app: Flask, db_session: Session, demo: DemoSeed
) -> None:
    build, words = CASES[case]
    job, report = analysed(app, db_session, demo, build)

    assert job.status is AnalysisStatus.NOT_APPLICABLE and job.error is None
    assert words in str(job.not_applicable_reason)
    assert report.status is ReportStatus.PRELIMINARY and report.findings == []
    assert report.conclusion.startswith(f"AI not applicable: {job.not_applicable_reason}")
    # No AnalysisCompleted: billing charges an AI analysis on that event only, and no AI SR is made.
    assert published(db_session, "ai.analysis_completed") == []
    assert report_outputs_request(db_session, report.id, app.config["DICOM_STORAGE_DIR"]) is None


def test_the_job_status_api_behind_the_worklist_says_why(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    job, _ = analysed(app, db_session, demo, gate_series.nm)
    db_session.commit()
    answer = as_role("imaging_staff").get(f"/api/studies/{job.study_id}/analysis").get_json()
    assert answer["status"] == "not_applicable"
    assert answer["not_applicable_reason"] == job.not_applicable_reason
    assert answer["summary"] == f"AI not applicable: {job.not_applicable_reason}"
    script = app.test_client().get("/static/js/analysis_progress.js")
    assert script.status_code == 200 and b"not_applicable: true" in script.data and b"job.summary" in script.data


def test_the_radiologist_reads_and_signs_a_not_applicable_study_and_fhir_says_why(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    job, report = analysed(app, db_session, demo, gate_series.sagittal)
    db_session.commit()
    reason = str(job.not_applicable_reason)

    page = as_role("radiologist").get(f"/reports/{report.id}").get_data(as_text=True)
    assert f"AI not applicable: {reason}" in page and "Sign report" in page

    resource = validate_resource(diagnostic_report_to_fhir(report))
    assert resource["conclusionCode"][0]["coding"][0] == {
        "system": AI_OUTCOME_SYSTEM, "code": "not-applicable", "display": "AI not applicable"}
    [outcome] = resource["contained"]
    assert {"reference": f"#{outcome['id']}"} in resource["result"]
    assert outcome["dataAbsentReason"]["coding"][0] == {
        "system": DATA_ABSENT_REASON_SYSTEM, "code": "not-applicable", "display": "Not Applicable"}
    assert outcome["dataAbsentReason"]["text"] == f"AI not applicable: {reason}"

    signed = sign_report(db_session, demo.users["radiologist"], report.id, "No abnormality on the radiologist's reading.")
    assert signed.status is ReportStatus.FINAL
    assert validate_resource(diagnostic_report_to_fhir(signed))["conclusionCode"][0]["coding"][0]["code"] == "not-applicable"


def test_a_normal_synthetic_ct_is_still_analysed_and_billed(app: Flask, db_session: Session, demo: DemoSeed) -> None:
    job, report = analysed(app, db_session, demo, lambda uid: gate_series.normal_ct(20_005, uid))
    assert job.status is AnalysisStatus.COMPLETED and job.not_applicable_reason is None
    assert sorted(r.handler for r in published(db_session, "ai.analysis_completed")) == [
        "ai_services.jobs.make_report_outputs", "ai_services.package_jobs.run_routed_packages",
        "billing.jobs.charge_ai_analysis"]
    resource = validate_resource(diagnostic_report_to_fhir(report))
    assert "conclusionCode" not in resource and "contained" not in resource


def test_the_model_card_from_the_manifest_is_beside_the_findings_and_in_fhir(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    job, report = analysed(app, db_session, demo, lambda uid: gate_series.normal_ct(20_006, uid))
    db_session.commit()
    assert job.model_version is not None
    manifest = job.model_version.manifest
    point = manifest["model_card"]["operating_point"]
    overall = manifest["independent_evaluation"]["overall"]
    # The card quotes the recorded independent evaluation; it does not make its own numbers.
    assert point["sensitivity"] == overall["sensitivity_at_operating_point"]["value"]
    assert point["false_positives_per_scan"] == overall["false_positives_per_scan"]["value"]
    assert point["sensitivity_ci95"] == overall["sensitivity_at_operating_point"]["ci95"]

    page = as_role("radiologist").get(f"/reports/{report.id}").get_data(as_text=True)
    card_html = page.split('id="model-card"')[1].split("</aside>")[0]
    assert f"About the AI model: lesion-detector {manifest['version']}" in card_html
    assert "Trained on synthetic data only." in card_html
    assert "Not validated on patient data" in card_html and "pixel spacing 0.5-1.6 mm" in card_html
    sensitivity = f"sensitivity {point['sensitivity']:.2f} (95% CI {point['sensitivity_ci95'][0]:.2f}-{point['sensitivity_ci95'][1]:.2f})"
    low, high = point["false_positives_per_scan_ci95"]
    assert sensitivity in card_html
    assert f"{point['false_positives_per_scan']:.1f} (95% CI {low:.2f}-{high:.2f}) false positives per scan" in card_html
    assert "synthetic.eval_phantoms.make_eval_scan" in card_html
    assert "Lesions of 5 mm are mostly missed" in card_html
    assert page.index('id="model-card"') < page.index("</aside>") < page.rindex("Sign report")

    resource = validate_resource(diagnostic_report_to_fhir(report))
    [form] = resource["presentedForm"]
    text = base64.b64decode(form["data"]).decode()
    assert form["title"] == f"AI model card: lesion-detector {manifest['version']}" and form["contentType"].startswith("text/plain")
    assert "Trained on synthetic data only." in text and sensitivity in text
    device = validate_resource(device_to_fhir(job.model_version))
    assert device["note"][0]["text"] == text
