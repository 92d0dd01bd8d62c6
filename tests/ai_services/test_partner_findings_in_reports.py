"""A partner model's findings as each reader meets them: a classification is its label and
probability (not an area of 0 mm boxed over the whole field), a segmentation its region's volume,
each grouped under its model's name, version and partner: on the sign preview, the patient's page
and the report's PDF, in English and Chinese."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from ai_services.models import (
    AnalysisStatus,
    DiagnosticReport,
    Finding,
    FindingSource,
    PackageAnalysis,
    PackageStatus,
    ReviewStatus,
)
from ai_services.package_service import approve_package, submit_package
from ai_services.service import review_finding, sign_report, signing_conclusion
from hospital.seed import DemoSeed
from tests.ai_services.package_factory import make_classifier_package
from tests.factories import make_preliminary_report, store_report_slices
from tests.pages import choose_language, csrf_token_of, sign_in
from tests.pdf_checks import pdf_image_count, pdf_text


def report_with_partner_findings(session: Session, app: Flask, demo: DemoSeed, tmp_path: Path) -> DiagnosticReport:
    """A draft with the built-in model's 8 mm area on slice 1, and a partner model's run that
    classified the study "abnormal" (87%) and segmented a 1,234 mm³ region on slice 3; all accepted."""
    package = submit_package(session, make_classifier_package(tmp_path / "c", name="chest-triage"),
                             demo.users["partner"], Path(app.config["AI_MODELS_DIR"]))
    package.status = PackageStatus.AWAITING_APPROVAL
    approve_package(session, package.id, demo.users["admin"])
    report = make_preliminary_report(session, demo, [(8, 8, 16, 16)])
    volume = np.full((10, 32, 32), -800.0, dtype=np.float32)
    volume[0, 8:16, 8:16] = 40.0
    store_report_slices(session, Path(app.config["DICOM_STORAGE_DIR"]), report, volume,
                        pixel_spacing_mm=0.8, slice_thickness_mm=1.0)
    run = PackageAnalysis(study_id=report.study_id, report_id=report.id, model_package_id=package.id,
                          status=AnalysisStatus.COMPLETED, attempts=1)
    session.add(run)
    session.flush()
    [area] = report.findings
    uids = report.analysis_job.slice_sop_instance_uids  # type: ignore[union-attr]
    for finding in (
        Finding(report_id=report.id, patient_id=report.patient_id, source=FindingSource.AI, package_analysis_id=run.id,
                sop_instance_uid=uids[2], slice_index=2, x0=0, y0=0, x1=32, y1=32, diameter_mm=0.0,
                confidence=0.87, label="abnormal"),
        Finding(report_id=report.id, patient_id=report.patient_id, source=FindingSource.AI, package_analysis_id=run.id,
                sop_instance_uid=uids[2], slice_index=2, x0=4, y0=4, x1=19, y1=19, diameter_mm=12.0,
                confidence=0.7, label="segmented region", volume_mm3=1234.4),
    ):
        session.add(finding)
    session.flush()
    session.expire(report, ["findings"])
    for finding in report.findings:
        review_finding(session, demo.users["radiologist"], report.id, finding.id, ReviewStatus.ACCEPTED)
    session.commit()
    assert area.kind == "area"
    return report


def text_of(page: str) -> str:
    return " ".join(html.unescape(page).split())


def test_the_sign_preview_and_summary_tell_a_classification_by_its_label_under_its_model(
    app: Flask, client: FlaskClient, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    report = report_with_partner_findings(db_session, app, demo, tmp_path)
    area, verdict, region = report.findings
    assert (verdict.kind, region.kind) == ("classification", "segmentation")
    sign_in(client, "radiologist")
    page = client.get(f"/reports/{report.id}").get_data(as_text=True)

    preview = text_of(client.post(f"/reports/{report.id}", data={
        "action": "sign", "csrf_token": csrf_token_of(page)}).get_data(as_text=True))

    partner = demo.users["partner"].organization.name  # type: ignore[union-attr]
    assert f"Finding {area.id}: 8 mm on slice 1 (accepted)" in preview
    assert f"Partner AI model: chest-triage 1.0.0 from {partner}" in preview
    assert f"Finding {verdict.id}: the study classified as “abnormal”, probability 87% (accepted)" in preview
    assert f"Finding {region.id}: segmented region of 1,234 mm³, 12 mm across, on slice 3 (accepted)" in preview
    assert f"Finding {verdict.id}: 0 mm" not in preview
    # The summary a signature records counts the sized areas and says the class as its label.
    assert ("2 abnormalities confirmed by the radiologist (largest 12 mm). chest-triage 1.0.0 classified the study "
            "as “abnormal” (probability 87%), confirmed by the radiologist.") in preview
    assert signing_conclusion(report, None) in html.unescape(preview)

    choose_language(client, "zh_CN", f"/reports/{report.id}")
    chinese = text_of(client.post(f"/reports/{report.id}", data={
        "action": "sign", "csrf_token": csrf_token_of(page)}).get_data(as_text=True))
    assert f"合作方 AI 模型：chest-triage 1.0.0（{partner}）" in chinese
    assert f"发现 {verdict.id}：本检查分类为“abnormal”，概率 87%（已接受）" in chinese
    assert f"发现 {region.id}：第 3 层，分割区域 1,234 mm³，最大径 12 mm（已接受）" in chinese


def test_the_patient_reads_a_classification_as_a_result_of_a_named_model_not_an_area(
    app: Flask, as_role: Any, client: FlaskClient, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    report = report_with_partner_findings(db_session, app, demo, tmp_path)
    sign_report(db_session, demo.users["radiologist"], report.id, "Abnormal study; see the partner model's regions.")
    db_session.commit()
    partner = demo.users["partner"].organization.name  # type: ignore[union-attr]
    sign_in(client, "patient")

    page = text_of(client.get(f"/reports/{report.id}").get_data(as_text=True))

    assert "They found 2 small areas that your doctor will want to look at again. The largest measures about 12 " in page
    assert "A partner AI model also gave a result for the scan as a whole" in page
    assert "Area 1: about 8 millimetres across" in page
    assert f"Partner AI model: chest-triage 1.0.0 from {partner}" in page
    assert "Result 2: the scan as a whole was classified as “abnormal”, with a probability of 87%" in page
    assert "Area 3: about 1,234 cubic millimetres, 12 millimetres across" in page
    assert "0 millimetres" not in page
    verdict = report.findings[1]
    assert f'finding_id={verdict.id}' not in page  # no key image of a box over the whole field

    # The PDF says the same, grouped the same, with key images of the areas only.
    response = as_role("patient").get(f"/reports/{report.id}/report.pdf")
    assert response.status_code == 200
    text = " ".join(pdf_text(response.data).split())
    assert "Finding 1: about 8 mm across, on image 1" in text, text
    assert f"Partner AI model: chest-triage 1.0.0 ({partner})" in text, text
    assert "Finding 2: the scan as a whole classified as “abnormal”, with a probability of 87%" in text, text
    assert "Finding 3: a region of about 1,234 mm³, 12 mm across, on image 3" in text, text
    assert "about 0 mm" not in text
    assert pdf_image_count(response.data) == 2, "key images of the area and the region, none of the classification"

    choose_language(client, "zh_CN", f"/reports/{report.id}")
    chinese = text_of(client.get(f"/reports/{report.id}").get_data(as_text=True))
    assert f"合作方 AI 模型：chest-triage 1.0.0（{partner}）" in chinese
    assert "结果 2：整次扫描被分类为“abnormal”，概率 87%" in chinese
    assert "第 3 处：体积约 1,234 立方毫米，直径 12 毫米" in chinese
    chinese_pdf = " ".join(pdf_text(as_role("patient").get(f"/reports/{report.id}/report.pdf").data).split())
    assert f"合作方 AI 模型：chest-triage 1.0.0 ({partner})" in chinese_pdf, chinese_pdf
    assert "发现 2：整次扫描分类为“abnormal”，概率 87%" in chinese_pdf, chinese_pdf
    assert "发现 3：体积约 1,234 mm³ 的区域，最大径 12 毫米，位于第 3 幅图像" in chinese_pdf, chinese_pdf
