"""The radiologist's reading workspace (issue 16): the reading list by clinical priority, the
report page with the clinical question and priors, free window/level, sign with a preview and a
confirmation, and addenda that make a signed report `amended`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ai_services.dicom_outputs import read_addenda
from ai_services.jobs import make_report_outputs
from ai_services.models import DiagnosticReport, ReportAddendum, ReportStatus, ReviewStatus
from ai_services.public import ReportAmended
from billing.models import ChargeItem
from followup.models import Consultation
from hospital.models import AuditEvent, JobRecord, Notification
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingInstance
from referrals.models import Priority, Referral
from tests.ai_services.test_report_pages import csrf_token_of, sign_in, store_slices
from tests.factories import make_preliminary_report


def _with_priority(session: Session, report: DiagnosticReport, priority: Priority, procedure: str) -> DiagnosticReport:
    referral = session.get(Referral, report.referral_id)
    assert referral is not None
    referral.priority = priority
    referral.procedure_description = procedure
    referral.reason = f"question for {procedure}"
    session.flush()
    return report


def _accept_all(session: Session, report: DiagnosticReport) -> None:
    for finding in report.findings:
        finding.review_status = ReviewStatus.ACCEPTED
    session.flush()


def test_reading_list_orders_by_clinical_priority_then_ai_urgency(
    client: FlaskClient, demo: DemoSeed, db_session: Session
) -> None:
    routine_big = _with_priority(db_session, make_preliminary_report(db_session, demo, [(0, 0, 40, 40)]),
                                 Priority.ROUTINE, "CT chest routine")
    stat_small = _with_priority(db_session, make_preliminary_report(db_session, demo, [(0, 0, 5, 5)]),
                                Priority.STAT, "CT chest stat")
    urgent_big = _with_priority(db_session, make_preliminary_report(db_session, demo, [(0, 0, 30, 30)]),
                                Priority.URGENT, "CT chest urgent big")
    urgent_small = _with_priority(db_session, make_preliminary_report(db_session, demo, [(0, 0, 8, 8)]),
                                  Priority.URGENT, "CT chest urgent small")
    asap = _with_priority(db_session, make_preliminary_report(db_session, demo, []), Priority.ASAP, "CT chest asap")
    db_session.commit()
    sign_in(client, "radiologist")

    page = client.get("/reading").get_data(as_text=True)
    order = [stat_small, asap, urgent_big, urgent_small, routine_big]
    positions = [page.index(f'href="/reports/{r.id}"') for r in order]
    assert positions == sorted(positions), "stat > asap > urgent > routine, then the AI's urgency"
    assert "CT chest urgent big" in page and "<th>Examination</th>" in page
    assert ">stat</span>" in page and ">routine</span>" in page


def test_report_page_shows_the_clinical_question_and_prior_reports(
    client: FlaskClient, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    prior = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    _accept_all(db_session, prior)
    prior.status = ReportStatus.FINAL
    prior.issued_at = prior.issued_at - timedelta(days=200)
    current = _with_priority(db_session, make_preliminary_report(db_session, demo, [(4, 4, 12, 12)]),
                             Priority.URGENT, "CT chest follow-up")
    later = make_preliminary_report(db_session, demo, [])
    later.issued_at = current.issued_at + timedelta(days=3)
    store_slices(db_session, app, demo, prior)
    store_slices(db_session, app, demo, current)
    db_session.commit()
    sign_in(client, "radiologist")

    page = client.get(f"/reports/{current.id}").get_data(as_text=True)
    assert "question for CT chest follow-up" in page and "CT chest follow-up" in page
    assert 'class="badge bad">urgent' in page
    assert f'href="/reports/{prior.id}"' in page, "the older report of the patient is listed"
    assert f'href="/reports/{later.id}"' not in page, "a later report is not a prior"
    # Side by side: the prior's slices in a second viewer that follows the current one.
    page = client.get(f"/reports/{current.id}?prior={prior.id}").get_data(as_text=True)
    assert 'id="prior-viewer"' in page and f"/reports/{prior.id}/slices/" in page
    assert client.get(f"/reports/{prior.id}/slices/0.png").status_code == 200
    # A prior must be an older report of the same patient.
    assert 'id="prior-viewer"' not in client.get(f"/reports/{current.id}?prior={later.id}").get_data(as_text=True)
    listed = db_session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.description.like("prior reports%")))
    assert listed and listed >= 1, "the prior list is audited"


def test_free_window_level_renders_the_slice_with_the_asked_centre_and_width(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = make_preliminary_report(db_session, demo, [])
    store_slices(db_session, app, demo, report)
    db_session.commit()
    radiologist = as_role("radiologist")
    base = f"/reports/{report.id}/slices/0.png"
    # The slices hold -800 HU: grey in a window centred there, black in a soft-tissue window.
    centred = radiologist.get(f"{base}?wc=-800&ww=400")
    assert centred.status_code == 200 and centred.data != radiologist.get(f"{base}?window=soft_tissue").data
    assert radiologist.get(f"{base}?wc=-800&ww=0").status_code == 400
    assert radiologist.get(f"{base}?wc=abc&ww=400").status_code == 400
    assert radiologist.get(f"{base}?boxes=0").status_code == 200


def test_sign_shows_a_preview_and_signs_only_when_confirmed(
    client: FlaskClient, demo: DemoSeed, db_session: Session
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12), (20, 20, 24, 24)])
    report.findings[0].review_status = ReviewStatus.ACCEPTED
    report.findings[1].review_status = ReviewStatus.REJECTED
    db_session.commit()
    sign_in(client, "radiologist")
    token = csrf_token_of(client.get(f"/reports/{report.id}").get_data(as_text=True))

    preview = client.post(f"/reports/{report.id}", data={"csrf_token": token, "action": "sign",
                                                        "conclusion": "One nodule, follow up."})
    text = preview.get_data(as_text=True)
    assert preview.status_code == 200 and "Confirm" in text and "One nodule, follow up." in text
    assert f"Finding {report.findings[0].id}" in text and f"Finding {report.findings[1].id}" not in text
    db_session.refresh(report)
    assert report.status is ReportStatus.PRELIMINARY, "the preview signs nothing"

    confirmed = client.post(f"/reports/{report.id}", data={"csrf_token": token, "action": "sign",
                                                          "conclusion": "One nodule, follow up.", "confirm": "yes"})
    assert confirmed.status_code == 302
    db_session.refresh(report)
    assert report.status is ReportStatus.FINAL and report.conclusion == "One nodule, follow up."


def test_an_addendum_amends_a_signed_report_and_keeps_the_original(
    as_role: Any, client: FlaskClient, demo: DemoSeed, db_session: Session
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    _accept_all(db_session, report)
    db_session.commit()
    radiologist = as_role("radiologist")
    url = f"/api/reports/{report.id}/addenda"
    assert radiologist.post(url, json={"text": "too early"}).status_code == 409, "only a signed report is amended"
    assert radiologist.post(f"/api/reports/{report.id}/sign", json={"conclusion": "Nodule 8 mm."}).status_code == 200
    assert as_role("clinician").post(url, json={"text": "not mine"}).status_code == 403
    assert radiologist.post(url, json={"text": "  "}).status_code == 400

    added = radiologist.post(url, json={"text": "Compared with the prior: unchanged."})
    assert added.status_code == 201, added.get_data(as_text=True)
    body = radiologist.get(f"/api/reports/{report.id}").get_json()
    assert body["status"] == "amended" and body["conclusion"] == "Nodule 8 mm."
    assert [a["text"] for a in body["addenda"]] == ["Compared with the prior: unchanged."]
    fhir = radiologist.get(f"/fhir/DiagnosticReport/{report.id}").get_json()
    assert fhir["status"] == "amended" and "Compared with the prior: unchanged." in fhir["conclusion"]
    assert "Nodule 8 mm." in fhir["conclusion"]

    handlers = db_session.scalars(select(JobRecord.handler).where(JobRecord.event == ReportAmended.name)).all()
    assert sorted(handlers) == ["ai_services.jobs.make_report_outputs", "ai_services.jobs.notify_report_amended",
                                "integration.jobs.notify_report_amended", "integration.jobs.send_results_for_amendment"]
    # The referring clinician and the patient are told, once each (the inline job ran after the commit).
    told = db_session.scalars(select(Notification.kind).where(Notification.event_key.like("report-amended:%"))).all()
    assert sorted(told) == ["report_amended", "report_updated"]
    # On the page, the original conclusion and the addendum both show.
    sign_in(client, "clinician")
    page = client.get(f"/reports/{report.id}").get_data(as_text=True)
    assert "Nodule 8 mm." in page and "Compared with the prior: unchanged." in page and "Addendum" in page


def test_the_addendum_form_on_the_page(client: FlaskClient, demo: DemoSeed, db_session: Session) -> None:
    report = make_preliminary_report(db_session, demo, [])
    report.status = ReportStatus.FINAL
    db_session.commit()
    sign_in(client, "radiologist")
    page = client.get(f"/reports/{report.id}").get_data(as_text=True)
    assert 'id="addendum-form"' in page
    response = client.post(f"/reports/{report.id}/addenda", data={"csrf_token": csrf_token_of(page),
                                                                 "text": "Lung bases clear."})
    assert response.status_code == 302
    assert db_session.scalar(select(ReportAddendum.text).where(ReportAddendum.report_id == report.id)) == "Lung bases clear."


def test_an_addendum_adds_no_charge_and_no_second_consultation(
    as_role: Any, demo: DemoSeed, db_session: Session
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 30, 30)])
    _accept_all(db_session, report)
    db_session.commit()
    radiologist = as_role("radiologist")
    assert radiologist.post(f"/api/reports/{report.id}/sign", json={}).status_code == 200
    charges = db_session.scalar(select(func.count()).select_from(ChargeItem))
    consultations = db_session.scalar(select(func.count()).select_from(Consultation))
    assert consultations == 1

    assert radiologist.post(f"/api/reports/{report.id}/addenda", json={"text": "Size revised."}).status_code == 201
    assert radiologist.post(f"/api/reports/{report.id}/addenda", json={"text": "Second note."}).status_code == 201
    handlers = db_session.scalars(select(JobRecord.handler).where(JobRecord.event == ReportAmended.name)).all()
    assert not [h for h in handlers if h.startswith(("billing.", "followup."))]
    assert db_session.scalar(select(func.count()).select_from(ChargeItem)) == charges
    assert db_session.scalar(select(func.count()).select_from(Consultation)) == consultations


def test_an_addendum_stores_a_new_sr_version_with_the_text(
    as_role: Any, app: Flask, demo: DemoSeed, db_session: Session
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    store_slices(db_session, app, demo, report)
    _accept_all(db_session, report)
    db_session.commit()
    radiologist = as_role("radiologist")
    assert radiologist.post(f"/api/reports/{report.id}/sign", json={}).status_code == 200
    make_report_outputs(db_session, ReportAmended(report_id=report.id, addendum_id=0, patient_id=report.patient_id,
                                                  referral_id=report.referral_id))
    signed_srs = _srs(app, db_session)
    assert radiologist.post(f"/api/reports/{report.id}/addenda", json={"text": "Addendum one."}).status_code == 201
    addendum = db_session.scalar(select(ReportAddendum).where(ReportAddendum.report_id == report.id))
    assert addendum is not None
    make_report_outputs(db_session, ReportAmended(report_id=report.id, addendum_id=addendum.id,
                                                  patient_id=report.patient_id, referral_id=report.referral_id))
    amended_srs = _srs(app, db_session)
    assert len(amended_srs) == 1 and amended_srs != signed_srs, "a new SR version replaces the signed one"
    dataset = pydicom.dcmread(amended_srs[0])
    assert read_addenda(dataset) == ["Addendum one."]


def _srs(app: Flask, session: Session) -> list[Path]:
    session.expire_all()
    rows = session.scalars(select(ImagingInstance).where(
        ImagingInstance.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.34")).all()
    return sorted(Path(app.config["DICOM_STORAGE_DIR"]) / row.path for row in rows)
