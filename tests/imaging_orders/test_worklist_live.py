"""The worklist follows the day: what arrived for each examination (images in how many series) in
the page and its live JSON, a failed AI outputs job shown rather than hidden, and a retry button."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from flask.testing import FlaskClient
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.service import REPORT_OUTPUTS_HANDLER
from hospital.jobs import JobRecord
from hospital.models import JobStatus
from hospital.seed import DemoSeed
from imaging_orders.archive.ingest import store_instance
from imaging_orders.archive.models import ImagingStudy
from tests.factories import make_preliminary_report
from tests.imaging_orders.factories import make_order
from tests.imaging_orders.test_ingest import ct_study, store_all
from tests.imaging_orders.test_worklist_pages import demo_centre
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def test_the_worklist_says_what_arrived_in_images_and_series(
    app: Flask, client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    start = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) + timedelta(days=1)
    order = make_order(db_session, demo_centre(db_session, demo), start=start)
    waiting = make_order(db_session, demo_centre(db_session, demo), start=start + timedelta(hours=1), family_name="Waits")
    db_session.commit()
    sign_in(client, "imaging_staff")
    day = start.date().isoformat()
    live = client.get(f"/api/worklist?date={day}").get_json()
    assert [e["arrival"] for e in live["entries"]] == [None, None]

    store_all(app, ct_study(order.patient.mrn, order.referral.accession_number or "", slices=3, series=2))
    entries = {e["referral_id"]: e for e in client.get(f"/api/worklist?date={day}").get_json()["entries"]}
    arrival = entries[order.referral.id]["arrival"]
    assert (arrival["images"], arrival["series"], arrival["status"], arrival["complete"]) == (6, 2, "registered", False)
    assert arrival["analysis_url"] == f"/api/studies/{arrival['study_id']}/analysis"
    assert entries[waiting.referral.id]["arrival"] is None
    page = client.get(f"/worklist?date={day}").get_data(as_text=True)
    row = page.split(f'data-referral-id="{order.referral.id}"')[1].split("</tr>")[0]
    assert "arriving" in row and "6 images in 2 series" in row
    assert f'data-retry-url="/studies/{arrival["study_id"]}/analysis/retry"' in row
    assert 'data-live-url="/api/worklist?date=' in page and "worklist_live.js" in page

    # The AI's own outputs (an SR series) are counted apart: the modality's images stay 6 in 2 series.
    made = ct_study(order.patient.mrn, order.referral.accession_number or "", slices=1)[0]
    made.StudyInstanceUID = db_session.get(ImagingStudy, arrival["study_id"]).study_instance_uid
    made.SeriesInstanceUID, made.SOPInstanceUID = generate_uid(), generate_uid()
    assert store_instance(app, made, transfer_syntax_uid=None, calling_ae="AI-OUTPUTS", derived=True).duplicate is False
    entries = {e["referral_id"]: e for e in client.get(f"/api/worklist?date={day}").get_json()["entries"]}
    again = entries[order.referral.id]["arrival"]
    assert (again["images"], again["series"], again["derived"]) == (6, 2, 1)
    assert "6 images in 2 series (+ 1 from the AI)" in client.get(f"/worklist?date={day}").get_data(as_text=True)


def test_a_failed_outputs_job_is_shown_and_the_analysis_can_be_retried(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 14, 14)])
    failed = JobRecord(handler=REPORT_OUTPUTS_HANDLER, queue="ai", payload={"report_id": report.id},
                       status=JobStatus.FAILED, last_error="Traceback ...\nOSError: [Errno 28] No space left on device")
    db_session.add(failed)
    db_session.commit()
    sign_in(client, "imaging_staff")
    url = f"/api/studies/{report.study_id}/analysis"
    job = client.get(url).get_json()
    assert job["status"] == "completed"
    assert job["outputs_error"] == "OSError: [Errno 28] No space left on device"

    retry = f"/studies/{report.study_id}/analysis/retry"
    token = csrf_token_of(client.get("/worklist").get_data(as_text=True))
    assert client.post(retry, data={"next": "/worklist?date=2031-01-01"}).status_code == 403  # no CSRF token
    done = client.post(retry, data={"csrf_token": token, "next": "/worklist?date=2031-01-01"})
    assert done.status_code == 302 and done.headers["Location"].endswith("/worklist?date=2031-01-01")
    offsite = client.post(retry, data={"csrf_token": token, "next": "//evil.example/"})
    assert "evil.example" not in offsite.headers["Location"]
    reruns = db_session.scalars(select(JobRecord).where(JobRecord.handler == "ai_services.jobs.analyse_study_again")).all()
    assert reruns and all(r.payload == {"study_id": report.study_id} for r in reruns)
    # A newer attempt at the outputs supersedes the failure.
    db_session.add(JobRecord(handler=REPORT_OUTPUTS_HANDLER, queue="ai", payload={"report_id": report.id},
                             status=JobStatus.DONE))
    db_session.commit()
    assert client.get(url).get_json()["outputs_error"] is None
    sign_in(client, "patient")
    assert client.post(retry, data={"csrf_token": csrf_token_of(client.get("/reports").get_data(as_text=True))}).status_code == 403
