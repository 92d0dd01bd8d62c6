"""Consultation, prescription and dispensing API, and the clinician's, patient's and
pharmacist's pages."""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ai_services.public import report_summary
from followup.formulary import find_formulary_item, formulary_items, system_label
from followup.models import (
    CarePlan,
    Consultation,
    FollowUpTask,
    MedicationDispense,
    MedicationRequest,
    Message,
    StockLot,
)
from followup.pharmacy import (
    Delivery,
    dispense,
    dispense_queue,
    remaining_to_dispense,
    restock,
    return_to_prescriber,
    review_dispense,
    stock_lines,
)
from followup.plan_changes import apply_template
from followup.planning import overdue_tasks
from followup.service import (
    CLOSED_CONSULTATION,
    Prescription,
    finish_consultation,
    get_consultation,
    list_consultations,
    list_messages,
    prescribe,
    prescriptions_for_consultation,
    send_message,
    unread_message_counts,
)
from followup.words import template_words
from hospital.api import json_body, required
from hospital.auth import current_user, require_roles
from hospital.clock import utcnow
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext
from hospital.models import Organization, OrganizationKind, Role
from hospital.web import form_action

logger = logging.getLogger(__name__)

bp = Blueprint("followup", __name__, template_folder="templates")
bp.context_processor(template_words)


def consultation_json(session: Any, consultation: Consultation) -> dict[str, Any]:
    plan = session.scalar(select(CarePlan).where(CarePlan.consultation_id == consultation.id))
    report = report_summary(session, consultation.report_id)
    return {
        "id": consultation.id, "report_id": consultation.report_id, "patient_id": consultation.patient_id,
        "practitioner_id": consultation.practitioner_id, "status": consultation.status.value,
        "priority": consultation.priority, "reason": consultation.reason, "note": consultation.note,
        "care_plan": None if plan is None else {
            "id": plan.id, "title": plan.title,
            "tasks": [{"id": t.id, "kind": t.kind, "description": t.description, "status": t.status.value,
                       "due_at": t.due_at.isoformat() if t.due_at else None} for t in plan.tasks],
        },
        "attachments": [{"title": f"Imaging report {consultation.report_id}",
                         "url": url_for("ai_services.report", report_id=consultation.report_id)}] + [
            {"title": f"Key image: finding {f.finding_id}, {f.diameter_mm:.0f} mm",
             "url": url_for("ai_services.key_image", report_id=consultation.report_id, finding_id=f.finding_id)}
            for f in (report.kept_findings if report else ())
        ],
        "fhir": f"Encounter/{consultation.id}",
    }


def medication_request_json(med: MedicationRequest) -> dict[str, Any]:
    return {
        "id": med.id, "consultation_id": med.consultation_id, "patient_id": med.patient_id,
        "medication_code": med.medication_code, "medication_display": med.medication_display,
        "medication_system": med.medication_system, "dosage_text": med.dosage_text, "quantity": med.quantity,
        "refills": med.refills, "status": med.status.value, "status_reason": med.status_reason,
        "dispensed": sum(d.quantity for d in med.dispenses), "fhir": f"MedicationRequest/{med.id}",
    }


def dispense_json(record: MedicationDispense) -> dict[str, Any]:
    return {"id": record.id, "request_id": record.request_id, "quantity": record.quantity,
            "dispensed_at": record.dispensed_at.isoformat(), "fhir": f"MedicationDispense/{record.id}"}


@bp.get("/api/consultations")
@require_roles(Role.CLINICIAN, Role.PATIENT, Role.ADMIN)
def consultations() -> ResponseReturnValue:
    session = request_session()
    payload = [consultation_json(session, c) for c in list_consultations(session, current_user())]
    return jsonify(payload)


@bp.get("/api/consultations/<int:consultation_id>")
@require_roles()
def consultation(consultation_id: int) -> ResponseReturnValue:
    session = request_session()
    payload = consultation_json(session, get_consultation(session, current_user(), consultation_id))
    return jsonify(payload)


@bp.post("/api/consultations/<int:consultation_id>/finish")
@require_roles(Role.CLINICIAN)
def finish(consultation_id: int) -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    finished = finish_consultation(session, current_user(), consultation_id, required(data, "note"))
    payload = consultation_json(session, finished)
    return jsonify(payload)


@bp.post("/api/consultations/<int:consultation_id>/prescriptions")
@require_roles(Role.CLINICIAN)
def create_prescription(consultation_id: int) -> ResponseReturnValue:
    data = json_body()
    prescription = Prescription(
        medication_code=required(data, "medication_code"),
        dosage_text=required(data, "dosage_text"),
        quantity=required(data, "quantity", int),
        refills=int(data.get("refills") or 0),
        pharmacy_organization_id=required(data, "pharmacy_organization_id", int),
    )
    session = request_session()
    med = prescribe(session, current_user(), consultation_id, prescription)
    payload = medication_request_json(med)
    return jsonify(payload), 201


@bp.get("/api/dispense-queue")
@require_roles(Role.PHARMACIST)
def queue() -> ResponseReturnValue:
    session = request_session()
    payload = [medication_request_json(m) for m in dispense_queue(session, current_user())]
    return jsonify(payload)


@bp.post("/api/medication-requests/<int:request_id>/dispense")
@require_roles(Role.PHARMACIST)
def dispense_request(request_id: int) -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    quantity = data.get("quantity") if isinstance(data, dict) else None
    session = request_session()
    record = dispense(session, current_user(), request_id, quantity if isinstance(quantity, int) else None)
    payload = dispense_json(record)
    return jsonify(payload), 201


def task_json(task: FollowUpTask) -> dict[str, Any]:
    return {"id": task.id, "kind": task.kind, "description": task.description, "status": task.status.value,
            "due_at": task.due_at.isoformat() if task.due_at else None, "referral_id": task.referral_id,
            "patient_id": task.patient_id, "fhir": f"Task/{task.id}"}


@bp.post("/api/consultations/<int:consultation_id>/plan")
@require_roles(Role.CLINICIAN)
def add_plan(consultation_id: int) -> ResponseReturnValue:
    template = required(json_body(), "template")
    session = request_session()
    tasks = apply_template(session, current_user(), consultation_id, template)
    payload = [task_json(t) for t in tasks]
    return jsonify(payload), 201


@bp.get("/api/tasks/overdue")
@require_roles(Role.CLINICIAN, Role.PATIENT)
def overdue() -> ResponseReturnValue:
    session = request_session()
    payload = [task_json(t) for t in overdue_tasks(session, current_user())]
    return jsonify(payload)


def message_json(message: Message) -> dict[str, Any]:
    return {"id": message.id, "consultation_id": message.consultation_id, "from": message.sender.role.value,
            "to": message.recipient_role, "body": message.body, "sent_at": message.sent_at.isoformat(),
            "read_at": message.read_at.isoformat() if message.read_at else None, "fhir": f"Communication/{message.id}"}


@bp.get("/api/consultations/<int:consultation_id>/messages")
@require_roles(Role.CLINICIAN, Role.PATIENT)
def messages(consultation_id: int) -> ResponseReturnValue:
    session = request_session()
    payload = [message_json(m) for m in list_messages(session, current_user(), consultation_id)]
    return jsonify(payload)


@bp.post("/api/consultations/<int:consultation_id>/messages")
@require_roles(Role.CLINICIAN, Role.PATIENT)
def post_message(consultation_id: int) -> ResponseReturnValue:
    body = required(json_body(), "body")
    session = request_session()
    message = send_message(session, current_user(), consultation_id, body)
    payload = message_json(message)
    return jsonify(payload), 201


@bp.post("/api/medication-requests/<int:request_id>/return")
@require_roles(Role.PHARMACIST)
def return_request(request_id: int) -> ResponseReturnValue:
    reason = required(json_body(), "reason")
    session = request_session()
    med = return_to_prescriber(session, current_user(), request_id, reason)
    payload = medication_request_json(med)
    return jsonify(payload)


def lot_json(lot: StockLot) -> dict[str, Any]:
    return {"lot_number": lot.lot_number, "expires_on": lot.expires_on.isoformat() if lot.expires_on else None,
            "quantity_on_hand": lot.quantity_on_hand}


@bp.get("/api/pharmacy/stock")
@require_roles(Role.PHARMACIST)
def stock() -> ResponseReturnValue:
    """Per code: units in date (what can be dispensed), units expired, and each lot."""
    lines = stock_lines(request_session(), current_user())
    return jsonify([{"medication_code": line.medication_code, "quantity_on_hand": line.in_date,
                     "expired": line.expired, "lots": [lot_json(lot) for lot in line.lots]} for line in lines])


@bp.post("/api/pharmacy/stock")
@require_roles(Role.PHARMACIST)
def add_stock() -> ResponseReturnValue:
    data = json_body()
    delivery = Delivery(medication_code=required(data, "medication_code"), lot_number=required(data, "lot_number"),
                        quantity=required(data, "quantity", int), expires_on=_iso_date(required(data, "expires_on")))
    session = request_session()
    lot = restock(session, current_user(), delivery)
    payload = {"medication_code": lot.medication_code, **lot_json(lot)}
    return jsonify(payload), 201


@bp.get("/consultations")
@require_roles(Role.CLINICIAN, Role.PATIENT)
def consultations_page() -> ResponseReturnValue:
    session = request_session()
    found = list_consultations(session, current_user())
    plans = {c.id: session.scalar(select(CarePlan).where(CarePlan.consultation_id == c.id)) for c in found}
    unread = unread_message_counts(session, current_user(), [c.id for c in found])
    return render_template("followup/consultations.html", consultations=found, plans=plans, unread=unread)


@bp.get("/dispense")
@require_roles(Role.PHARMACIST)
def dispense_queue_page() -> ResponseReturnValue:
    session = request_session()
    found = dispense_queue(session, current_user())
    known = {m.medication_code for m in found if find_formulary_item(session, m.medication_code) is not None}
    on_hand = {line.medication_code: line.in_date for line in stock_lines(session, current_user())}
    return render_template("followup/dispense_queue.html", requests=found, known=known, on_hand=on_hand,
                           remaining={m.id: remaining_to_dispense(m) for m in found})


@bp.route("/dispense/<int:request_id>", methods=["GET", "POST"])
@require_roles(Role.PHARMACIST)
def dispense_page(request_id: int) -> ResponseReturnValue:
    """GET: what is about to be handed over, to confirm (nothing changes); POST: hand it over."""
    session = request_session()
    user = current_user()
    if request.method == "POST":

        def hand_over() -> str:
            record = dispense(session, user, request_id, _form_count(request.form.get("quantity"), "quantity"))
            med = record.request
            left = remaining_to_dispense(med)
            if left:
                return _("Dispensed %(quantity)s × %(medication)s to %(patient)s; %(left)s still to supply.",
                         quantity=record.quantity, medication=med.medication_display,
                         patient=med.patient.display_name, left=left)
            return _("Dispensed %(quantity)s × %(medication)s to %(patient)s.", quantity=record.quantity,
                     medication=med.medication_display, patient=med.patient.display_name)

        form_action(session, hand_over)
        return redirect(url_for("followup.dispense_queue_page"))
    med = review_dispense(session, user, request_id)
    left = remaining_to_dispense(med)
    quantity = request.args.get("quantity", type=int) or min(med.quantity, left)
    return render_template("followup/dispense_confirm.html", med=med, quantity=quantity, remaining=left)


@bp.route("/dispense/<int:request_id>/return", methods=["GET", "POST"])
@require_roles(Role.PHARMACIST)
def return_page(request_id: int) -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    if request.method == "POST":
        if form_action(session, lambda: _return(session, request_id, request.form.get("reason", ""))):
            return redirect(url_for("followup.dispense_queue_page"))
    med = review_dispense(session, user, request_id)
    posted = request.method == "POST"
    page = render_template("followup/return_confirm.html", med=med, reason=request.form.get("reason", "") if posted
                           else request.args.get("reason", ""), known=find_formulary_item(session, med.medication_code))
    return page, 422 if posted else 200


def _return(session: Any, request_id: int, reason: str) -> str:
    med = return_to_prescriber(session, current_user(), request_id, reason)
    return _("Prescription %(id)s returned to the prescriber.", id=med.id)


@bp.route("/pharmacy/stock", methods=["GET", "POST"])
@require_roles(Role.PHARMACIST)
def stock_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    posted = request.method == "POST"
    if posted:
        form = request.form

        def receive() -> str:
            lot = restock(session, user, Delivery(
                medication_code=form.get("medication_code", ""), lot_number=form.get("lot_number", ""),
                quantity=_form_count(form.get("quantity"), "quantity"), expires_on=_iso_date(form.get("expires_on"))))
            item = find_formulary_item(session, lot.medication_code)
            name = item.display if item else lot.medication_code
            return _("Received %(quantity)s × %(medication)s, lot %(lot)s; %(on_hand)s in this lot.",
                     quantity=form.get("quantity"), medication=name, lot=lot.lot_number, on_hand=lot.quantity_on_hand)

        if form_action(session, receive):
            return redirect(url_for("followup.stock_page"))
    page = render_template("followup/stock.html", lines=stock_lines(session, user), items=formulary_items(session),
                           today=utcnow().date(), system_label=system_label, form=request.form if posted else {})
    return page, 422 if posted else 200


@bp.route("/consultations/<int:consultation_id>", methods=["GET", "POST"])
@require_roles(Role.CLINICIAN, Role.PATIENT)
def consultation_page(consultation_id: int) -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    if request.method == "POST":
        form = request.form

        def act() -> str:
            if form.get("action") == "message":
                send_message(session, user, consultation_id, form.get("body", ""))
                return _("Message sent.")
            if form.get("action") == "finish":
                finish_consultation(session, user, consultation_id, form.get("note", ""))
                return _("Consultation finished; the visit task is marked done.")
            med = prescribe(session, user, consultation_id, Prescription(
                medication_code=form.get("medication_code", ""),
                dosage_text=form.get("dosage_text", ""),
                quantity=_form_count(form.get("quantity"), "quantity"),
                refills=_form_count(form.get("refills") or "0", "refills"),
                pharmacy_organization_id=_form_count(form.get("pharmacy_organization_id"), "pharmacy"),
            ))
            return _("Prescription %(id)s sent to the pharmacy.", id=med.id)

        if form_action(session, act):
            return redirect(url_for("followup.consultation_page", consultation_id=consultation_id))
    # A refused message, prescription or note is shown again with what was typed in its form.
    posted = request.form.get("action", "prescribe") if request.method == "POST" else None
    found = get_consultation(session, user, consultation_id)
    page = render_template(
        "followup/consultation.html", consultation=found,
        plan=session.scalar(select(CarePlan).where(CarePlan.consultation_id == found.id)),
        prescriptions=prescriptions_for_consultation(session, found.id),
        messages=list_messages(session, user, found.id),
        can_message=(user.role is Role.CLINICIAN and found.practitioner_id == user.practitioner_id)
        or (user.role is Role.PATIENT and found.patient_id == user.patient_id),
        pharmacies=session.scalars(
            select(Organization).where(Organization.kind == OrganizationKind.PHARMACY).order_by(Organization.name)
        ).all(),
        can_act=user.role is Role.CLINICIAN and found.practitioner_id == user.practitioner_id,
        can_prescribe=found.status not in CLOSED_CONSULTATION,
        formulary=formulary_items(session), system_label=system_label,
        posted=posted, form=request.form if posted else {},
    )
    return page, 422 if posted else 200


# What a number typed into a page's form is called in the message that refuses it.
_COUNT_FIELDS = {
    "quantity": lazy_gettext("quantity must be a whole number"),
    "refills": lazy_gettext("refills must be a whole number"),
    "pharmacy": lazy_gettext("choose a pharmacy"),
}


def _form_count(value: str | None, field: str) -> int:
    if value is None or not value.strip().isdigit():
        raise InvalidInput(str(_COUNT_FIELDS[field]))
    return int(value)


def _iso_date(value: object) -> date:
    try:
        return date.fromisoformat(str(value or "").strip())
    except ValueError:
        raise InvalidInput(_("the expiry date must be a date (YYYY-MM-DD), not %(value)s",
                             value=repr(str(value)[:32]))) from None
