"""Billing: price billable events from the catalog into exactly one ChargeItem each, gather a
patient's charges into an invoice, and summarise revenue (including what the AI made possible).

Money is integer minor units plus an ISO 4217 currency everywhere. The errors a person may read
(on the billing pages, flashed) are in their language, with amounts as their locale writes them.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from ai_services.events import AnalysisCompleted, PackageAnalysisCompleted
from billing.models import (
    CatalogEntry,
    ChargeItem,
    ChargeStatus,
    Coverage,
    Invoice,
    InvoiceStatus,
    Payer,
    Payment,
    PaymentKind,
    ServiceLine,
)
from billing.money import major_units
from followup.events import ConsultationFinished, MedicationDispensed
from hospital import clock
from hospital.access import ensure_patient_access
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.events import parse_instant
from hospital.i18n import format_money, local_date
from hospital.i18n import gettext as _
from hospital.models import Organization, Patient, Role, User
from hospital.records import load_record
from imaging_orders.archive.events import StudyCompleted

logger = logging.getLogger(__name__)

AI_ANALYSIS_CODE = "AI-LESION-DETECT"
CONSULTATION_CODE = "CONSULT-VIRTUAL"


class PriceNotFound(InvalidInput):
    """No catalog entry prices this code at this organisation on this date."""


def scan_code(modality: str) -> str:
    return f"IMG-{modality.upper()}"


def medication_code(code: str) -> str:
    return f"MED-{code}"


def price_for(session: Session, code: str, organization_id: int | None, at: datetime) -> CatalogEntry:
    """The organisation's own price if it has one in force at `at`, else the platform-wide one."""
    in_force = [
        CatalogEntry.code == code,
        CatalogEntry.effective_from <= at,
        or_(CatalogEntry.effective_to.is_(None), CatalogEntry.effective_to > at),
    ]
    for org_clause in ([CatalogEntry.organization_id == organization_id] if organization_id else []) + [
        CatalogEntry.organization_id.is_(None)
    ]:
        entry = session.scalar(
            select(CatalogEntry).where(*in_force, org_clause).order_by(CatalogEntry.effective_from.desc()).limit(1)
        )
        if entry is not None:
            return entry
    raise PriceNotFound(f"no price for {code!r} at organization {organization_id} on {at.date().isoformat()}")


@dataclass(frozen=True)
class BillableEvent:
    event_key: str
    patient_id: int
    code: str
    organization_id: int | None
    service_reference: str
    occurred_at: datetime
    quantity: int = 1
    ai_attributed: bool = False
    model: PackageCharge | None = None


@dataclass(frozen=True)
class PackageCharge:
    """What a charge for a partner model package's analysis records of the package and its partner."""

    package_id: int
    label: str  # "name version"
    partner_organization_id: int
    partner_share_bp: int


def charge(session: Session, event: BillableEvent) -> ChargeItem:
    """Create the one ChargeItem of `event`; a second call (a retried job) returns the first."""
    existing = session.scalar(select(ChargeItem).where(ChargeItem.event_key == event.event_key))
    if existing is not None:
        return existing
    entry = price_for(session, event.code, event.organization_id, event.occurred_at)
    item = ChargeItem(
        event_key=event.event_key, patient_id=event.patient_id, catalog_entry_id=entry.id,
        organization_id=event.organization_id, service_line=entry.service_line, code=entry.code,
        display=entry.display, quantity=event.quantity, unit_price_minor=entry.unit_price_minor,
        total_minor=entry.unit_price_minor * event.quantity, currency=entry.currency,
        service_reference=event.service_reference, ai_attributed=event.ai_attributed, occurred_at=event.occurred_at,
    )
    if event.model is not None:
        item.model_package_id = event.model.package_id
        item.model_label = event.model.label
        item.partner_organization_id = event.model.partner_organization_id
        item.partner_share_bp = event.model.partner_share_bp
    try:
        with session.begin_nested():
            session.add(item)
    except IntegrityError:
        # Two workers raced on the same event; the other one's row stands.
        found = session.scalar(select(ChargeItem).where(ChargeItem.event_key == event.event_key))
        if found is None:
            raise
        return found
    logger.info("charged %s: %s x%d = %d %s", event.event_key, entry.code, event.quantity, item.total_minor, item.currency)
    return item


def charge_scan(session: Session, event: StudyCompleted) -> ChargeItem:
    return charge(session, BillableEvent(
        event_key=f"scan:ImagingStudy/{event.study_id}", patient_id=event.patient_id, code=scan_code(event.modality),
        organization_id=event.organization_id, service_reference=f"ImagingStudy/{event.study_id}",
        occurred_at=parse_instant(event.completed_at) or utcnow(),
    ))


def charge_ai_analysis(session: Session, event: AnalysisCompleted) -> ChargeItem:
    """The platform detector's analysis of a study: at the price of the package its version came in
    by, recorded under that package like a partner model's; a version registered from a file is
    charged at the catalog's AI analysis price."""
    package = None
    if event.package_id is not None and event.price_minor is not None and event.partner_organization_id is not None:
        package = PricedPackage(event.package_id, str(event.package_name), str(event.package_version),
                                event.partner_organization_id, event.price_minor, str(event.currency),
                                int(event.partner_share_bp or 0))
    # Keyed by study: a re-run analysis of the same study is not billed again.
    return charge(session, BillableEvent(
        event_key=f"ai-analysis:ImagingStudy/{event.study_id}", patient_id=event.patient_id,
        code=AI_ANALYSIS_CODE if package is None else package_price(session, package),
        organization_id=event.organization_id, service_reference=f"DiagnosticReport/{event.report_id}",
        occurred_at=parse_instant(event.issued_at) or utcnow(), ai_attributed=True,
        model=None if package is None else package.charge(),
    ))


@dataclass(frozen=True)
class PricedPackage:
    """A model package version as billing charges it: its own price, its partner and their share."""

    package_id: int
    name: str
    version: str
    partner_organization_id: int
    price_minor: int
    currency: str
    partner_share_bp: int

    @classmethod
    def of(cls, event: PackageAnalysisCompleted) -> PricedPackage:
        return cls(event.package_id, event.package_name, event.package_version, event.partner_organization_id,
                   event.price_minor, event.currency, event.partner_share_bp)

    def charge(self) -> PackageCharge:
        return PackageCharge(self.package_id, f"{self.name} {self.version}", self.partner_organization_id,
                             self.partner_share_bp)


def package_code(package_id: int) -> str:
    return f"AI-PKG-{package_id}"


# A package version's own price holds for every analysis it makes, from its start; an administrator
# changes it from a date on like any price in the catalog.
PACKAGE_PRICE_FROM = datetime(2000, 1, 1, tzinfo=UTC)


def package_price(session: Session, package: PricedPackage) -> str:
    """The catalog code of the package version, with its price entered once from the package's own
    (the first analysis it makes puts it in the catalog, beside the platform's prices)."""
    code = package_code(package.package_id)
    if session.scalar(select(CatalogEntry.id).where(CatalogEntry.code == code).limit(1)) is not None:
        return code
    # Two first analyses at once: the partner's row lock makes the second wait and find the entry.
    session.execute(select(Organization.id).where(Organization.id == package.partner_organization_id).with_for_update())
    if session.scalar(select(CatalogEntry.id).where(CatalogEntry.code == code).limit(1)) is None:
        session.add(CatalogEntry(
            code=code, display=f"AI analysis: {package.name} {package.version}",
            service_line=ServiceLine.AI_ANALYSIS, organization_id=None, unit_price_minor=package.price_minor,
            currency=package.currency, effective_from=PACKAGE_PRICE_FROM,
        ))
        session.flush()
    return code


def charge_package_analysis(session: Session, event: PackageAnalysisCompleted) -> ChargeItem:
    """One charge per partner model analysis (a package version on a study), at the package's price,
    recording the package and its partner's share for the partner's statement."""
    package = PricedPackage.of(event)
    return charge(session, BillableEvent(
        event_key=f"ai-package:PackageAnalysis/{event.analysis_id}", patient_id=event.patient_id,
        code=package_price(session, package), organization_id=event.organization_id,
        service_reference=f"DiagnosticReport/{event.report_id}",
        occurred_at=parse_instant(event.completed_at) or utcnow(), ai_attributed=True, model=package.charge(),
    ))


def charge_consultation(session: Session, event: ConsultationFinished) -> ChargeItem:
    return charge(session, BillableEvent(
        event_key=f"consultation:Encounter/{event.consultation_id}", patient_id=event.patient_id,
        code=CONSULTATION_CODE, organization_id=event.organization_id,
        service_reference=f"Encounter/{event.consultation_id}", occurred_at=parse_instant(event.ended_at) or utcnow(),
        ai_attributed=event.ai_attributed,
    ))


def charge_dispense(session: Session, event: MedicationDispensed) -> ChargeItem:
    return charge(session, BillableEvent(
        event_key=f"dispense:MedicationDispense/{event.dispense_id}", patient_id=event.patient_id,
        code=medication_code(event.medication_code), organization_id=event.pharmacy_organization_id,
        service_reference=f"MedicationDispense/{event.dispense_id}",
        occurred_at=parse_instant(event.dispensed_at) or utcnow(), quantity=event.quantity,
        ai_attributed=event.ai_attributed,
    ))


def set_coverage(
    session: Session, user: User, patient_id: int, payer_name: str, member_id: str, share_basis_points: int
) -> Coverage:
    """Record the patient's insurance; it replaces any earlier active coverage."""
    if user.role is not Role.ADMIN:
        raise Forbidden("only an administrator records insurance coverage")
    if not 0 <= share_basis_points <= 10_000:
        raise InvalidInput(f"share_basis_points must be within 0..10000, got {share_basis_points}")
    if not payer_name.strip() or not member_id.strip():
        raise InvalidInput("payer_name and member_id are required")
    for old in session.scalars(select(Coverage).where(Coverage.patient_id == patient_id, Coverage.active.is_(True))):
        old.active = False
    coverage = Coverage(patient_id=patient_id, payer_name=payer_name.strip(), member_id=member_id.strip(),
                        share_basis_points=share_basis_points)
    session.add(coverage)
    session.flush()
    record_access(session, user, "C", "Coverage", coverage.id, patient_id=patient_id)
    return coverage


def issue_invoice(
    session: Session, user: User, patient_id: int, period_start: datetime | None = None, period_end: datetime | None = None
) -> Invoice:
    """Gather the patient's billable, not yet invoiced charges of the period into one invoice,
    split between the insurer (by the active coverage) and the patient."""
    if user.role is not Role.ADMIN:
        raise Forbidden("only an administrator issues invoices")
    query = (
        select(ChargeItem)
        .where(ChargeItem.patient_id == patient_id, ChargeItem.status == ChargeStatus.BILLABLE, ChargeItem.invoice_id.is_(None))
        .order_by(ChargeItem.occurred_at, ChargeItem.id)
        .with_for_update()
    )
    if period_start is not None:
        query = query.where(ChargeItem.occurred_at >= period_start)
    if period_end is not None:
        query = query.where(ChargeItem.occurred_at < period_end)
    items = list(session.scalars(query))
    if not items:
        raise Conflict(_("Patient %(number)s has nothing to invoice in that period.", number=patient_id))
    currencies = {item.currency for item in items}
    if len(currencies) > 1:
        raise Conflict(_("The charges are in several currencies (%(currencies)s); invoice them separately.",
                         currencies=", ".join(sorted(currencies))))
    total = sum(i.total_minor for i in items)
    coverage = session.scalar(select(Coverage).where(Coverage.patient_id == patient_id, Coverage.active.is_(True)))
    # The insurer's share rounds down: a fraction of a cent is the patient's, never lost.
    insurer_share = total * coverage.share_basis_points // 10_000 if coverage else 0
    invoice = Invoice(
        patient_id=patient_id, currency=currencies.pop(), total_minor=total, insurer_share_minor=insurer_share,
        patient_share_minor=total - insurer_share, coverage_id=coverage.id if coverage else None,
        period_start=items[0].occurred_at, period_end=items[-1].occurred_at,
    )
    session.add(invoice)
    session.flush()
    for item in items:
        item.invoice_id = invoice.id
        item.status = ChargeStatus.BILLED
    record_access(session, user, "C", "Invoice", invoice.id, patient_id=patient_id)
    return invoice


@dataclass(frozen=True)
class Balance:
    patient_due_minor: int
    insurer_due_minor: int

    @property
    def total_due_minor(self) -> int:
        return self.patient_due_minor + self.insurer_due_minor


def invoice_balance(invoice: Invoice) -> Balance:
    def net(payer: Payer) -> int:
        return sum(p.amount_minor if p.kind is PaymentKind.PAYMENT else -p.amount_minor
                   for p in invoice.payments if p.payer is payer)

    return Balance(invoice.patient_share_minor - net(Payer.PATIENT), invoice.insurer_share_minor - net(Payer.INSURER))


@dataclass(frozen=True)
class PaymentRequest:
    payer: Payer
    kind: PaymentKind
    amount_minor: int
    currency: str
    idempotency_key: str
    reference: str | None = None


def record_payment(session: Session, user: User, invoice_id: int, request: PaymentRequest) -> Payment:
    """Post a payment or a refund. Posting the same idempotency key again returns the first."""
    existing = session.scalar(select(Payment).where(Payment.idempotency_key == request.idempotency_key))
    if existing is not None:
        if (existing.invoice_id, existing.payer, existing.kind, existing.amount_minor) != (
            invoice_id, request.payer, request.kind, request.amount_minor
        ):
            raise Conflict(_("That payment key was already used for a different payment."))
        return existing
    invoice = session.get(Invoice, invoice_id, with_for_update=True)
    if invoice is None:
        raise NotFound(_("Invoice %(number)s does not exist.", number=invoice_id))
    ensure_patient_access(session, user, invoice.patient_id, "Invoice", invoice_id, "U")
    if user.role is Role.PATIENT:
        if request.payer is not Payer.PATIENT or request.kind is not PaymentKind.PAYMENT:
            raise Forbidden(_("A patient can only pay their own share."))
    elif user.role is not Role.ADMIN:
        raise Forbidden(_("Payments are recorded by the patient or an administrator."))
    if request.amount_minor <= 0:
        raise InvalidInput(_("The amount must be more than zero."))
    if request.currency != invoice.currency:
        raise InvalidInput(_("The invoice is in %(currency)s, not %(other)s.", currency=invoice.currency,
                             other=request.currency))
    if invoice.status is InvoiceStatus.CANCELLED:
        raise Conflict(_("The invoice is cancelled."))
    balance = invoice_balance(invoice)
    due = balance.patient_due_minor if request.payer is Payer.PATIENT else balance.insurer_due_minor
    share = invoice.patient_share_minor if request.payer is Payer.PATIENT else invoice.insurer_share_minor
    if request.kind is PaymentKind.PAYMENT and request.amount_minor > due:
        words = (_("The patient owes %(due)s on this invoice, not %(amount)s.") if request.payer is Payer.PATIENT
                 else _("The insurer owes %(due)s on this invoice, not %(amount)s."))
        raise InvalidInput(words % {"due": format_money(due, invoice.currency),
                                    "amount": format_money(request.amount_minor, invoice.currency)})
    if request.kind is PaymentKind.REFUND and request.amount_minor > share - due:
        words = (_("At most %(amount)s can be refunded to the patient.") if request.payer is Payer.PATIENT
                 else _("At most %(amount)s can be refunded to the insurer."))
        raise InvalidInput(words % {"amount": format_money(share - due, invoice.currency)})
    payment = Payment(
        invoice_id=invoice.id, payer=request.payer, kind=request.kind, amount_minor=request.amount_minor,
        currency=request.currency, idempotency_key=request.idempotency_key, reference=request.reference,
        recorded_by_user_id=user.id,
    )
    try:
        with session.begin_nested():
            session.add(payment)
    except IntegrityError:
        # The same key posted concurrently: the other request's payment stands.
        found = session.scalar(select(Payment).where(Payment.idempotency_key == request.idempotency_key))
        if found is None:
            raise
        return found
    session.refresh(invoice, ["payments"])
    signed = request.amount_minor if request.kind is PaymentKind.PAYMENT else -request.amount_minor
    invoice.paid_minor += signed
    invoice.status = InvoiceStatus.BALANCED if invoice_balance(invoice).total_due_minor == 0 else InvoiceStatus.ISSUED
    record_access(session, user, "C", "PaymentReconciliation", payment.id, patient_id=invoice.patient_id,
                  description=f"{request.kind.value} {request.amount_minor} {request.currency} by {request.payer.value}")
    return payment


def get_invoice(session: Session, user: User, invoice_id: int) -> Invoice:
    if user.role not in (Role.ADMIN, Role.PATIENT):
        raise Forbidden(_("Invoices are for the patient and administrators."))
    return load_record(session, user, Invoice, invoice_id, entity_type="Invoice", noun="invoice")


def patient_receipt(session: Session, user: User, invoice_id: int, payment_id: int) -> Payment:
    """One payment on an invoice, for its receipt: the invoice is read with its access check and
    audit; a payment that is not on it is not found (ids are not guessed across invoices)."""
    invoice = get_invoice(session, user, invoice_id)
    payment = next((p for p in invoice.payments if p.id == payment_id), None)
    if payment is None:
        raise NotFound(_("Payment %(payment)s is not on invoice %(number)s.", payment=payment_id, number=invoice_id))
    return payment


def list_charges(session: Session, user: User, patient_id: int) -> list[ChargeItem]:
    if user.role not in (Role.ADMIN, Role.PATIENT):
        raise Forbidden("charges are for the patient and administrators")
    ensure_patient_access(session, user, patient_id, "ChargeItem", None)
    items = list(session.scalars(select(ChargeItem).where(ChargeItem.patient_id == patient_id).order_by(ChargeItem.id)))
    record_access(session, user, "E", "ChargeItem", None, patient_id=patient_id, description=f"list charges ({len(items)})")
    return items


@dataclass(frozen=True)
class UnbilledCharges:
    """One patient's billable charges not yet on an invoice, in one currency."""

    patient: Patient
    currency: str
    count: int
    total_minor: int
    oldest: datetime


def unbilled_charges(session: Session, user: User) -> list[UnbilledCharges]:
    """Who has charges waiting for an invoice, oldest waiting first (the billing office's queue)."""
    if user.role is not Role.ADMIN:
        raise Forbidden("the billing queue is for administrators")
    statement = (
        select(Patient, ChargeItem.currency, func.count(), func.sum(ChargeItem.total_minor), func.min(ChargeItem.occurred_at))
        .join(Patient, Patient.id == ChargeItem.patient_id)
        .where(ChargeItem.status == ChargeStatus.BILLABLE, ChargeItem.invoice_id.is_(None))
        .group_by(Patient.id, ChargeItem.currency)
        .order_by(func.min(ChargeItem.occurred_at), Patient.id)
    )
    found = [UnbilledCharges(patient, currency, count, int(total), oldest)
             for patient, currency, count, total, oldest in session.execute(statement)]
    record_access(session, user, "E", "ChargeItem", None, description=f"unbilled charges ({len(found)} patients)")
    return found


def recent_invoices(session: Session, user: User, limit: int = 50) -> list[Invoice]:
    """The latest invoices, open ones first, for the billing office."""
    if user.role is not Role.ADMIN:
        raise Forbidden("the invoice list is for administrators")
    invoices = list(session.scalars(
        select(Invoice).order_by((Invoice.status == InvoiceStatus.BALANCED), Invoice.issued_at.desc(), Invoice.id.desc())
        .limit(limit)))
    record_access(session, user, "E", "Invoice", None, description=f"recent invoices ({len(invoices)})")
    return invoices


REVENUE_GROUPS = ("service_line", "organization", "month", "model", "partner")


@dataclass(frozen=True)
class RevenueLine:
    group: str
    currency: str
    charges: int
    total_minor: int
    ai_attributed_minor: int


def revenue_report(
    session: Session, user: User, group_by: str = "service_line", start: datetime | None = None,
    end: datetime | None = None, zone_name: str | None = None,
) -> list[RevenueLine]:
    """Billed and billable revenue grouped by service line, organisation, month (on the clock of
    `zone_name`, UTC when unset), partner model (package version) or partner, with the part the AI
    made possible: AI analyses, and care that followed a confirmed AI finding. With `start`/`end`, only services that happened in [start, end)."""
    if user.role is not Role.ADMIN:
        raise Forbidden("revenue is for administrators")
    if group_by not in REVENUE_GROUPS:
        raise InvalidInput(f"group_by must be one of {REVENUE_GROUPS}")
    partner = aliased(Organization)
    statement = (
        select(ChargeItem.service_line, Organization.name, ChargeItem.occurred_at, ChargeItem.currency,
               ChargeItem.total_minor, ChargeItem.ai_attributed, ChargeItem.model_label, partner.name)
        .outerjoin(Organization, ChargeItem.organization_id == Organization.id)
        .outerjoin(partner, ChargeItem.partner_organization_id == partner.id)
        .where(ChargeItem.status != ChargeStatus.NOT_BILLABLE)
    )
    if start is not None:
        statement = statement.where(ChargeItem.occurred_at >= start)
    if end is not None:
        statement = statement.where(ChargeItem.occurred_at < end)
    items = session.execute(statement)
    zone = clock.zone(zone_name)
    groups: dict[tuple[str, str], list[int]] = {}
    for line, org_name, occurred_at, currency, total, ai, model_label, partner_name in items:
        key = {"service_line": line.value, "organization": org_name or "(platform)",
               "month": occurred_at.astimezone(zone).strftime("%Y-%m"),
               # A partner model's analyses by package version and by partner; the rest is the platform's.
               "model": model_label or "(platform)", "partner": partner_name or "(platform)"}[group_by]
        acc = groups.setdefault((key, currency), [0, 0, 0])
        acc[0] += 1
        acc[1] += total
        acc[2] += total if ai else 0
    return [RevenueLine(key, currency, *acc) for (key, currency), acc in sorted(groups.items())]


def revenue_csv(lines: list[RevenueLine], group_by: str) -> str:
    """For people and spreadsheets: amounts in major units ('75.00') beside their currency, with
    '.' as the decimal mark and no grouping, so a spreadsheet reads them as numbers."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([group_by, "currency", "charges", "total", "ai_enabled"])
    for line in lines:
        writer.writerow([line.group, line.currency, line.charges, major_units(line.total_minor, line.currency),
                         major_units(line.ai_attributed_minor, line.currency)])
    return out.getvalue()


# Appended-only edit: this import belongs in the `billing.models` import at the top.


def add_catalog_entry(
    session: Session,
    user: User,
    *,
    code: str,
    display: str,
    service_line: ServiceLine,
    organization_id: int | None,
    unit_price_minor: int,
    currency: str,
    effective_from: datetime,
) -> CatalogEntry:
    """An administrator sets a new price from a date on. The price in force until then (the
    open-ended entry of the same code and organisation) ends where the new one starts, so exactly
    one price applies on any date and past charges keep the price they were made at."""
    if user.role is not Role.ADMIN:
        raise Forbidden("only an administrator changes the price catalog")
    code, display, currency = code.strip(), display.strip(), currency.strip().upper()
    if not code or not display:
        raise InvalidInput(_("A price needs a service code and a service name."))
    if isinstance(unit_price_minor, bool) or not isinstance(unit_price_minor, int) or unit_price_minor < 0:
        raise InvalidInput(f"the price is a whole, non-negative number of minor units, not {unit_price_minor!r}")
    if len(currency) != 3 or not currency.isascii() or not currency.isalpha():
        raise InvalidInput(_("The currency is an ISO 4217 code of 3 letters (CNY, EUR), not “%(typed)s”.",
                             typed=currency[:20]))
    if effective_from.tzinfo is None:
        raise InvalidInput("effective_from needs a time zone")
    if organization_id is not None and session.get(Organization, organization_id) is None:
        raise NotFound(_("Organisation %(number)s does not exist.", number=organization_id))
    same_price_line = [
        CatalogEntry.code == code,
        CatalogEntry.organization_id == organization_id if organization_id is not None
        else CatalogEntry.organization_id.is_(None),
    ]
    current = session.scalar(
        select(CatalogEntry).where(*same_price_line, CatalogEntry.effective_to.is_(None)).with_for_update()
    )
    if current is not None:
        if effective_from <= current.effective_from:
            raise Conflict(_("The price in force for %(code)s starts on %(date)s; a new price must start after it.",
                             code=code, date=local_date(current.effective_from, "UTC")))
        current.effective_to = effective_from
    entry = CatalogEntry(code=code, display=display, service_line=service_line, organization_id=organization_id,
                         unit_price_minor=unit_price_minor, currency=currency, effective_from=effective_from)
    session.add(entry)
    session.flush()
    record_access(session, user, "C", "ChargeItemDefinition", entry.id,
                  description=f"{code} {unit_price_minor} {currency} from {effective_from.isoformat()}")
    return entry


def get_catalog_entry(session: Session, user: User, entry_id: int) -> CatalogEntry:
    if user.role is not Role.ADMIN:
        raise Forbidden("only an administrator changes the price catalog")
    entry = session.get(CatalogEntry, entry_id)
    if entry is None:
        raise NotFound(_("Price %(number)s does not exist.", number=entry_id))
    return entry


def change_price(
    session: Session, user: User, entry: CatalogEntry, unit_price_minor: int, effective_from: datetime
) -> CatalogEntry:
    """The price list's in-place edit: the same service at the same organisation costs
    `unit_price_minor` from `effective_from` on. A price is never rewritten (charges made at it
    point at it); the new one ends it, as `add_catalog_entry` does."""
    if entry.effective_to is not None:
        raise Conflict(_("The price of %(code)s from %(date)s has ended; change the price in force.",
                         code=entry.code, date=local_date(entry.effective_from, "UTC")))
    return add_catalog_entry(
        session, user, code=entry.code, display=entry.display, service_line=entry.service_line,
        organization_id=entry.organization_id, unit_price_minor=unit_price_minor, currency=entry.currency,
        effective_from=effective_from,
    )


def catalog_entries(session: Session, user: User) -> list[CatalogEntry]:
    """The whole price catalog for an administrator, by organisation (platform-wide first), code and date."""
    if user.role is not Role.ADMIN:
        raise Forbidden("the price catalog is for administrators")
    return list(session.scalars(select(CatalogEntry).order_by(
        CatalogEntry.organization_id.nulls_first(), CatalogEntry.code, CatalogEntry.effective_from)))
