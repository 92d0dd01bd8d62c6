"""A referral's page: the clinician follows it from sending to the consultation, with the same status
words as the list; nobody else's referral opens, and a lapsed care relationship shows only the
order's own status."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ai_services.models import ReportStatus, ReviewStatus
from followup.service import open_consultation
from hospital.clock import utcnow
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from referrals.models import Referral
from tests.factories import make_preliminary_report
from tests.referrals.test_referral_pages import sign_in
from tests.security.care_world import make_care_world


def status_of(page: str) -> str:
    found = re.search(r'id="referral-status">Status: <strong>([^<]+)</strong>', page)
    assert found, page[:2000]
    return found.group(1)


def steps_of(page: str) -> list[tuple[str, str]]:
    """(step name, state) in page order."""
    found = re.findall(r'<li class="step step-(\w+)".*?<span class="step-name">([^<]+)</span>', page, re.S)
    return [(name, state) for state, name in found]


def test_the_clinician_follows_a_referral_from_sending_to_booking(
    client: FlaskClient, as_role: Any, demo: DemoSeed
) -> None:
    sent = as_role("clinician").post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest", "reason": "Persistent cough, smoker",
        "priority": "urgent", "access_reason": "new patient"}).get_json()
    url = f"/referrals/{sent['id']}"
    sign_in(client, "clinician")
    listing = client.get("/referrals").get_data(as_text=True)
    assert f'href="{url}"' in listing and "Waiting for acceptance" in listing
    page = client.get(url).get_data(as_text=True)
    assert status_of(page) == "Waiting for acceptance"
    assert "Persistent cough, smoker" in page and "<dd>Urgent</dd>" in page
    assert steps_of(page) == [("Sent", "done"), ("Accepted", "current")]

    assert as_role("imaging_staff").post(f"/api/referrals/{sent['id']}/accept").status_code == 200
    page = client.get(url).get_data(as_text=True)
    assert status_of(page) == "Accepted: to be booked"
    assert ("Booked", "current") in steps_of(page) and 'href="/appointments"' in page

    slots = as_role("patient").get(f"/api/slots?organization_id={demo.imaging_centre.id}&modality=CT").get_json()
    booked = as_role("patient").post("/api/appointments", json={"referral_id": sent["id"], "slot_id": slots[0]["id"]})
    assert booked.status_code == 201, booked.get_json()
    page = client.get(url).get_data(as_text=True)
    assert status_of(page) == "Booked"
    assert ("Booked", "done") in steps_of(page) and ("Images received", "current") in steps_of(page)
    assert "<time" in page.split("Booked</span>")[1].split("</li>")[0]  # when the appointment is


def test_a_draft_is_not_signed_and_a_signed_report_opens_the_consultation(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 14, 14)])
    db_session.commit()
    url = f"/referrals/{report.referral_id}"
    sign_in(client, "clinician")
    listing = client.get("/referrals").get_data(as_text=True)
    row = listing.split(f'id="referral-{report.referral_id}"')[1].split("</tr>")[0]
    assert "Images received" in row and ">completed<" not in row  # not "completed" while unsigned
    page = client.get(url).get_data(as_text=True)
    assert status_of(page) == "AI read: awaiting the radiologist"
    assert ("AI read", "done") in steps_of(page) and ("Signed by a radiologist", "current") in steps_of(page)
    assert "Draft: the radiologist has not signed it yet" in page
    assert f'href="/reports/{report.id}"' not in page  # no link to a draft

    report.findings[0].review_status = ReviewStatus.ACCEPTED
    report.status, report.signed_at = ReportStatus.FINAL, utcnow()
    consultation = open_consultation(db_session, report.id)
    assert consultation is not None
    db_session.commit()
    page = client.get(url).get_data(as_text=True)
    assert status_of(page) == "Consultation open"
    assert ("Signed by a radiologist", "done") in steps_of(page) and ("Consultation", "current") in steps_of(page)
    assert f'href="/reports/{report.id}"' in page and f'href="/consultations/{consultation.id}"' in page
    reads = db_session.scalars(select(AuditEvent.entity_type).where(
        AuditEvent.description == f"status on the page of referral {report.referral_id}")).all()
    assert {"ImagingStudy", "DiagnosticReport"} <= set(reads)  # what the page showed is audited


def test_a_rejected_referral_shows_the_reason(client: FlaskClient, as_role: Any, demo: DemoSeed) -> None:
    sent = as_role("clinician").post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "HEAD", "procedure_description": "CT head", "reason": "headache", "access_reason": "new patient"}).get_json()
    as_role("imaging_staff").post(f"/api/referrals/{sent['id']}/reject", json={"reason": "MR is the better test"})
    sign_in(client, "clinician")
    page = client.get(f"/referrals/{sent['id']}").get_data(as_text=True)
    assert status_of(page) == "Rejected" and "MR is the better test" in page
    assert steps_of(page)[-1] == ("Rejected by the imaging centre", "stopped")


def test_a_referral_cancelled_before_acceptance_was_never_accepted(
    client: FlaskClient, as_role: Any, demo: DemoSeed
) -> None:
    sent = as_role("clinician").post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "HEAD", "procedure_description": "CT head", "reason": "headache",
        "access_reason": "new patient"}).get_json()
    cancelled = as_role("clinician").post(f"/api/referrals/{sent['id']}/cancel", json={"reason": "symptoms resolved"})
    assert cancelled.status_code == 200, cancelled.get_json()
    sign_in(client, "clinician")
    page = client.get(f"/referrals/{sent['id']}").get_data(as_text=True)
    assert status_of(page) == "Cancelled" and "symptoms resolved" in page
    assert steps_of(page) == [("Sent", "done"), ("Cancelled", "stopped")]


def test_only_those_the_referral_is_open_to_see_it(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    world = make_care_world(db_session, demo)  # grace referred demo.patient; the demo clinician did not
    db_session.commit()
    url = f"/referrals/{world.report.referral_id}"
    sign_in(client, "clinician")
    assert client.get(url).status_code == 403
    sign_in(client, "patient2")
    assert client.get(url).status_code == 403
    assert client.get("/referrals/999999").status_code == 404
    sign_in(client, "patient")  # their own referral
    assert status_of(client.get(url).get_data(as_text=True)) == "Signed"

    sign_in(client, "grace")
    assert ("Signed by a radiologist", "done") in steps_of(client.get(url).get_data(as_text=True))
    # Long after the examination the care relationship has lapsed: grace still sees her order's
    # status, but nothing of the record after it.
    db_session.execute(update(Referral).where(Referral.id == world.report.referral_id)
                       .values(updated_at=utcnow() - timedelta(days=3650)))
    db_session.commit()
    page = client.get(url).get_data(as_text=True)
    assert status_of(page) == "Images received"
    assert [name for name, _ in steps_of(page)] == ["Sent", "Accepted"]
    assert "not open to you now" in page and "/reports/" not in page


def test_the_reports_page_keeps_drafts_apart_from_signed_reports(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    draft = make_preliminary_report(db_session, demo, [(10, 10, 14, 14)])
    signed = make_preliminary_report(db_session, demo, [(10, 10, 14, 14)])
    signed.status, signed.signed_at = ReportStatus.FINAL, utcnow()
    db_session.commit()
    sign_in(client, "clinician")
    page = client.get("/reports").get_data(as_text=True)
    signed_table = page.split('id="reports"')[1].split("</table>")[0]
    drafts_table = page.split('id="draft-reports"')[1].split("</table>")[0]
    assert f"Report {signed.id}<" in signed_table and f"Report {draft.id}<" not in signed_table
    assert f"Report {draft.id}<" in drafts_table and ">draft<" in drafts_table
    assert page.index("Signed reports") < page.index("Drafts awaiting a radiologist")
