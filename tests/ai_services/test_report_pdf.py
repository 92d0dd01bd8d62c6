"""The signed report as a PDF: what it says in each language, who may download it, and how FHIR
points at it (DiagnosticReport.presentedForm, DocumentReference)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import AnalysisJob, DiagnosticReport, ReviewStatus
from ai_services.reading import add_addendum
from ai_services.report_pdf import render_signed_report
from ai_services.service import Box, active_model_version, add_finding, review_finding, sign_report
from hospital import i18n
from hospital.models import AuditEvent, Practitioner
from hospital.seed import DemoSeed
from tests.factories import make_preliminary_report, store_report_slices
from tests.pdf_checks import assert_printable_with_embedded_cjk_font, pdf_image_count, pdf_info, pdf_text

CONCLUSION = "One 8 mm nodule in the right upper lobe; CT follow-up in 12 months."


def signed_report(
    session: Session, app: Flask, demo: DemoSeed, *, store_images: bool = True, missed: Box | None = None
) -> DiagnosticReport:
    """A report of 王小明 with one accepted AI finding and one rejected (and the `missed` one the
    radiologist added on slice 4), signed by the radiologist."""
    demo.patient.family_name, demo.patient.given_name = "王", "小明"
    report = make_preliminary_report(session, demo, [(8, 8, 16, 16), (2, 2, 6, 6)])
    job = session.get(AnalysisJob, report.analysis_job_id)
    assert job is not None
    model = active_model_version(session)
    assert model is not None
    job.model_version_id = model.id
    if store_images:
        volume = np.full((10, 32, 32), -800.0, dtype=np.float32)
        volume[0, 8:16, 8:16] = 40.0  # the nodule the finding boxes
        store_report_slices(session, Path(app.config["DICOM_STORAGE_DIR"]), report, volume,
                            pixel_spacing_mm=0.8, slice_thickness_mm=1.0)
    radiologist = demo.users["radiologist"]
    first, second = report.findings
    review_finding(session, radiologist, report.id, first.id, ReviewStatus.ACCEPTED, None, None)
    review_finding(session, radiologist, report.id, second.id, ReviewStatus.REJECTED, None, "vessel")
    if missed is not None:
        add_finding(session, radiologist, report.id, 3, missed, "missed by the AI")
    sign_report(session, radiologist, report.id, CONCLUSION)
    session.commit()
    return report


def radiologist_name(session: Session, demo: DemoSeed) -> str:
    practitioner = session.get(Practitioner, demo.users["radiologist"].practitioner_id)
    assert practitioner is not None
    return practitioner.display_name


def download(client: Any, report_id: int, query: str = "") -> Any:
    return client.get(f"/reports/{report_id}/report.pdf{query}")


def test_the_signed_report_prints_in_english_with_everything_the_signature_vouches_for(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo)
    response = download(as_role("patient"), report.id)

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/pdf"
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.headers["Content-Language"] == "en"
    disposition = response.headers["Content-Disposition"]
    assert re.fullmatch(rf'attachment; filename="imaging-report-{report.id}-\d{{4}}-\d\d-\d\d-en\.pdf"', disposition)
    text = pdf_text(response.data)
    for expected in ("Imaging report", demo.imaging_centre.name, "王小明", demo.patient.mrn, "Medical record number (MRN)",
                     "CT chest", "cough", "Computed tomography (CT)", "Finding 1", "Impression", CONCLUSION,
                     radiologist_name(db_session, demo), "radiologist", "lesion-detector", "Intended use",
                     "Not validated on patient data", "Page 1 of "):
        assert expected in text, f"{expected!r} is not in the PDF: {text}"
    assert "Finding 2" not in text, "the rejected finding is not printed"
    assert pdf_image_count(response.data) >= 1, "the key slice is embedded"
    info = pdf_info(response.data)
    assert info["Title"] == f"Imaging report {report.id}" and info["Tagged"] == "yes", info  # screen readers
    assert_printable_with_embedded_cjk_font(response.data)


def test_each_finding_says_who_found_it_and_keeps_its_key_image(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo, missed=Box(20, 20, 26, 26))

    response = download(as_role("radiologist"), report.id)

    text = pdf_text(response.data)
    assert "Finding 1: about 8 mm across, on image 1 Found by the AI, confirmed by the radiologist" in text, text
    assert "Finding 2:" in text and "on image 4 Added by the radiologist" in text, text
    assert pdf_image_count(response.data) == 2, "one key image per kept finding"


def test_the_same_report_prints_in_chinese_for_a_reader_who_reads_chinese(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo)
    demo.users["patient"].locale = "zh_CN"
    db_session.commit()

    response = download(as_role("patient"), report.id)

    assert response.status_code == 200
    assert response.headers["Content-Language"] == "zh-CN"
    assert response.headers["Content-Disposition"].endswith('-zh-CN.pdf"')
    text = pdf_text(response.data)
    for expected in ("影像报告", "王小明", "患者", "病历号", "检查", "印象", "放射科医生", "第 1 页，共 1 页", CONCLUSION):
        assert expected in text, f"{expected!r} is not in the PDF: {text}"
    assert "Imaging report" not in text
    assert_printable_with_embedded_cjk_font(response.data)


def test_a_job_makes_the_pdf_in_the_recipients_language(app: Flask, demo: DemoSeed, db_session: Session) -> None:
    """Outside a request (a mail to the patient, made by a worker) the PDF speaks the recipient's
    language: `i18n.for_user`, as docs/i18n.md asks of work done for someone else."""
    report = signed_report(db_session, app, demo, store_images=False)
    recipient = demo.users["patient"]
    recipient.locale = "zh_CN"

    with i18n.for_user(recipient):
        document = render_signed_report(db_session, report, Path(app.config["DICOM_STORAGE_DIR"]))

    assert document.language == "zh-CN" and document.filename.endswith("-zh-CN.pdf")
    assert "影像报告" in pdf_text(document.content) and "王小明" in pdf_text(document.content)


def test_a_clinician_prints_the_report_in_the_patients_language_with_lang(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo)
    clinician = as_role("clinician")

    chinese = download(clinician, report.id, "?lang=zh-CN")
    english = download(clinician, report.id)

    assert chinese.status_code == english.status_code == 200
    assert "影像报告" in pdf_text(chinese.data) and "Imaging report" in pdf_text(english.data)
    refused = download(clinician, report.id, "?lang=fr")
    assert refused.status_code == 400
    assert "English (en) or Simplified Chinese (zh_CN)" in refused.get_data(as_text=True)


def test_an_amended_report_prints_its_addendum_after_the_original(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo, store_images=False)
    add_addendum(db_session, demo.users["radiologist"], report.id, "Compared with the prior: unchanged.")
    db_session.commit()

    text = pdf_text(download(as_role("clinician"), report.id).data)

    assert "(amended)" in text and "Addendum of" in text
    assert text.index(CONCLUSION) < text.index("Compared with the prior: unchanged.")
    assert pdf_image_count(download(as_role("clinician"), report.id).data) == 0, "no stored slice, no key image"


def test_only_those_who_may_read_the_report_download_it_and_the_download_is_audited(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo, store_images=False)

    assert download(as_role("patient2"), report.id).status_code in (403, 404)
    assert download(as_role("patient"), 999_999).status_code == 404
    assert download(as_role("patient"), report.id).status_code == 200
    reads = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "DiagnosticReport", AuditEvent.entity_id == str(report.id), AuditEvent.action == "R",
        AuditEvent.user_id == demo.users["patient"].id)).all()
    assert reads and reads[-1].outcome == 0
    denied = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_id == str(report.id), AuditEvent.user_id == demo.users["patient2"].id)).all()
    assert denied and denied[-1].outcome != 0


def test_a_draft_has_no_pdf(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    draft = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    db_session.commit()

    assert download(as_role("patient"), draft.id).status_code == 404  # a patient does not see drafts at all
    refused = download(as_role("radiologist"), draft.id)
    assert refused.status_code == 409
    assert "not signed yet" in refused.get_data(as_text=True)


# --- FHIR ------------------------------------------------------------------------------------------


def test_fhir_diagnostic_report_presents_the_pdf_in_both_languages(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo, store_images=False)
    clinician = as_role("clinician")

    body = clinician.get(f"/fhir/DiagnosticReport/{report.id}").get_json()

    pdfs = [form for form in body["presentedForm"] if form["contentType"] == "application/pdf"]
    assert sorted(form["language"] for form in pdfs) == ["en", "zh-CN"]
    base = app.config["PUBLIC_BASE_URL"]
    for form in pdfs:
        lang = form["language"].replace("-", "_")
        assert form["url"] == f"{base}/reports/{report.id}/report.pdf?lang={lang}"
        assert form["title"].startswith(f"Imaging report {report.id} (PDF")
        assert form["creation"].startswith(report.signed_at.isoformat()[:19])
        fetched = clinician.get(form["url"].removeprefix(base))
        assert fetched.status_code == 200 and fetched.headers["Content-Language"] == form["language"]

    draft = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    db_session.commit()
    draft_body = as_role("radiologist").get(f"/fhir/DiagnosticReport/{draft.id}").get_json()
    assert not [f for f in draft_body.get("presentedForm", []) if f["contentType"] == "application/pdf"]


def test_fhir_document_reference_is_the_signed_reports_pdf(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo, store_images=False)
    draft = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    db_session.commit()
    clinician = as_role("clinician")

    read = clinician.get(f"/fhir/DocumentReference/{report.id}")
    assert read.status_code == 200, read.get_data(as_text=True)
    document = read.get_json()
    assert document["resourceType"] == "DocumentReference" and document["status"] == "current"
    assert document["docStatus"] == "final"
    assert document["subject"] == {"reference": f"Patient/{demo.patient.id}"}
    assert {"reference": f"DiagnosticReport/{report.id}"} in document["context"]["related"]
    assert document["author"][0]["display"] == radiologist_name(db_session, demo)
    attachments = [c["attachment"] for c in document["content"]]
    assert {a["contentType"] for a in attachments} == {"application/pdf"}
    assert sorted(a["language"] for a in attachments) == ["en", "zh-CN"]

    assert clinician.get(f"/fhir/DocumentReference/{draft.id}").status_code == 404, "a draft has no document"
    for query in (f"patient=Patient/{demo.patient.id}", f"subject={demo.patient.id}",
                  f"related=DiagnosticReport/{report.id}", f"related=ImagingStudy/{report.study_id}"):
        bundle = clinician.get(f"/fhir/DocumentReference?{query}").get_json()
        ids = [entry["resource"]["id"] for entry in bundle.get("entry", [])]
        assert ids == [str(report.id)], (query, bundle)
    other = clinician.get(f"/fhir/DocumentReference?patient=Patient/{demo.other_patient.id}")
    assert other.get_json().get("entry", []) == [] or other.status_code == 403

    assert as_role("patient").get(f"/fhir/DocumentReference/{report.id}").status_code == 200
    assert as_role("patient2").get(f"/fhir/DocumentReference/{report.id}").status_code in (403, 404)
    assert as_role("pharmacist").get(f"/fhir/DocumentReference/{report.id}").status_code in (403, 404)


def test_an_amended_reports_document_says_so(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = signed_report(db_session, app, demo, store_images=False)
    add_addendum(db_session, demo.users["radiologist"], report.id, "Addendum text.")
    db_session.commit()

    document = as_role("clinician").get(f"/fhir/DocumentReference/{report.id}").get_json()

    assert document["docStatus"] == "amended"
    creation = {datetime.fromisoformat(c["attachment"]["creation"]) for c in document["content"]}
    assert creation == {report.addenda[-1].created_at}, "the document changed with the addendum"
