"""Changing a follow-up plan: the responsible clinician adds, changes and cancels tasks (audited);
the patient, another clinician, a cancelled or long-finished consultation are refused; bad dates
and unknown tasks are clear errors; the patient books the repeat scan the plan orders."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.models import CarePlan, Consultation, ConsultationStatus, FollowUpTask, TaskStatus
from followup.plan_changes import (
    NewTask,
    TaskChange,
    add_plan_task,
    book_repeat_scan,
    cancel_plan_task,
    change_plan_task,
    repeat_scan_slots,
    task_appointments,
)
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.models import AuditEvent, Practitioner, Role, User
from hospital.seed import DemoSeed
from referrals.models import Referral, ReferralStatus
from tests.followup.test_consultation_and_pharmacy import signed_consultation
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


@pytest.fixture()
def plan(db_session: Session, demo: DemoSeed) -> CarePlan:
    consultation_id = signed_consultation(db_session, demo, (10, 10, 14, 14))
    found = db_session.scalar(select(CarePlan).where(CarePlan.consultation_id == consultation_id))
    assert found is not None
    return found


def another_clinician(db_session: Session, demo: DemoSeed) -> User:
    practitioner = Practitioner(given_name="Grace", family_name="Hopper", organization_id=demo.clinic.id)
    db_session.add(practitioner)
    db_session.flush()
    user = User(username="grace", role=Role.CLINICIAN, password_hash=demo.users["clinician"].password_hash,
                practitioner_id=practitioner.id, organization_id=demo.clinic.id)
    db_session.add(user)
    db_session.flush()
    return user


def today() -> date:
    return utcnow().date()


def task_audit(db_session: Session, task_id: int) -> list[str]:
    return [e.description or "" for e in db_session.scalars(
        select(AuditEvent).where(AuditEvent.entity_type == "Task", AuditEvent.entity_id == str(task_id),
                                 AuditEvent.action.in_(["C", "U"])).order_by(AuditEvent.id))]


def test_the_clinician_adds_tasks_from_templates_and_by_hand_each_audited(
    db_session: Session, demo: DemoSeed, plan: CarePlan
) -> None:
    clinician = demo.users["clinician"]
    lab = add_plan_task(db_session, clinician, plan.id, NewTask(template="lab-test"))
    assert (lab.kind, lab.description, lab.status) == ("lab-test", "Blood test at the clinic's laboratory",
                                                       TaskStatus.REQUESTED)
    assert lab.due_at is not None and lab.due_at.date() == today() + timedelta(days=7)
    own = add_plan_task(db_session, clinician, plan.id, NewTask(
        template=None, kind="other", details="  Stop smoking:\n ask the practice nurse  ", due_on=today() + timedelta(days=30)))
    assert own.description == "Stop smoking: ask the practice nurse"
    assert own.due_at is not None and own.due_at.date() == today() + timedelta(days=30)
    assert task_audit(db_session, lab.id) == [f"added to care plan {plan.id}: lab-test, due "
                                              f"{(today() + timedelta(days=7)).isoformat()} (template lab-test)"]
    assert len(task_audit(db_session, own.id)) == 1


def test_a_repeat_scan_added_to_the_plan_is_ordered_at_once(db_session: Session, demo: DemoSeed, plan: CarePlan) -> None:
    task = add_plan_task(db_session, demo.users["clinician"], plan.id, NewTask(template="repeat-scan-3m"))
    assert task.status is TaskStatus.IN_PROGRESS and task.referral_id is not None
    referral = db_session.get(Referral, task.referral_id)
    assert referral is not None and referral.status is ReferralStatus.ACCEPTED
    assert referral.replaces_referral_id is not None and referral.patient_id == demo.patient.id


def test_the_clinician_changes_details_and_due_date_audited(db_session: Session, demo: DemoSeed, plan: CarePlan) -> None:
    clinician = demo.users["clinician"]
    task = add_plan_task(db_session, clinician, plan.id, NewTask(template="clinic-visit"))
    before = task.due_at
    assert before is not None
    change_plan_task(db_session, clinician, task.id, TaskChange(details="Clinic visit, bring your inhalers",
                                                                due_on=today() + timedelta(days=3)))
    assert task.description == "Clinic visit, bring your inhalers"
    assert task.due_at is not None and task.due_at.date() == today() + timedelta(days=3)
    assert task_audit(db_session, task.id)[-1] == (
        f"changed: details, due {before.date().isoformat()} -> {(today() + timedelta(days=3)).isoformat()}")


@pytest.mark.parametrize(("change", "message"), [
    (TaskChange(due_on=date(2020, 1, 1)), "the due date 2020-01-01 is in the past"),
    (TaskChange(due_on=date(2099, 1, 1)), "more than five years ahead"),
    (TaskChange(details="   "), "a task needs its details"),
    (TaskChange(details="x" * 2001), "at most 2,000 characters"),
    (TaskChange(), "nothing to change"),
])
def test_bad_changes_are_refused_with_a_clear_message(
    db_session: Session, demo: DemoSeed, plan: CarePlan, change: TaskChange, message: str
) -> None:
    task = add_plan_task(db_session, demo.users["clinician"], plan.id, NewTask(template="lab-test"))
    with pytest.raises(InvalidInput, match=message):
        change_plan_task(db_session, demo.users["clinician"], task.id, change)


@pytest.mark.parametrize(("new", "message"), [
    (NewTask(template="repeat-scan-99y"), "unknown task template 'repeat-scan-99y'"),
    (NewTask(template=None, kind="surgery", details="x", due_on=date(2030, 1, 1)), "unknown task kind 'surgery'"),
    (NewTask(template=None, kind="other", details="Walk daily"), "needs a due date"),
    (NewTask(template=None, kind="other", details="", due_on=date(2030, 1, 1)), "a task needs its details"),
    (NewTask(template="lab-test", due_on=date(2001, 9, 9)), "in the past"),
])
def test_bad_new_tasks_are_refused(db_session: Session, demo: DemoSeed, plan: CarePlan, new: NewTask, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        add_plan_task(db_session, demo.users["clinician"], plan.id, new)
    assert db_session.scalars(select(FollowUpTask).where(FollowUpTask.kind == "lab-test")).all() == []


def test_unknown_task_or_plan_is_not_found(db_session: Session, demo: DemoSeed, plan: CarePlan) -> None:
    clinician = demo.users["clinician"]
    with pytest.raises(NotFound, match="task 999999 does not exist"):
        change_plan_task(db_session, clinician, 999999, TaskChange(details="x"))
    with pytest.raises(NotFound, match="task 999999"):
        cancel_plan_task(db_session, clinician, 999999, "no longer needed")
    with pytest.raises(NotFound, match="care plan 999999 does not exist"):
        add_plan_task(db_session, clinician, 999999, NewTask(template="lab-test"))


def test_only_the_responsible_clinician_changes_the_plan(db_session: Session, demo: DemoSeed, plan: CarePlan) -> None:
    task = add_plan_task(db_session, demo.users["clinician"], plan.id, NewTask(template="lab-test"))
    outsider = another_clinician(db_session, demo)
    for user in (demo.users["patient"], outsider, demo.users["patient2"], demo.users["radiologist"]):
        with pytest.raises(Forbidden):
            add_plan_task(db_session, user, plan.id, NewTask(template="lab-test"))
        with pytest.raises(Forbidden):
            change_plan_task(db_session, user, task.id, TaskChange(details="changed by someone else"))
        with pytest.raises(Forbidden):
            cancel_plan_task(db_session, user, task.id, "not theirs")
    assert (task.description, task.status) == ("Blood test at the clinic's laboratory", TaskStatus.REQUESTED)
    denied = db_session.scalars(select(AuditEvent).where(AuditEvent.user_id == outsider.id, AuditEvent.outcome != 0)).all()
    assert denied, "the outsider's attempts are audited as denials"


def test_a_finished_consultation_keeps_its_plan_open_until_the_relationship_ends(
    db_session: Session, demo: DemoSeed, plan: CarePlan, app: Any
) -> None:
    clinician = demo.users["clinician"]
    consultation = db_session.get(Consultation, plan.consultation_id)
    assert consultation is not None
    consultation.status = ConsultationStatus.FINISHED
    consultation.ended_at = utcnow() - timedelta(days=1)
    db_session.flush()
    assert add_plan_task(db_session, clinician, plan.id, NewTask(template="lab-test")).id
    consultation.ended_at = utcnow() - timedelta(days=int(app.config["CARE_RELATIONSHIP_DAYS"]) + 1)
    db_session.flush()
    with pytest.raises(Conflict, match="the care relationship has ended"):
        add_plan_task(db_session, clinician, plan.id, NewTask(template="lab-test"))
    consultation.status = ConsultationStatus.CANCELLED
    consultation.ended_at = None
    db_session.flush()
    with pytest.raises(Conflict, match="was cancelled: its follow-up plan cannot be changed"):
        add_plan_task(db_session, clinician, plan.id, NewTask(template="lab-test"))


def test_cancel_needs_a_reason_and_withdraws_an_unbooked_repeat_scan(
    db_session: Session, demo: DemoSeed, plan: CarePlan
) -> None:
    clinician = demo.users["clinician"]
    task = add_plan_task(db_session, clinician, plan.id, NewTask(template="repeat-scan-6m"))
    with pytest.raises(InvalidInput, match="say why"):
        cancel_plan_task(db_session, clinician, task.id, "  ")
    cancel_plan_task(db_session, clinician, task.id, "The nodule was benign on biopsy")
    assert (task.status, task.status_reason) == (TaskStatus.CANCELLED, "The nodule was benign on biopsy")
    referral = db_session.get(Referral, task.referral_id)
    assert referral is not None and referral.status is ReferralStatus.CANCELLED
    assert task_audit(db_session, task.id)[-1] == "cancelled"
    with pytest.raises(Conflict, match="only an open task can be changed"):
        cancel_plan_task(db_session, clinician, task.id, "again")
    with pytest.raises(Conflict, match="only an open task"):
        change_plan_task(db_session, clinician, task.id, TaskChange(details="reopen"))


def test_the_patient_books_the_repeat_scan_from_the_plan(db_session: Session, demo: DemoSeed, plan: CarePlan) -> None:
    clinician, patient = demo.users["clinician"], demo.users["patient"]
    task = add_plan_task(db_session, clinician, plan.id, NewTask(template="repeat-scan-3m"))
    assert repeat_scan_slots(db_session, patient, task.id) == ()  # due in 3 months: nothing offered yet
    change_plan_task(db_session, clinician, task.id, TaskChange(due_on=today() + timedelta(days=5)))
    offers = repeat_scan_slots(db_session, patient, task.id)
    assert offers and all(o.start > utcnow() for o in offers)
    with pytest.raises(Forbidden):
        repeat_scan_slots(db_session, demo.users["patient2"], task.id)
    with pytest.raises(Conflict, match="is not offered for this repeat scan"):
        book_repeat_scan(db_session, patient, task.id, 999999)
    appointment = book_repeat_scan(db_session, patient, task.id, offers[0].slot_id)
    assert appointment.start == offers[0].start and appointment.status == "booked"
    assert task_appointments(db_session, [task])[task.id].appointment_id == appointment.appointment_id
    assert offers[0].slot_id not in {o.slot_id for o in repeat_scan_slots(db_session, patient, task.id)}
    with pytest.raises(Conflict, match="cancel its appointment first"):
        cancel_plan_task(db_session, clinician, task.id, "changed my mind")
    lab = add_plan_task(db_session, clinician, plan.id, NewTask(template="lab-test"))
    with pytest.raises(InvalidInput, match="not a repeat scan"):
        book_repeat_scan(db_session, patient, lab.id, offers[1].slot_id)


def test_the_api_and_fhir_change_the_plan_through_the_same_service(
    as_role: Any, db_session: Session, demo: DemoSeed, plan: CarePlan
) -> None:
    clinician = as_role("clinician")
    added = clinician.post(f"/api/care-plans/{plan.id}/tasks", json={"template": "lab-test"})
    assert added.status_code == 201, added.get_data(as_text=True)
    task_id = added.get_json()["id"]
    bad = clinician.patch(f"/api/tasks/{task_id}", json={"due_on": "31/12/2027"})
    assert bad.status_code == 400 and bad.content_type == "application/problem+json"
    assert "YYYY-MM-DD" in bad.get_json()["detail"]
    assert clinician.patch("/api/tasks/999999", json={"details": "x"}).status_code == 404
    assert as_role("patient").patch(f"/api/tasks/{task_id}", json={"details": "mine"}).status_code == 403
    assert as_role("patient").post(f"/api/care-plans/{plan.id}/tasks", json={"template": "lab-test"}).status_code == 403
    moved = clinician.patch(f"/api/tasks/{task_id}", json={"due_on": (today() + timedelta(days=9)).isoformat()})
    assert moved.status_code == 200 and moved.get_json()["due_at"].startswith((today() + timedelta(days=9)).isoformat())
    assert as_role("patient").get(f"/api/care-plans/{plan.id}").status_code == 200
    assert as_role("patient2").get(f"/api/care-plans/{plan.id}").status_code == 403

    current = clinician.get(f"/fhir/Task/{task_id}").get_json()
    no_reason = clinician.put(f"/fhir/Task/{task_id}", json={**current, "status": "cancelled"})
    assert no_reason.status_code == 400 and no_reason.get_json()["resourceType"] == "OperationOutcome"
    cancelled = clinician.put(f"/fhir/Task/{task_id}", json={
        **current, "status": "cancelled", "statusReason": {"text": "Results came from another lab"}})
    assert cancelled.status_code == 200, cancelled.get_data(as_text=True)
    assert cancelled.get_json()["statusReason"] == {"text": "Results came from another lab"}


def test_the_plan_page_edits_for_the_clinician_and_reads_for_the_patient(
    client: Any, app: Any, db_session: Session, demo: DemoSeed, plan: CarePlan
) -> None:
    url = f"/care-plans/{plan.id}"
    sign_in(client, "clinician")
    page = client.get(url).get_data(as_text=True)
    assert 'id="add-task-form"' in page
    token = csrf_token_of(page)
    added = client.post(url, data={"csrf_token": token, "action": "add", "template": "free", "kind": "other",
                                   "details": "Walk 30 minutes a day", "due_on": "2001-01-01"})
    assert added.status_code == 422 and "is in the past" in added.get_data(as_text=True)
    assert "Walk 30 minutes a day" in added.get_data(as_text=True)  # what was typed comes back
    ok = client.post(url, data={"csrf_token": token, "action": "add", "template": "free", "kind": "other",
                                "details": "Walk 30 minutes a day", "due_on": (today() + timedelta(days=20)).isoformat()})
    assert ok.status_code == 302
    task = db_session.scalar(select(FollowUpTask).where(FollowUpTask.description == "Walk 30 minutes a day"))
    assert task is not None
    confirm = client.get(f"/care-plans/tasks/{task.id}/cancel")
    assert confirm.status_code == 200 and "cannot be reopened" in confirm.get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(FollowUpTask, task.id).status is TaskStatus.REQUESTED  # asking changes nothing

    patient = app.test_client()
    sign_in(patient, "patient")
    mine = patient.get(url)
    assert mine.status_code == 200 and "Walk 30 minutes a day" in mine.get_data(as_text=True)
    assert 'id="add-task-form"' not in mine.get_data(as_text=True)
    assert patient.get(f"/care-plans/tasks/{task.id}/cancel").status_code == 403
    other = app.test_client()
    sign_in(other, "patient2")
    assert other.get(url).status_code == 403


def test_a_planned_repeat_scan_brought_forward_is_ordered_for_booking(
    db_session: Session, demo: DemoSeed, plan: CarePlan
) -> None:
    planned = db_session.scalar(select(FollowUpTask).where(FollowUpTask.care_plan_id == plan.id,
                                                           FollowUpTask.kind == "repeat-scan"))
    assert planned is not None and planned.referral_id is None  # made with the plan: ordered when due
    clinician = demo.users["clinician"]
    change_plan_task(db_session, clinician, planned.id, TaskChange(due_on=today() + timedelta(days=60)))
    assert planned.referral_id is None  # still far off
    change_plan_task(db_session, clinician, planned.id, TaskChange(due_on=today() + timedelta(days=10)))
    assert planned.referral_id is not None and planned.status is TaskStatus.IN_PROGRESS
    assert repeat_scan_slots(db_session, demo.users["patient"], planned.id)


def test_the_template_sets_of_the_consultation_api_go_through_the_same_checks(
    as_role: Any, db_session: Session, demo: DemoSeed, plan: CarePlan
) -> None:
    clinician = as_role("clinician")
    added = clinician.post(f"/api/consultations/{plan.consultation_id}/plan", json={"template": "repeat-scan-6m"})
    assert added.status_code == 201, added.get_data(as_text=True)
    (task,) = added.get_json()
    assert task["status"] == "in-progress" and task["referral_id"] is not None  # ordered, as from the page
    assert task_audit(db_session, task["id"]) == [
        f"added to care plan {plan.id}: repeat-scan, due {task['due_at'][:10]} (template repeat-scan-6m)"]
    consultation = db_session.get(Consultation, plan.consultation_id)
    assert consultation is not None
    consultation.status = ConsultationStatus.CANCELLED
    db_session.commit()
    refused = clinician.post(f"/api/consultations/{plan.consultation_id}/plan", json={"template": "lab-and-visit"})
    assert refused.status_code == 409 and "was cancelled" in refused.get_json()["detail"]
