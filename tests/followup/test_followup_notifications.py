"""The follow-up stage's notifications: a message in a consultation tells the other party, and a
repeat scan that falls due tells the patient (to book it) and the clinician (it was ordered)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.planning import open_due_repeat_scans
from hospital.models import MailStatus, Notification, User
from hospital.seed import DemoSeed
from tests.followup.test_consultation_and_pharmacy import signed_consultation
from tests.followup.test_planning import consultation_with_repeat_scan
from tests.smtp import Mailbox, mail_through, smtp_server

__all__ = ["mail_through", "smtp_server"]  # fixtures, used by name


def told(session: Session, user: User) -> list[tuple[str, dict[str, Any]]]:
    return [(n.kind, n.params) for n in session.scalars(
        select(Notification).where(Notification.user_id == user.id).order_by(Notification.id))]


def test_a_message_tells_the_other_party_only(
    as_role: Any, db_session: Session, demo: DemoSeed, smtp_server: Mailbox, mail_through: Any,
) -> None:
    mail_through(smtp_server.port)
    clinician, patient = demo.users["clinician"], demo.users["patient"]
    clinician.email, patient.locale = "dr.k@hillside.example.org", "zh_CN"
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    url = f"/api/consultations/{consultation_id}/messages"

    assert as_role("patient").post(url, json={"body": "Is the nodule serious?"}).status_code == 201
    assert told(db_session, clinician) == [("consultation_message", {"consultation_id": consultation_id})]
    assert told(db_session, patient) == []
    assert as_role("clinician").post(url, json={"body": "Small; we will repeat the scan."}).status_code == 201
    assert told(db_session, patient) == [("consultation_message", {"consultation_id": consultation_id})]
    assert len(told(db_session, clinician)) == 1

    assert sorted(m["Subject"] for m in smtp_server.messages) == ["New message in your consultation", "您的问诊有新消息"]
    assert all("nodule" not in m.get_content().lower() for m in smtp_server.messages), "no message text in a mail"


def test_a_due_repeat_scan_tells_the_patient_and_the_clinician_once(db_session: Session, demo: DemoSeed) -> None:
    task = consultation_with_repeat_scan(db_session, demo)
    clinician, patient = demo.users["clinician"], demo.users["patient"]
    assert open_due_repeat_scans(db_session) == []
    assert told(db_session, patient) == []
    assert len(open_due_repeat_scans(db_session, now=task.due_at + timedelta(minutes=1))) == 1
    open_due_repeat_scans(db_session, now=task.due_at + timedelta(days=1))
    assert told(db_session, patient) == [("repeat_scan_due", {"plan_id": task.care_plan_id})]
    assert told(db_session, clinician) == [("repeat_scan_ordered", {"plan_id": task.care_plan_id})]
    [to_patient] = db_session.scalars(select(Notification).where(Notification.user_id == patient.id))
    assert to_patient.mail_status is MailStatus.PENDING, "the patient's record has an address"
