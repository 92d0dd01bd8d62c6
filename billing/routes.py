"""Billing API and pages: charges, invoices, revenue for administrators."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from flask import Blueprint, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from billing.models import ChargeItem, Invoice
from billing.service import format_money, get_invoice, issue_invoice, list_charges, revenue_by_service_line
from hospital.api import json_body, required
from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.models import Role

logger = logging.getLogger(__name__)

bp = Blueprint("billing", __name__, template_folder="templates")


def charge_json(item: ChargeItem) -> dict[str, Any]:
    return {
        "id": item.id, "event_key": item.event_key, "patient_id": item.patient_id, "service_line": item.service_line.value,
        "code": item.code, "display": item.display, "quantity": item.quantity, "unit_price_minor": item.unit_price_minor,
        "total_minor": item.total_minor, "currency": item.currency, "service_reference": item.service_reference,
        "ai_attributed": item.ai_attributed, "status": item.status.value, "invoice_id": item.invoice_id,
        "fhir": f"ChargeItem/{item.id}",
    }


def invoice_json(invoice: Invoice) -> dict[str, Any]:
    return {
        "id": invoice.id, "patient_id": invoice.patient_id, "status": invoice.status.value, "currency": invoice.currency,
        "total_minor": invoice.total_minor, "paid_minor": invoice.paid_minor, "issued_at": invoice.issued_at.isoformat(),
        "items": [charge_json(i) for i in invoice.items], "fhir": f"Invoice/{invoice.id}",
    }


@bp.get("/api/charge-items")
@require_roles(Role.ADMIN, Role.PATIENT)
def charges() -> ResponseReturnValue:
    user = current_user()
    patient_id = request.args.get("patient_id", type=int) or user.patient_id
    if patient_id is None:
        raise InvalidInput("patient_id is required")
    session = request_session()
    payload = [charge_json(i) for i in list_charges(session, user, patient_id)]
    session.commit()
    return jsonify(payload)


@bp.post("/api/invoices")
@require_roles(Role.ADMIN)
def create_invoice() -> ResponseReturnValue:
    patient_id = required(json_body(), "patient_id", int)
    session = request_session()
    invoice = issue_invoice(session, current_user(), patient_id)
    payload = invoice_json(invoice)
    session.commit()
    return jsonify(payload), 201


@bp.get("/api/invoices/<int:invoice_id>")
@require_roles(Role.ADMIN, Role.PATIENT)
def invoice(invoice_id: int) -> ResponseReturnValue:
    session = request_session()
    payload = invoice_json(get_invoice(session, current_user(), invoice_id))
    session.commit()
    return jsonify(payload)


@bp.get("/api/revenue")
@require_roles(Role.ADMIN)
def revenue() -> ResponseReturnValue:
    return jsonify([asdict(line) for line in revenue_by_service_line(request_session(), current_user())])


@bp.get("/admin/revenue")
@require_roles(Role.ADMIN)
def revenue_page() -> ResponseReturnValue:
    lines = revenue_by_service_line(request_session(), current_user())
    return render_template("billing/revenue.html", lines=lines, money=format_money)


@bp.get("/invoices")
@require_roles(Role.PATIENT)
def my_invoices_page() -> ResponseReturnValue:
    user = current_user()
    session = request_session()
    invoices = list(session.scalars(select(Invoice).where(Invoice.patient_id == user.patient_id).order_by(Invoice.issued_at.desc())))
    record_access(session, user, "E", "Invoice", None, patient_id=user.patient_id, description=f"my invoices ({len(invoices)})")
    session.commit()
    return render_template("billing/invoices.html", invoices=invoices, money=format_money)
