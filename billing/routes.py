"""Billing API and pages: charges, invoices, revenue for administrators."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from billing.charts import revenue_bars_svg
from billing.models import ChargeItem, Invoice, Payer, PaymentKind, ServiceLine
from billing.money import major_units, parse_amount
from billing.service import (
    REVENUE_GROUPS,
    PaymentRequest,
    add_catalog_entry,
    catalog_entries,
    change_price,
    format_money,
    get_catalog_entry,
    get_invoice,
    invoice_balance,
    issue_invoice,
    list_charges,
    patient_receipt,
    recent_invoices,
    record_payment,
    revenue_csv,
    revenue_report,
    set_coverage,
    unbilled_charges,
)
from hospital import clock
from hospital.api import enum_value, json_body, required
from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.clock import utcnow
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.models import Organization, Role
from hospital.web import ask_first, form_action, reader_timezone, request_locales

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
    balance = invoice_balance(invoice)
    return {
        "id": invoice.id, "patient_id": invoice.patient_id, "status": invoice.status.value, "currency": invoice.currency,
        "total_minor": invoice.total_minor, "insurer_share_minor": invoice.insurer_share_minor,
        "patient_share_minor": invoice.patient_share_minor, "paid_minor": invoice.paid_minor,
        "patient_due_minor": balance.patient_due_minor, "insurer_due_minor": balance.insurer_due_minor,
        "issued_at": invoice.issued_at.isoformat(), "items": [charge_json(i) for i in invoice.items],
        "payments": [
            {"id": p.id, "payer": p.payer.value, "kind": p.kind.value, "amount_minor": p.amount_minor,
             "received_at": p.received_at.isoformat()} for p in invoice.payments
        ],
        "fhir": f"Invoice/{invoice.id}",
    }


def _instant(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise InvalidInput(f"not an ISO 8601 time: {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidInput(f"time {value!r} needs a zone offset")
    return parsed


def _payment_request(data: dict[str, Any], default_payer: Payer) -> PaymentRequest:
    return PaymentRequest(
        payer=enum_value(Payer, data.get("payer") or default_payer.value, "payer"),
        kind=enum_value(PaymentKind, data.get("kind") or "payment", "kind"),
        amount_minor=required(data, "amount_minor", int),
        currency=required(data, "currency"),
        idempotency_key=required(data, "idempotency_key"),
        reference=data.get("reference"),
    )


@bp.get("/api/charge-items")
@require_roles(Role.ADMIN, Role.PATIENT)
def charges() -> ResponseReturnValue:
    user = current_user()
    patient_id = request.args.get("patient_id", type=int) or user.patient_id
    if patient_id is None:
        raise InvalidInput("patient_id is required")
    session = request_session()
    payload = [charge_json(i) for i in list_charges(session, user, patient_id)]
    return jsonify(payload)


@bp.post("/api/invoices")
@require_roles(Role.ADMIN)
def create_invoice() -> ResponseReturnValue:
    data = json_body()
    patient_id = required(data, "patient_id", int)
    session = request_session()
    invoice = issue_invoice(session, current_user(), patient_id, _instant(data.get("period_start")),
                            _instant(data.get("period_end")))
    payload = invoice_json(invoice)
    return jsonify(payload), 201


@bp.get("/api/invoices/<int:invoice_id>")
@require_roles(Role.ADMIN, Role.PATIENT)
def invoice(invoice_id: int) -> ResponseReturnValue:
    session = request_session()
    payload = invoice_json(get_invoice(session, current_user(), invoice_id))
    return jsonify(payload)


@bp.post("/api/invoices/<int:invoice_id>/payments")
@require_roles(Role.ADMIN, Role.PATIENT)
def pay(invoice_id: int) -> ResponseReturnValue:
    user = current_user()
    payment_request = _payment_request(json_body(), Payer.PATIENT)
    session = request_session()
    payment = record_payment(session, user, invoice_id, payment_request)
    payload = invoice_json(payment.invoice)
    return jsonify(payload), 201


@bp.post("/api/coverage")
@require_roles(Role.ADMIN)
def coverage() -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    created = set_coverage(session, current_user(), required(data, "patient_id", int), required(data, "payer_name"),
                           required(data, "member_id"), required(data, "share_basis_points", int))
    payload = {"id": created.id, "patient_id": created.patient_id, "payer_name": created.payer_name,
               "share_basis_points": created.share_basis_points}
    return jsonify(payload), 201


@dataclass(frozen=True)
class RevenueRange:
    """Days on the reader's calendar, both inclusive, and the UTC instants [start, end) that bound them."""

    first: date | None
    last: date | None
    start: datetime | None
    end: datetime | None

    @property
    def utc_bounds(self) -> tuple[datetime | None, datetime | None]:
        return self.start, self.end

    def args(self) -> dict[str, str]:
        """As query-string arguments, for the CSV link of the same range."""
        return {name: day.isoformat() for name, day in (("from", self.first), ("to", self.last)) if day}


def _revenue_range(args: MultiDict[str, str], zone_name: str | None) -> RevenueRange:
    def day(name: str) -> date | None:
        value = args.get(name, "").strip()
        if not value:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise InvalidInput(f"the '{name}' date is YYYY-MM-DD (e.g. 2030-02-01), not {value[:40]!r}") from exc

    first, last = day("from"), day("to")
    if first and last and last < first:
        raise InvalidInput("the 'to' date is before the 'from' date")
    zone = clock.zone(zone_name)
    try:
        start = datetime.combine(first, time.min, tzinfo=zone).astimezone(UTC) if first else None
        end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone).astimezone(UTC) if last else None
    except OverflowError as exc:
        raise InvalidInput("the dates must lie between the years 2 and 9998") from exc
    return RevenueRange(first, last, start, end)


@bp.get("/api/revenue")
@require_roles(Role.ADMIN)
def revenue() -> ResponseReturnValue:
    """Revenue grouped by `group_by`; `from`/`to` (inclusive days on the administrator's clock)
    narrow it to the services that happened then. `format=csv`: amounts in major units."""
    group_by = request.args.get("group_by", "service_line")
    user = current_user()
    period = _revenue_range(request.args, reader_timezone(user))
    lines = revenue_report(request_session(), user, group_by, *period.utc_bounds, zone_name=reader_timezone(user))
    if request.args.get("format") == "csv":
        span = f"-{period.first or 'start'}-to-{period.last or 'now'}" if period.first or period.last else ""
        return Response(revenue_csv(lines, group_by), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="revenue-by-{group_by}{span}.csv"'})
    return jsonify([asdict(line) for line in lines])


@bp.get("/admin/revenue")
@require_roles(Role.ADMIN)
def revenue_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    zone_name = clock.zone(reader_timezone(user)).key
    try:
        period = _revenue_range(request.args, zone_name)
    except InvalidInput as exc:
        # The form comes back with what was typed and why, and no figures for a range that is not one.
        page = render_template("billing/revenue.html", reports={}, money=format_money, period=None, error=exc.message,
                               typed=request.args, zone_name=zone_name)
        return page, 422
    reports = {}
    for group_by in REVENUE_GROUPS:
        lines = revenue_report(session, user, group_by, *period.utc_bounds, zone_name=zone_name)
        chart = revenue_bars_svg(
            f"Revenue by {group_by.replace('_', ' ')}", [f"{line.group} ({line.currency})" for line in lines],
            [line.total_minor for line in lines], [line.ai_attributed_minor for line in lines],
            [format_money(line.total_minor, line.currency) for line in lines],
        )
        reports[group_by] = (lines, chart)
    return render_template("billing/revenue.html", reports=reports, money=format_money, period=period, error=None,
                           typed=request.args, zone_name=zone_name)


@bp.route("/admin/catalog", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def catalog_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    form = request.form
    if request.method == "POST":

        def save_price() -> str:
            currency = form.get("currency", "").strip().upper()
            price = _form_minor_units(form.get("price", ""), currency or "EUR")
            line = enum_value(ServiceLine, form.get("service_line"), "service_line")
            start = _form_day(form.get("effective_from", ""))
            ask_first(f"Save {form.get('display', '').strip()} ({form.get('code', '').strip()}) at "
                      f"{format_money(price, currency or 'EUR')} from {start.date().isoformat()}? Once it is in "
                      "force it cannot be taken back; a later price ends it.", "Yes, save the price")
            add_catalog_entry(
                session, user, code=form.get("code", ""), display=form.get("display", ""), service_line=line,
                organization_id=form.get("organization_id", type=int), unit_price_minor=price, currency=currency,
                effective_from=start,
            )
            return "Price saved."

        def change_in_place() -> str:
            entry = get_catalog_entry(session, user, form.get("entry_id", type=int) or 0)
            price = _form_minor_units(form.get("price", ""), entry.currency)
            start = _form_day(form.get("effective_from", ""))
            ask_first(f"Set {entry.display} to {format_money(price, entry.currency)} from {start.date().isoformat()}"
                      f" (now {format_money(entry.unit_price_minor, entry.currency)})? A price in force cannot be "
                      "taken back; a later change starts another one.", "Yes, change the price")
            new = change_price(session, user, entry, price, start)
            return (f"{new.display}: {format_money(new.unit_price_minor, new.currency)} from "
                    f"{new.effective_from.date().isoformat()}.")

        if form_action(session, change_in_place if form.get("action") == "change" else save_price):
            return redirect(url_for("billing.catalog_page"))
    # A refused price is shown again with what was typed (in the form it came from), so nothing
    # has to be typed twice.
    entries = catalog_entries(session, user)
    organizations = session.scalars(select(Organization).order_by(Organization.name)).all()
    changing = form.get("entry_id", type=int) if form.get("action") == "change" else None
    page = render_template("billing/catalog.html", entries=entries, organizations=organizations,
                           service_lines=list(ServiceLine), money=format_money,
                           form=form if request.method == "POST" and changing is None else {},
                           changing=changing, typed=form, today=utcnow().date().isoformat(),
                           amount=major_units)
    return page, 422 if request.method == "POST" else 200


def _form_minor_units(value: str, currency: str) -> int:
    """An amount as the reader's locale writes it ('165,00', '165.00', '1,650.00') -> minor units."""
    return parse_amount(value, currency, request_locales())


def _form_day(value: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
    except ValueError as exc:
        raise InvalidInput(f"the start date is YYYY-MM-DD, not {value!r}") from exc


@bp.route("/admin/billing", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def billing_office_page() -> ResponseReturnValue:
    """The billing office: patients with charges waiting for an invoice (issue it), and the latest
    invoices with what each payer still owes (record the insurer's payment)."""
    session = request_session()
    user = current_user()
    if request.method == "POST":
        form = request.form

        def act() -> str:
            if form.get("action") == "insurer_payment":
                invoice = get_invoice(session, user, form.get("invoice_id", type=int) or 0)
                amount = _form_minor_units(form.get("amount", ""), invoice.currency)
                ask_first(f"Record an insurer payment of {format_money(amount, invoice.currency)} on invoice "
                          f"{invoice.id}? A recorded payment stays on the invoice (only a refund undoes it).",
                          "Yes, record the payment")
                payment = record_payment(session, user, invoice.id, PaymentRequest(
                    payer=Payer.INSURER, kind=PaymentKind.PAYMENT,
                    amount_minor=amount, currency=invoice.currency,
                    idempotency_key=f"web:{user.id}:{form.get('payment_key', '')}",
                    reference=form.get("reference", "").strip() or "insurer remittance"))
                return (f"Insurer payment of {format_money(payment.amount_minor, payment.currency)} "
                        f"recorded on invoice {invoice.id}.")
            patient_id = form.get("patient_id", type=int) or 0
            waiting = [w for w in unbilled_charges(session, user) if w.patient.id == patient_id]
            if waiting:  # nothing waiting: the service says so, there is nothing to ask
                totals = " and ".join(format_money(w.total_minor, w.currency) for w in waiting)
                ask_first(f"Issue an invoice of {totals} to {waiting[0].patient.display_name}? An issued invoice "
                          "cannot be withdrawn.", "Yes, issue the invoice")
            invoice = issue_invoice(session, user, patient_id)
            return (f"Invoice {invoice.id} issued to {invoice.patient.display_name}: "
                    f"{format_money(invoice.total_minor, invoice.currency)}.")

        form_action(session, act)
        return redirect(url_for("billing.billing_office_page"))
    waiting = unbilled_charges(session, user)
    invoices = recent_invoices(session, user)
    page = render_template("billing/office.html", waiting=waiting, invoices=invoices, money=format_money,
                           balances={i.id: invoice_balance(i) for i in invoices}, payment_key=uuid.uuid4().hex)
    return page


@bp.get("/invoices")
@require_roles(Role.PATIENT)
def my_invoices_page() -> ResponseReturnValue:
    user = current_user()
    session = request_session()
    invoices = list(session.scalars(select(Invoice).where(Invoice.patient_id == user.patient_id).order_by(Invoice.issued_at.desc())))
    record_access(session, user, "E", "Invoice", None, patient_id=user.patient_id, description=f"my invoices ({len(invoices)})")
    return render_template("billing/invoices.html", invoices=invoices, money=format_money,
                           balances={i.id: invoice_balance(i) for i in invoices})


@bp.route("/invoices/<int:invoice_id>/pay", methods=["GET", "POST"])
@require_roles(Role.PATIENT)
def pay_page(invoice_id: int) -> ResponseReturnValue:
    """GET (or a POST not yet agreed): what is about to be paid, to confirm (nothing changes);
    POST with `confirmed=yes`: pay the share due, then show the receipt."""
    session = request_session()
    user = current_user()
    invoice = get_invoice(session, user, invoice_id)
    due = invoice_balance(invoice).patient_due_minor
    if due <= 0:  # paid already (a resubmitted form lands here): its receipt is on the invoices page
        flash(f"Nothing is due from you on invoice {invoice_id}: your share is paid.")
        return redirect(url_for("billing.my_invoices_page"))
    # Paying needs the confirmation page's own form: agreed, with its idempotency key.
    if request.method == "GET" or request.form.get("confirmed") != "yes" or not request.form.get("payment_key"):
        # A fresh key per rendered form: a double click or a resubmitted form posts the payment once.
        return render_template("billing/pay_confirm.html", invoice=invoice, due=due, money=format_money,
                               payment_key=request.form.get("payment_key") or uuid.uuid4().hex)
    paid: list[int] = []

    def pay() -> str:
        payment = record_payment(session, user, invoice_id, PaymentRequest(
            payer=Payer.PATIENT, kind=PaymentKind.PAYMENT, amount_minor=due, currency=invoice.currency,
            idempotency_key=f"web:{user.id}:{request.form.get('payment_key', '')}", reference="web payment"))
        paid.append(payment.id)
        return f"Paid {format_money(payment.amount_minor, invoice.currency)} on invoice {invoice_id}. Thank you."

    if form_action(session, pay):
        return redirect(url_for("billing.receipt_page", invoice_id=invoice_id, payment_id=paid[0]))
    return redirect(url_for("billing.my_invoices_page"))


@bp.get("/invoices/<int:invoice_id>/receipts/<int:payment_id>")
@require_roles(Role.PATIENT, Role.ADMIN)
def receipt_page(invoice_id: int, payment_id: int) -> ResponseReturnValue:
    """A payment's receipt, to print or save: who paid what, when, for which services."""
    session = request_session()
    user = current_user()
    payment = patient_receipt(session, user, invoice_id, payment_id)
    return render_template("billing/receipt.html", payment=payment, invoice=payment.invoice, money=format_money,
                           balance=invoice_balance(payment.invoice))
