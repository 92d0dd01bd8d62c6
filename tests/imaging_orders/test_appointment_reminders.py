"""Patients are reminded of a booked scan in the 24 hours before it: once per appointment and
start time, worded in their language with the time on the centre's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital import i18n
from hospital.clock import utcnow
from hospital.jobs import enqueue
from hospital.models import Notification, Role, User
from hospital.notifications import show
from imaging_orders.models import AppointmentStatus
from imaging_orders.service import remind_upcoming_appointments
from tests.imaging_orders.factories import make_centre, make_order


def patient_account(session: Session, patient_id: int, locale: str) -> User:
    user = User(username=f"patient-{patient_id}", password_hash="x", role=Role.PATIENT, patient_id=patient_id,
                locale=locale)
    session.add(user)
    session.flush()
    return user


def reminders_of(session: Session, user: User) -> list[Notification]:
    return list(session.scalars(select(Notification).where(Notification.user_id == user.id,
                                                           Notification.kind == "appointment_reminder")))


def test_a_scan_within_a_day_is_reminded_of_once_in_the_patients_language(app: Flask, db_session: Session) -> None:
    centre = make_centre(db_session, timezone="Asia/Shanghai")
    start = datetime(2026, 12, 4, 1, 30, tzinfo=UTC)  # 09:30 in Shanghai
    soon = make_order(db_session, centre, start=start)
    later = make_order(db_session, centre, start=start + timedelta(hours=30))
    cancelled = make_order(db_session, centre, start=start, appointment_status=AppointmentStatus.CANCELLED)
    readers = [patient_account(db_session, order.patient.id, "zh_CN") for order in (soon, later, cancelled)]
    now = start - timedelta(hours=3)

    assert remind_upcoming_appointments(db_session, now=now) == 1
    assert remind_upcoming_appointments(db_session, now=now + timedelta(minutes=15)) == 0
    [reminder] = reminders_of(db_session, readers[0])
    assert reminders_of(db_session, readers[1]) == [] and reminders_of(db_session, readers[2]) == []
    with i18n.for_user(readers[0]):
        shown = show(reminder)
    assert shown.title == "检查预约提醒"
    assert shown.body == f"您的检查已预约在 2026年12月4日 周五 09:30 CST，地点：{centre.organization.name}。"
    assert shown.path == "/appointments"

    # Moved to another time: reminded again, of the new time.
    assert soon.appointment is not None
    soon.appointment.start = start + timedelta(hours=2)
    db_session.flush()
    assert remind_upcoming_appointments(db_session, now=now) == 1
    assert len(reminders_of(db_session, readers[0])) == 2


def test_the_periodic_job_reminds(app: Flask, db_session: Session) -> None:
    assert "imaging_orders.jobs.remind_appointments" in [job.handler for job in app.extensions["hospital.periodic"]]
    centre = make_centre(db_session)
    order = make_order(db_session, centre, start=utcnow().replace(microsecond=0) + timedelta(hours=5))
    reader = patient_account(db_session, order.patient.id, "en")
    enqueue(db_session, "imaging_orders.jobs.remind_appointments")
    db_session.commit()  # the job runs after the commit (inline: no Redis)
    [reminder] = reminders_of(db_session, reader)
    with i18n.for_user(reader):
        assert show(reminder).body.startswith("Your scan is booked for ")
