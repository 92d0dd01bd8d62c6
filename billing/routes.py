"""Billing API and pages: charges, invoices, revenue for administrators.

The pages speak the reader's language and write money as their locale does, in the currency each
amount was charged in (`hospital.i18n.format_money`: "¥1,280.00", "€175.00"); the JSON API keeps
integer minor units and codes."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from babel import Locale
from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from billing.charts import revenue_bars_svg
from billing.labels import (
    REVENUE_CHART_LEGEND,
    REVENUE_GROUP_CHART_TITLES,
    REVENUE_GROUP_COLUMNS,
    REVENUE_GROUP_DOWNLOADS,
    REVENUE_GROUP_HEADINGS,
    payment_reference_word,
    revenue_group_label,
    service_line_word,
)
from billing.models import ChargeItem, Invoice, Payer, PaymentKind, ServiceLine
from billing.money import parse_amount, typed_amount
from billing.service import (
    REVENUE_GROUPS,
    PaymentRequest,
    add_catalog_entry,
    catalog_entries,
    change_price,
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
from hospital.i18n import babel_locale, format_money, local_date, local_datetime
from hospital.i18n import gettext as _
from hospital.models import Organization, Role
from hospital.web import ask_first, form_action, reader_timezone, request_locales

logger = logging.getLogger(__name__)

bp = Blueprint("billing", __name__, template_folder="templates")


@bp.context_processor
def _page_words() -> dict[str, object]:
    """What every billing page writes money, dates and billing's codes with."""
    return {
        "money": format_money, "local_datetime": local_datetime, "service_line_word": service_line_word,
        "revenue_group_label": revenue_group_label, "revenue_group_headings": REVENUE_GROUP_HEADINGS,
        "revenue_group_columns": REVENUE_GROUP_COLUMNS, "revenue_group_downloads": REVENUE_GROUP_DOWNLOADS,
        "payment_reference_word": payment_reference_word,
        "typed_amount": lambda minor, currency: typed_amount(minor, currency, _typing_locales()[0]),
    }


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
            message = (_("The “from” date is YYYY-MM-DD (e.g. 2030-02-01), not “%(typed)s”.", typed=value[:40])
                       if name == "from" else
                       _("The “to” date is YYYY-MM-DD (e.g. 2030-02-28), not “%(typed)s”.", typed=value[:40]))
            raise InvalidInput(message) from exc

    first, last = day("from"), day("to")
    if first and last and last < first:
        raise InvalidInput(_("The “to” date is before the “from” date."))
    zone = clock.zone(zone_name)
    try:
        start = datetime.combine(first, time.min, tzinfo=zone).astimezone(UTC) if first else None
        end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone).astimezone(UTC) if last else None
    except OverflowError as exc:
        raise InvalidInput(_("The dates must lie between the years 2 and 9998.")) from exc
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
        page = render_template("billing/revenue.html", reports={}, period=None, error=exc.message,
                               typed=request.args, zone_name=zone_name)
        return page, 422
    reports = {}
    for group_by in REVENUE_GROUPS:
        lines = revenue_report(session, user, group_by, *period.utc_bounds, zone_name=zone_name)
        chart = revenue_bars_svg(
            str(REVENUE_GROUP_CHART_TITLES[group_by]),
            [f"{revenue_group_label(group_by, line.group)} ({line.currency})" for line in lines],
            [line.total_minor for line in lines], [line.ai_attributed_minor for line in lines],
            [format_money(line.total_minor, line.currency) for line in lines],
            legend=(str(REVENUE_CHART_LEGEND[0]), str(REVENUE_CHART_LEGEND[1])),
        )
        reports[group_by] = (lines, chart)
    return render_template("billing/revenue.html", reports=reports, period=period, error=None,
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
            ask_first(_("Save %(service)s (%(code)s) at %(price)s from %(date)s? Once it is in force it cannot be "
                        "taken back; a later price ends it.", service=form.get("display", "").strip(),
                        code=form.get("code", "").strip(), price=format_money(price, currency or "EUR"),
                        date=local_date(start, "UTC")), _("Yes, save the price"))
            add_catalog_entry(
                session, user, code=form.get("code", ""), display=form.get("display", ""), service_line=line,
                organization_id=form.get("organization_id", type=int), unit_price_minor=price, currency=currency,
                effective_from=start,
            )
            return _("Price saved.")

        def change_in_place() -> str:
            entry = get_catalog_entry(session, user, form.get("entry_id", type=int) or 0)
            price = _form_minor_units(form.get("price", ""), entry.currency)
            start = _form_day(form.get("effective_from", ""))
            ask_first(_("Set %(service)s to %(price)s from %(date)s (now %(current)s)? A price in force cannot be "
                        "taken back; a later change starts another one.", service=entry.display,
                        price=format_money(price, entry.currency), date=local_date(start, "UTC"),
                        current=format_money(entry.unit_price_minor, entry.currency)), _("Yes, change the price"))
            new = change_price(session, user, entry, price, start)
            return _("%(service)s: %(price)s from %(date)s.", service=new.display,
                     price=format_money(new.unit_price_minor, new.currency), date=local_date(new.effective_from, "UTC"))

        if form_action(session, change_in_place if form.get("action") == "change" else save_price):
            return redirect(url_for("billing.catalog_page"))
    # A refused price is shown again with what was typed (in the form it came from), so nothing
    # has to be typed twice.
    entries = catalog_entries(session, user)
    organizations = session.scalars(select(Organization).order_by(Organization.name)).all()
    changing = form.get("entry_id", type=int) if form.get("action") == "change" else None
    page = render_template("billing/catalog.html", entries=entries, organizations=organizations,
                           service_lines=list(ServiceLine),
                           form=form if request.method == "POST" and changing is None else {},
                           changing=changing, typed=form, today=utcnow().date().isoformat())
    return page, 422 if request.method == "POST" else 200


def _form_minor_units(value: str, currency: str) -> int:
    """An amount as the reader's locale writes it ('165,00', '165.00', '1,650.00') -> minor units."""
    return parse_amount(value, currency, _typing_locales())


def _typing_locales() -> list[Locale]:
    """The locales an amount typed on this page is read in, best first: the browser's (the habits of
    the hands typing: '165,00' and '165,005' from a German browser are 165.00 and a refusal, never
    165,005.00), then the page's own language. The first one also writes the amounts a form is
    filled with and the examples beside it, so that what a page suggests is read back as meant."""
    locales = request_locales()
    page = babel_locale()
    return locales if page in locales else [*locales, page]


def _form_day(value: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
    except ValueError as exc:
        raise InvalidInput(_("The start date is YYYY-MM-DD, not “%(typed)s”.", typed=value[:40])) from exc


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
                ask_first(_("Record an insurer payment of %(amount)s on invoice %(number)s? A recorded payment "
                            "stays on the invoice (only a refund undoes it).",
                            amount=format_money(amount, invoice.currency), number=invoice.id),
                          _("Yes, record the payment"))
                payment = record_payment(session, user, invoice.id, PaymentRequest(
                    payer=Payer.INSURER, kind=PaymentKind.PAYMENT,
                    amount_minor=amount, currency=invoice.currency,
                    idempotency_key=f"web:{user.id}:{form.get('payment_key', '')}",
                    reference=form.get("reference", "").strip() or "insurer remittance"))
                return _("Insurer payment of %(amount)s recorded on invoice %(number)s.",
                         amount=format_money(payment.amount_minor, payment.currency), number=invoice.id)
            patient_id = form.get("patient_id", type=int) or 0
            waiting = [w for w in unbilled_charges(session, user) if w.patient.id == patient_id]
            if waiting:  # nothing waiting: the service says so, there is nothing to ask
                totals = _(" and ").join(format_money(w.total_minor, w.currency) for w in waiting)
                ask_first(_("Issue an invoice of %(amount)s to %(patient)s? An issued invoice cannot be withdrawn.",
                            amount=totals, patient=waiting[0].patient.display_name), _("Yes, issue the invoice"))
            invoice = issue_invoice(session, user, patient_id)
            return _("Invoice %(number)s issued to %(patient)s: %(amount)s.", number=invoice.id,
                     patient=invoice.patient.display_name, amount=format_money(invoice.total_minor, invoice.currency))

        form_action(session, act)
        return redirect(url_for("billing.billing_office_page"))
    waiting = unbilled_charges(session, user)
    invoices = recent_invoices(session, user)
    page = render_template("billing/office.html", waiting=waiting, invoices=invoices,
                           balances={i.id: invoice_balance(i) for i in invoices}, payment_key=uuid.uuid4().hex)
    return page


@bp.get("/invoices")
@require_roles(Role.PATIENT)
def my_invoices_page() -> ResponseReturnValue:
    user = current_user()
    session = request_session()
    invoices = list(session.scalars(select(Invoice).where(Invoice.patient_id == user.patient_id).order_by(Invoice.issued_at.desc())))
    record_access(session, user, "E", "Invoice", None, patient_id=user.patient_id, description=f"my invoices ({len(invoices)})")
    return render_template("billing/invoices.html", invoices=invoices,
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
        flash(_("Nothing is due from you on invoice %(number)s: your share is paid.", number=invoice_id))
        return redirect(url_for("billing.my_invoices_page"))
    # Paying needs the confirmation page's own form: agreed, with its idempotency key.
    if request.method == "GET" or request.form.get("confirmed") != "yes" or not request.form.get("payment_key"):
        # A fresh key per rendered form: a double click or a resubmitted form posts the payment once.
        return render_template("billing/pay_confirm.html", invoice=invoice, due=due,
                               payment_key=request.form.get("payment_key") or uuid.uuid4().hex)
    paid: list[int] = []

    def pay() -> str:
        payment = record_payment(session, user, invoice_id, PaymentRequest(
            payer=Payer.PATIENT, kind=PaymentKind.PAYMENT, amount_minor=due, currency=invoice.currency,
            idempotency_key=f"web:{user.id}:{request.form.get('payment_key', '')}", reference="web payment"))
        paid.append(payment.id)
        return _("Paid %(amount)s on invoice %(number)s. Thank you.",
                 amount=format_money(payment.amount_minor, invoice.currency), number=invoice_id)

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
    return render_template("billing/receipt.html", payment=payment, invoice=payment.invoice,
                           balance=invoice_balance(payment.invoice))
