"""The centre's desk: triage shows who sent a referral and when, and staff book a slot for an
accepted referral (a patient who calls or comes in), through the same service as the patient."""

from __future__ import annotations

import re
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from imaging_orders.models import Appointment
from referrals.models import Referral, ReferralStatus
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def send_referral(as_role: Any, demo: DemoSeed, reason: str) -> int:
    sent = as_role("clinician").post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest", "reason": reason, "access_reason": "new patient"})
    assert sent.status_code == 201, sent.get_json()
    return int(sent.get_json()["id"])


def test_triage_shows_the_referrer_and_staff_book_for_the_patient(
    client: FlaskClient, as_role: Any, db_session: Session, demo: DemoSeed
) -> None:
    referral_id = send_referral(as_role, demo, "Haemoptysis for two weeks")
    sign_in(client, "imaging_staff")
    page = client.get("/incoming").get_data(as_text=True)
    row = page.split(f'id="referral-{referral_id}"')[1].split("</tr>")[0]
    assert "Ada Lovelace" in row and re.search(r"\d{1,2} \w{3} \d{4} \d{2}:\d{2}", row)  # who sent it, and when
    assert "Haemoptysis for two weeks" in row
    token = csrf_token_of(page)
    client.post("/incoming", data={"csrf_token": token, "referral_id": referral_id, "action": "accept"})

    page = client.get("/incoming").get_data(as_text=True)
    booking = page.split(f'id="book-{referral_id}"')[1].split("</tr>")[0]
    slot_id = int(re.findall(r'<option value="(\d+)"', booking)[0])
    done = client.post("/incoming", data={"csrf_token": token, "referral_id": referral_id, "action": "book",
                                          "slot_id": slot_id}, follow_redirects=True)
    assert f"Referral {referral_id} booked for Alex Rivera." in done.get_data(as_text=True)
    assert f'id="book-{referral_id}"' not in done.get_data(as_text=True)
    appointment = db_session.scalar(select(Appointment).where(Appointment.referral_id == referral_id))
    assert appointment is not None and appointment.slot_id == slot_id
    assert appointment.booked_by_user_id == demo.users["imaging_staff"].id
    assert db_session.get(Referral, referral_id).status is ReferralStatus.SCHEDULED
    assert db_session.scalar(select(AuditEvent.id).where(
        AuditEvent.entity_type == "Appointment", AuditEvent.entity_id == str(appointment.id), AuditEvent.action == "C"))

    taken = client.post("/incoming", data={"csrf_token": token, "referral_id": referral_id, "action": "book",
                                           "slot_id": slot_id}, follow_redirects=True)
    assert "cannot be booked" in taken.get_data(as_text=True)  # booked already: a clear refusal, nothing added
    assert len(db_session.scalars(select(Appointment).where(Appointment.referral_id == referral_id)).all()) == 1
