"""The follow-up plan's page and API: the responsible clinician changes the plan (add, change,
cancel tasks); the patient reads it and books the repeat scan it orders. The workflow is
`followup.plan_changes`; this module parses, authorises through it, and renders or serialises."""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import date
from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from followup.models import CarePlan, FollowUpTask
from followup.plan_changes import (
    PLAN_TASK_TEMPLATES,
    TASK_KINDS,
    TEMPLATE_LABELS,
    NewTask,
    TaskChange,
    add_plan_task,
    book_repeat_scan,
    cancel_plan_task,
    change_plan_task,
    may_change_plan,
    repeat_scan_slots,
    task_appointments,
)
from followup.words import task_description, template_words
from hospital import clock
from hospital.api import json_body, required
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.i18n import local_clock, local_date
from hospital.models import Role, User
from hospital.records import load_record
from hospital.web import form_action
from imaging_orders.public import AppointmentSummary, SlotOffer

logger = logging.getLogger(__name__)

bp = Blueprint("care_plans", __name__, template_folder="templates")
bp.context_processor(template_words)


def read_plan(session: Session, user: User, plan_id: int) -> CarePlan:
    """The care plan, for anyone its patient's record is open to (audited as a read)."""
    return load_record(session, user, CarePlan, plan_id, entity_type="CarePlan", noun="care plan")


def _day(value: object) -> date | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(_("the due date must be a date (YYYY-MM-DD), not %(value)s", value=repr(text[:32]))) from None


def _text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value


def appointment_json(appointment: AppointmentSummary | None) -> dict[str, Any] | None:
    if appointment is None:
        return None
    return {"id": appointment.appointment_id, "start": appointment.start.isoformat(),
            "end": appointment.end.isoformat(), "status": appointment.status, "room": appointment.room,
            "fhir": f"Appointment/{appointment.appointment_id}"}


def plan_task_json(task: FollowUpTask, appointment: AppointmentSummary | None = None) -> dict[str, Any]:
    return {"id": task.id, "care_plan_id": task.care_plan_id, "kind": task.kind, "description": task.description,
            "status": task.status.value, "status_reason": task.status_reason,
            "due_at": task.due_at.isoformat() if task.due_at else None, "referral_id": task.referral_id,
            "appointment": appointment_json(appointment), "patient_id": task.patient_id, "fhir": f"Task/{task.id}"}


def slot_offer_json(offer: SlotOffer) -> dict[str, Any]:
    return {"id": offer.slot_id, "start": offer.start.isoformat(), "end": offer.end.isoformat(), "room": offer.room}


@bp.get("/api/care-plans/<int:plan_id>")
@require_roles(Role.CLINICIAN, Role.PATIENT)
def plan(plan_id: int) -> ResponseReturnValue:
    session = request_session()
    found = read_plan(session, current_user(), plan_id)
    booked = task_appointments(session, list(found.tasks))
    payload = {"id": found.id, "title": found.title, "status": found.status, "consultation_id": found.consultation_id,
               "patient_id": found.patient_id, "tasks": [plan_task_json(t, booked.get(t.id)) for t in found.tasks],
               "fhir": f"CarePlan/{found.id}"}
    return jsonify(payload)


@bp.post("/api/care-plans/<int:plan_id>/tasks")
@require_roles(Role.CLINICIAN)
def add_task(plan_id: int) -> ResponseReturnValue:
    data = json_body()
    new = NewTask(template=_text(data, "template"), details=_text(data, "details") or "",
                  kind=_text(data, "kind") or "other", due_on=_day(data.get("due_on")))
    session = request_session()
    task = add_plan_task(session, current_user(), plan_id, new)
    payload = plan_task_json(task)
    return jsonify(payload), 201


@bp.patch("/api/tasks/<int:task_id>")
@require_roles(Role.CLINICIAN)
def change_task(task_id: int) -> ResponseReturnValue:
    data = json_body()
    change = TaskChange(details=_text(data, "details"), due_on=_day(data.get("due_on")))
    session = request_session()
    task = change_plan_task(session, current_user(), task_id, change)
    payload = plan_task_json(task)
    return jsonify(payload)


@bp.post("/api/tasks/<int:task_id>/cancel")
@require_roles(Role.CLINICIAN)
def cancel_task(task_id: int) -> ResponseReturnValue:
    reason = required(json_body(), "reason")
    session = request_session()
    task = cancel_plan_task(session, current_user(), task_id, reason)
    payload = plan_task_json(task)
    return jsonify(payload)


@bp.get("/api/tasks/<int:task_id>/slots")
@require_roles(Role.PATIENT, Role.CLINICIAN)
def task_slots(task_id: int) -> ResponseReturnValue:
    session = request_session()
    payload = [slot_offer_json(s) for s in repeat_scan_slots(session, current_user(), task_id)]
    return jsonify(payload)


@bp.post("/api/tasks/<int:task_id>/booking")
@require_roles(Role.PATIENT, Role.CLINICIAN)
def book_task(task_id: int) -> ResponseReturnValue:
    slot_id = required(json_body(), "slot_id", int)
    session = request_session()
    appointment = book_repeat_scan(session, current_user(), task_id, slot_id)
    payload = appointment_json(appointment)
    return jsonify(payload), 201


def _by_local_day(offers: tuple[SlotOffer, ...]) -> list[tuple[str, list[tuple[SlotOffer, str]]]]:
    """Offers grouped under the day they fall on at their centre, each with its local time of day
    (for the phone's day-then-time picker; the zone is named once, not on every button)."""
    days: OrderedDict[str, list[tuple[SlotOffer, str]]] = OrderedDict()
    for offer in offers:
        local = offer.start.astimezone(clock.zone(offer.centre_timezone))
        days.setdefault(local_date(local.date(), fmt="full"), []).append(
            (offer, local_clock(offer.start, offer.centre_timezone)))
    return list(days.items())


@bp.route("/care-plans/<int:plan_id>", methods=["GET", "POST"])
@require_roles(Role.CLINICIAN, Role.PATIENT)
def plan_page(plan_id: int) -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    form = request.form
    if request.method == "POST":

        def act() -> str:
            action = form.get("action")
            task_id = form.get("task_id", type=int) or 0
            if action == "add":
                template = form.get("template", "")
                task = add_plan_task(session, user, plan_id, NewTask(
                    template=None if template in ("", "free") else template, details=form.get("details", ""),
                    kind=form.get("kind", "other"), due_on=_day(form.get("due_on"))))
                if task.referral_id:
                    return _("Task added: %(task)s. It is ordered: the patient can book it from the plan.",
                             task=task_description(task))
                return _("Task added: %(task)s.", task=task_description(task))
            if action == "change":
                task = change_plan_task(session, user, task_id, TaskChange(
                    details=form.get("details"), due_on=_day(form.get("due_on"))))
                return _("Task changed: %(task)s.", task=task_description(task))
            if action == "book":
                appointment = book_repeat_scan(session, user, task_id, form.get("slot_id", type=int) or 0)
                zone = appointment.centre_timezone
                return _("Repeat scan booked for %(day)s at %(time)s.",
                         day=local_date(appointment.start, zone, "full"), time=local_clock(appointment.start, zone))
            raise InvalidInput(_("unknown action %(action)s", action=repr(str(action)[:32])))

        if form_action(session, act):
            return redirect(url_for("care_plans.plan_page", plan_id=plan_id))
    found = read_plan(session, user, plan_id)
    tasks = list(found.tasks)
    is_patient = user.role is Role.PATIENT
    offers = {t.id: _by_local_day(repeat_scan_slots(session, user, t.id)) for t in tasks
              if is_patient and t.kind == "repeat-scan" and t.referral_id is not None and t.status.value in
              ("requested", "in-progress")}
    booked = task_appointments(session, tasks)
    # The zone the times are read in, named once per picker (one centre per order).
    zones = {task_id: days[0][1][0][0].centre_timezone for task_id, days in offers.items() if days}
    page = render_template(
        "followup/plan.html", plan=found, tasks=tasks, booked=booked, offers=offers, zones=zones,
        can_change=may_change_plan(session, user, found), templates=TEMPLATE_LABELS, kinds=TASK_KINDS,
        template_keys=list(PLAN_TASK_TEMPLATES), posted=form.get("action") if request.method == "POST" else None,
        form=form if request.method == "POST" else {},
    )
    return page, 422 if request.method == "POST" else 200


@bp.route("/care-plans/tasks/<int:task_id>/cancel", methods=["GET", "POST"])
@require_roles(Role.CLINICIAN)
def cancel_task_page(task_id: int) -> ResponseReturnValue:
    """GET: what cancelling means, and the reason box (nothing changes); POST: cancel the task."""
    session = request_session()
    user = current_user()
    task = session.get(FollowUpTask, task_id)
    if request.method == "POST":
        if form_action(session, lambda: _cancel(session, user, task_id, request.form.get("reason", ""))):
            assert task is not None  # the service found it
            return redirect(url_for("care_plans.plan_page", plan_id=task.care_plan_id))
    if task is None:
        raise NotFound(_("task %(id)s does not exist", id=task_id))
    read_plan(session, user, task.care_plan_id)
    page = render_template("followup/task_cancel_confirm.html", task=task,
                           reason=request.form.get("reason", "") if request.method == "POST" else "")
    return page, 422 if request.method == "POST" else 200


def _cancel(session: Session, user: User, task_id: int, reason: str) -> str:
    task = cancel_plan_task(session, user, task_id, reason)
    return _("Task cancelled: %(task)s.", task=task_description(task))
