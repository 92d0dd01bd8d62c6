"""The follow-up stage's notifications: a message in a consultation tells the other party; a repeat
scan that falls due tells the patient (to book it) and the clinician (it was ordered); an urgent
consultation tells the consulting clinician; a prescription the pharmacy returned tells its
prescriber; a due follow-up step tells the patient. Each once per recipient per event, in the app
and by mail (a real SMTP server here) in the recipient's language, with a link and no clinical
detail."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.models import Consultation, FollowUpTask
from followup.planning import open_due_repeat_scans, send_due_reminders
from followup.service import open_consultation
from hospital import notifications
from hospital.models import MailStatus, Notification, User
from hospital.seed import DemoSeed
from tests.followup.test_consultation_and_pharmacy import signed_consultation
from tests.followup.test_pharmacy import prescribe
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
    assert told(db_session, clinician) == [  # the consultation was urgent (a 30 mm finding): told then too
        ("urgent_consultation", {"consultation_id": task.care_plan.consultation_id}),
        ("repeat_scan_ordered", {"plan_id": task.care_plan_id})]
    [to_patient] = db_session.scalars(select(Notification).where(Notification.user_id == patient.id))
    assert to_patient.mail_status is MailStatus.PENDING, "the patient's record has an address"


CLINICIAN_MAIL = "clinician@hillside.example.org"


def told_of_kind(db_session: Session, kind: str) -> list[Notification]:
    return list(db_session.scalars(select(Notification).where(Notification.kind == kind).order_by(Notification.id)))


def link_of(app: Flask, notification: Notification) -> str:
    with app.test_request_context("/"):
        return notifications.target_path(notification)


@pytest.fixture()
def clinician(db_session: Session, demo: DemoSeed) -> User:
    """The demo clinician, with an address on their account."""
    user = demo.users["clinician"]
    user.email = CLINICIAN_MAIL
    db_session.commit()
    return user


@pytest.mark.parametrize(("locale", "subject", "words"), [
    ("en", "Urgent imaging result", "needs an urgent consultation with your patient"),
    ("zh_CN", "紧急影像结果", "需要尽快与您的患者进行问诊"),
])
def test_an_urgent_consultation_is_told_to_the_consulting_clinician_once(
    app: Flask, db_session: Session, demo: DemoSeed, clinician: User, smtp_server: Mailbox, mail_through: Any,
    locale: str, subject: str, words: str,
) -> None:
    clinician.locale = locale
    mail_through(smtp_server.port)
    consultation_id = signed_consultation(db_session, demo, (10, 10, 40, 40))  # 30 mm: urgent; commits
    again = open_consultation(db_session, db_session.get_one(Consultation, consultation_id).report_id)
    assert again is not None and again.id == consultation_id  # a redelivered event: the same one, no second notice
    db_session.commit()

    [notice] = told_of_kind(db_session, "urgent_consultation")
    assert notice.user_id == clinician.id and link_of(app, notice) == f"/consultations/{consultation_id}"
    [mail] = smtp_server.messages
    assert smtp_server.envelopes == [[CLINICIAN_MAIL]] and mail["Subject"] == subject
    assert words in mail.get_content() and "mm" not in mail.get_content()  # no finding in a mail
    assert demo.patient.family_name not in mail.get_content()


def test_a_routine_consultation_tells_nobody(db_session: Session, demo: DemoSeed, clinician: User) -> None:
    signed_consultation(db_session, demo, (10, 10, 14, 14))  # 4 mm
    assert told_of_kind(db_session, "urgent_consultation") == []


@pytest.mark.parametrize(("locale", "subject", "words"), [
    ("en", "A prescription was returned by the pharmacy", "returned one of your prescriptions with a question"),
    ("zh_CN", "药房退回了一张处方", "药房对您开具的一张处方有疑问并已退回"),
])
def test_a_returned_prescription_is_told_to_its_prescriber_once_without_the_reason(
    app: Flask, as_role: Any, db_session: Session, demo: DemoSeed, clinician: User, smtp_server: Mailbox,
    mail_through: Any, locale: str, subject: str, words: str,
) -> None:
    clinician.locale = locale
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    prescribed = prescribe(as_role, consultation_id, demo)
    assert prescribed.status_code == 201
    request_id = prescribed.get_json()["id"]
    mail_through(smtp_server.port)
    pharmacist = as_role("pharmacist")
    reason = {"reason": "Dose too high for the patient's weight"}
    assert pharmacist.post(f"/api/medication-requests/{request_id}/return", json=reason).status_code == 200
    assert pharmacist.post(f"/api/medication-requests/{request_id}/return", json=reason).status_code == 409

    [notice] = told_of_kind(db_session, "prescription_returned")
    assert notice.user_id == clinician.id and notice.event_key == f"prescription-returned:{request_id}"
    assert link_of(app, notice) == f"/consultations/{consultation_id}"
    [mail] = smtp_server.messages
    assert smtp_server.envelopes == [[CLINICIAN_MAIL]] and mail["Subject"] == subject
    assert words in mail.get_content() and "weight" not in mail.get_content()


@pytest.mark.parametrize(("locale", "subject", "due"), [
    ("en", "Reminder: a follow-up step is due", "A step of your follow-up plan is due on "),
    ("zh_CN", "随访提醒：有一项随访安排即将到期", "您的随访计划中有一项安排将于 "),
])
def test_a_due_follow_up_step_is_told_to_the_patient_once_on_their_own_calendar(
    app: Flask, db_session: Session, demo: DemoSeed, smtp_server: Mailbox, mail_through: Any,
    locale: str, subject: str, due: str,
) -> None:
    demo.users["patient"].locale = locale
    demo.patient.timezone = "Asia/Shanghai"
    signed_consultation(db_session, demo, (10, 10, 14, 14))  # routine: a visit in 14 days, 09:00 in Shanghai
    visit = db_session.scalar(select(FollowUpTask).where(FollowUpTask.kind == "visit"))
    assert visit is not None and visit.due_at is not None
    mail_through(smtp_server.port)
    assert send_due_reminders(db_session, now=visit.due_at - timedelta(days=4)) == 0, "not yet"
    assert send_due_reminders(db_session, now=visit.due_at - timedelta(days=1)) == 1
    assert send_due_reminders(db_session, now=visit.due_at) == 0, "once"
    db_session.commit()

    [reminder] = told_of_kind(db_session, "follow_up_due")
    assert reminder.user_id == demo.users["patient"].id
    assert link_of(app, reminder) == f"/care-plans/{visit.care_plan_id}"
    [mail] = smtp_server.to(demo.patient.email or "")
    assert len(smtp_server.messages) == 1 and mail["Subject"] == subject
    body = mail.get_content()
    assert due in body and "09:00 CST" in body  # the patient's wall clock, not the server's UTC
    assert visit.description.lower() not in body.lower() and demo.patient.given_name not in body


def test_a_patient_without_an_account_is_reminded_by_mail_at_the_address_on_their_record(
    app: Flask, db_session: Session, demo: DemoSeed, smtp_server: Mailbox, mail_through: Any,
) -> None:
    # The demo patient's account is closed: many patients never make one. Their record has a mail address.
    demo.users["patient"].active = False
    demo.patient.timezone = "Asia/Shanghai"
    signed_consultation(db_session, demo, (10, 10, 14, 14))
    visit = db_session.scalar(select(FollowUpTask).where(FollowUpTask.kind == "visit"))
    assert visit is not None and visit.due_at is not None
    mail_through(smtp_server.port)
    assert send_due_reminders(db_session, now=visit.due_at - timedelta(days=1)) == 1
    assert send_due_reminders(db_session, now=visit.due_at) == 0, "once"
    db_session.commit()

    [reminder] = told_of_kind(db_session, "follow_up_due")
    assert reminder.user_id is None and reminder.patient_id == demo.patient.id
    assert reminder.read_at is not None  # no notification centre to show it in
    assert reminder.mail_status is MailStatus.SENT
    [mail] = smtp_server.to(demo.patient.email or "")
    assert len(smtp_server.messages) == 1 and mail["Subject"] == "Reminder: a follow-up step is due"
    body = mail.get_content()
    assert "09:00 CST" in body and "call your care team" in body
    assert "/notifications/" not in body, "no link into an app they cannot sign in to"

    # Without an address on the record there is nobody to tell, and nothing is kept owed.
    demo.patient.email = "not an address"
    assert notifications.notify_patient(db_session, demo.patient.id, "follow_up_due", "follow-up-due:other",
                                        plan_id=visit.care_plan_id) == []
    assert len(told_of_kind(db_session, "follow_up_due")) == 1
