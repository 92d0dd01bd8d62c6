"""Consultation, prescription and dispensing API, and the clinician's, patient's and
pharmacist's pages."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ai_services.public import report_summary
from followup.models import (
    CarePlan,
    Consultation,
    FollowUpTask,
    MedicationDispense,
    MedicationRequest,
    Message,
    PharmacyStock,
)
from followup.planning import apply_template, overdue_tasks
from followup.service import (
    Prescription,
    dispense,
    dispense_queue,
    finish_consultation,
    get_consultation,
    list_consultations,
    list_messages,
    prescribe,
    prescriptions_for_consultation,
    restock,
    send_message,
    unread_message_counts,
)
from hospital.api import json_body, required
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.models import Organization, OrganizationKind, Role
from hospital.notify import notifier
from hospital.web import form_action

logger = logging.getLogger(__name__)

bp = Blueprint("followup", __name__, template_folder="templates")


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
        "dosage_text": med.dosage_text, "quantity": med.quantity, "refills": med.refills, "status": med.status.value,
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
        medication_display=str(data.get("medication_display") or ""),
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
    message = send_message(session, current_user(), consultation_id, body, notifier())
    payload = message_json(message)
    return jsonify(payload), 201


@bp.get("/api/pharmacy/stock")
@require_roles(Role.PHARMACIST)
def stock() -> ResponseReturnValue:
    user = current_user()
    rows = request_session().scalars(
        select(PharmacyStock).where(PharmacyStock.pharmacy_organization_id == user.organization_id)
        .order_by(PharmacyStock.medication_code)
    )
    return jsonify([{"medication_code": r.medication_code, "quantity_on_hand": r.quantity_on_hand} for r in rows])


@bp.post("/api/pharmacy/stock")
@require_roles(Role.PHARMACIST)
def add_stock() -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    row = restock(session, current_user(), required(data, "medication_code"), required(data, "quantity", int))
    payload = {"medication_code": row.medication_code, "quantity_on_hand": row.quantity_on_hand}
    return jsonify(payload), 201


@bp.get("/consultations")
@require_roles(Role.CLINICIAN, Role.PATIENT)
def consultations_page() -> ResponseReturnValue:
    session = request_session()
    found = list_consultations(session, current_user())
    plans = {c.id: session.scalar(select(CarePlan).where(CarePlan.consultation_id == c.id)) for c in found}
    unread = unread_message_counts(session, current_user(), [c.id for c in found])
    return render_template("followup/consultations.html", consultations=found, plans=plans, unread=unread)


@bp.route("/dispense", methods=["GET", "POST"])
@require_roles(Role.PHARMACIST)
def dispense_queue_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    if request.method == "POST":

        def hand_over() -> str:
            record = dispense(session, user, request.form.get("request_id", type=int) or 0)
            return (f"Dispensed {record.quantity} × {record.request.medication_display} "
                    f"to {record.request.patient.display_name}.")

        form_action(session, hand_over)
        return redirect(url_for("followup.dispense_queue_page"))
    found = dispense_queue(session, user)
    return render_template("followup/dispense_queue.html", requests=found)


@bp.route("/consultations/<int:consultation_id>", methods=["GET", "POST"])
@require_roles(Role.CLINICIAN, Role.PATIENT)
def consultation_page(consultation_id: int) -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    if request.method == "POST":
        form = request.form

        def act() -> str:
            if form.get("action") == "message":
                send_message(session, user, consultation_id, form.get("body", ""), notifier())
                return "Message sent."
            if form.get("action") == "finish":
                finish_consultation(session, user, consultation_id, form.get("note", ""))
                return "Consultation finished; the visit task is marked done."
            med = prescribe(session, user, consultation_id, Prescription(
                medication_code=form.get("medication_code", ""),
                medication_display=form.get("medication_display", ""),
                dosage_text=form.get("dosage_text", ""),
                quantity=_form_count(form.get("quantity"), "quantity"),
                refills=_form_count(form.get("refills") or "0", "refills"),
                pharmacy_organization_id=_form_count(form.get("pharmacy_organization_id"), "pharmacy"),
            ))
            return f"Prescription {med.id} sent to the pharmacy."

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
        posted=posted, form=request.form if posted else {},
    )
    return page, 422 if posted else 200


def _form_count(value: str | None, label: str) -> int:
    if value is None or not value.strip().isdigit():
        raise InvalidInput(f"{label} must be a whole number")
    return int(value)
