"""Follow-up plans: templates, due dates on the patient's calendar, repeat scans that become
referrals once, reminders sent once, overdue lists, and the periodic scheduler."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import ReportStatus, ReviewStatus
from followup.models import FollowUpTask, TaskStatus
from followup.models import Notification as SentReminder
from followup.planning import add_months, due_at, open_due_repeat_scans, send_due_reminders
from followup.service import open_consultation
from hospital.models import Notification
from hospital.periodic import enqueue_periodic_jobs
from hospital.seed import DemoSeed
from referrals.models import Referral, ReferralStatus
from tests.factories import make_preliminary_report


def consultation_with_repeat_scan(db_session: Session, demo: DemoSeed) -> FollowUpTask:
    report = make_preliminary_report(db_session, demo, [(10, 10, 40, 40)])
    report.findings[0].review_status = ReviewStatus.ACCEPTED
    report.status = ReportStatus.FINAL
    consultation = open_consultation(db_session, report.id)
    assert consultation is not None
    task = db_session.scalar(select(FollowUpTask).where(FollowUpTask.kind == "repeat-scan"))
    assert task is not None
    return task


@pytest.mark.parametrize(("day", "months", "expected"), [
    (date(2026, 1, 31), 1, date(2026, 2, 28)), (date(2024, 1, 31), 1, date(2024, 2, 29)),
    (date(2026, 11, 30), 3, date(2027, 2, 28)), (date(2026, 5, 15), 12, date(2027, 5, 15)),
])
def test_add_months_clamps_to_the_end_of_the_month(day: date, months: int, expected: date) -> None:
    assert add_months(day, months) == expected


def test_due_dates_fall_at_nine_on_the_patients_own_calendar(demo: DemoSeed) -> None:
    patient = demo.patient
    patient.timezone = "Europe/Berlin"
    # Signed in winter (UTC+1); due three months later in summer time (UTC+2): 09:00 local both ways.
    assert due_at(patient, datetime(2026, 1, 15, 10, 0, tzinfo=UTC), months=3) == datetime(2026, 4, 15, 7, 0, tzinfo=UTC)
    # 23:30 UTC on 31 March is already 1 April in Berlin: the calendar day is the patient's.
    assert due_at(patient, datetime(2026, 3, 31, 23, 30, tzinfo=UTC), days=1) == datetime(2026, 4, 2, 7, 0, tzinfo=UTC)
    patient.timezone = "America/Los_Angeles"
    assert due_at(patient, datetime(2026, 1, 15, 3, 0, tzinfo=UTC), months=1) == datetime(2026, 2, 14, 17, 0, tzinfo=UTC)
    patient.timezone = "Not/AZone"
    assert due_at(patient, datetime(2026, 1, 15, 3, 0, tzinfo=UTC)) == datetime(2026, 1, 15, 9, 0, tzinfo=UTC)


def test_due_repeat_scan_becomes_an_accepted_referral_once_and_the_patient_books_it(
    db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    task = consultation_with_repeat_scan(db_session, demo)
    assert open_due_repeat_scans(db_session) == []  # not due yet
    created = open_due_repeat_scans(db_session, now=task.due_at + timedelta(minutes=1))
    assert open_due_repeat_scans(db_session, now=task.due_at + timedelta(days=1)) == []
    assert len(created) == 1
    referral = db_session.get(Referral, created[0])
    assert referral is not None and referral.status is ReferralStatus.ACCEPTED and referral.accession_number
    assert referral.replaces_referral_id is not None and referral.patient_id == demo.patient.id
    db_session.refresh(task)
    assert (task.status, task.referral_id) == (TaskStatus.IN_PROGRESS, referral.id)
    db_session.commit()
    patient = as_role("patient")
    slot = patient.get(f"/api/slots?organization_id={demo.imaging_centre.id}&modality=CT").get_json()[0]
    assert patient.post("/api/appointments", json={"referral_id": referral.id, "slot_id": slot["id"]}).status_code == 201


def test_reminders_are_sent_once_without_phi_in_the_log(
    db_session: Session, demo: DemoSeed, caplog: pytest.LogCaptureFixture
) -> None:
    task = consultation_with_repeat_scan(db_session, demo)
    with caplog.at_level(logging.INFO):
        assert send_due_reminders(db_session, now=task.due_at - timedelta(days=1)) == 2  # visit + scan
        assert send_due_reminders(db_session, now=task.due_at) == 0
        db_session.commit()  # the mail jobs run (the log notifier: nothing leaves the process)
    reminders = db_session.scalars(select(Notification).where(Notification.kind == "follow_up_due")).all()
    assert len(reminders) == 2 and {n.user_id for n in reminders} == {demo.users["patient"].id}
    assert demo.patient.email not in caplog.text and demo.patient.given_name not in caplog.text


def test_a_task_reminded_before_the_notification_centre_is_not_reminded_again(
    db_session: Session, demo: DemoSeed
) -> None:
    task = consultation_with_repeat_scan(db_session, demo)
    db_session.add(SentReminder(patient_id=demo.patient.id, task_id=task.id, kind="task-due-reminder", channel="email",
                                recipient="a***", subject="Reminder: a follow-up step is due", body="(sent)"))
    db_session.flush()
    assert send_due_reminders(db_session, now=task.due_at - timedelta(days=1)) == 1  # the visit only
    visit = db_session.scalar(select(FollowUpTask.id).where(FollowUpTask.kind == "visit"))
    assert db_session.scalars(select(Notification.event_key).where(Notification.kind == "follow_up_due")).all() == [
        f"follow-up-due:{visit}"]


def test_templates_and_overdue_list(db_session: Session, demo: DemoSeed, as_role: Any) -> None:
    task = consultation_with_repeat_scan(db_session, demo)
    consultation_id = task.care_plan.consultation_id
    db_session.commit()
    clinician = as_role("clinician")
    added = clinician.post(f"/api/consultations/{consultation_id}/plan", json={"template": "lab-and-visit"})
    assert added.status_code == 201 and [t["kind"] for t in added.get_json()] == ["lab-test", "visit"]
    assert clinician.post(f"/api/consultations/{consultation_id}/plan", json={"template": "nope"}).status_code == 400
    assert as_role("patient").post(f"/api/consultations/{consultation_id}/plan", json={"template": "lab-and-visit"}).status_code == 403
    assert clinician.get("/api/tasks/overdue").get_json() == []
    task.due_at = datetime(2020, 1, 1, tzinfo=UTC)
    db_session.commit()
    overdue = clinician.get("/api/tasks/overdue").get_json()
    assert [t["id"] for t in overdue] == [task.id]
    assert [t["id"] for t in as_role("patient").get("/api/tasks/overdue").get_json()] == [task.id]
    assert as_role("patient2").get("/api/tasks/overdue").get_json() == []


def test_scheduler_enqueues_the_periodic_follow_up_job(db_session: Session, demo: DemoSeed, app: Flask) -> None:
    task = consultation_with_repeat_scan(db_session, demo)
    task.due_at = datetime(2020, 1, 1, tzinfo=UTC)
    db_session.commit()
    enqueue_periodic_jobs(app)  # inline mode: the job runs right after the commit
    db_session.expire_all()
    assert db_session.get(FollowUpTask, task.id).referral_id is not None
