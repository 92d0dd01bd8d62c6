"""Billing: price billable events from the catalog into exactly one ChargeItem each, gather a
patient's charges into an invoice, and summarise revenue (including what the AI made possible).

Money is integer minor units plus an ISO 4217 currency everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ai_services.models import DiagnosticReport, Finding, FindingSource, ReviewStatus
from billing.models import CatalogEntry, ChargeItem, ChargeStatus, Invoice, ServiceLine
from followup.models import Consultation, MedicationDispense, MedicationRequest
from hospital.access import ensure_patient_access
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.models import Practitioner, Role, User
from imaging_orders.models import ImagingStudy
from referrals.models import Referral

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


def report_has_confirmed_ai_finding(session: Session, report_id: int) -> bool:
    return session.scalar(
        select(Finding.id).where(
            Finding.report_id == report_id, Finding.source == FindingSource.AI,
            Finding.review_status != ReviewStatus.REJECTED,
        ).limit(1)
    ) is not None


def charge_scan(session: Session, study_id: int) -> ChargeItem | None:
    study = session.get(ImagingStudy, study_id)
    if study is None or study.patient_id is None or study.referral_id is None:
        return None
    referral = session.get(Referral, study.referral_id)
    assert referral is not None  # foreign key
    return charge(session, BillableEvent(
        event_key=f"scan:ImagingStudy/{study.id}", patient_id=study.patient_id, code=scan_code(referral.modality),
        organization_id=study.organization_id, service_reference=f"ImagingStudy/{study.id}",
        occurred_at=study.completed_at or utcnow(),
    ))


def charge_ai_analysis(session: Session, report_id: int) -> ChargeItem | None:
    report = session.get(DiagnosticReport, report_id)
    if report is None:
        return None
    # Keyed by study: a re-run analysis of the same study is not billed again.
    return charge(session, BillableEvent(
        event_key=f"ai-analysis:ImagingStudy/{report.study_id}", patient_id=report.patient_id, code=AI_ANALYSIS_CODE,
        organization_id=report.study.organization_id, service_reference=f"DiagnosticReport/{report.id}",
        occurred_at=report.issued_at, ai_attributed=True,
    ))


def charge_consultation(session: Session, consultation_id: int) -> ChargeItem | None:
    consultation = session.get(Consultation, consultation_id)
    if consultation is None:
        return None
    practitioner = session.get(Practitioner, consultation.practitioner_id)
    return charge(session, BillableEvent(
        event_key=f"consultation:Encounter/{consultation.id}", patient_id=consultation.patient_id,
        code=CONSULTATION_CODE, organization_id=practitioner.organization_id if practitioner else None,
        service_reference=f"Encounter/{consultation.id}", occurred_at=consultation.ended_at or utcnow(),
        ai_attributed=report_has_confirmed_ai_finding(session, consultation.report_id),
    ))


def charge_dispense(session: Session, dispense_id: int) -> ChargeItem | None:
    record = session.get(MedicationDispense, dispense_id)
    if record is None:
        return None
    request = session.get(MedicationRequest, record.request_id)
    assert request is not None  # foreign key
    consultation = session.get(Consultation, request.consultation_id) if request.consultation_id else None
    return charge(session, BillableEvent(
        event_key=f"dispense:MedicationDispense/{record.id}", patient_id=record.patient_id,
        code=medication_code(request.medication_code), organization_id=request.pharmacy_organization_id,
        service_reference=f"MedicationDispense/{record.id}", occurred_at=record.dispensed_at, quantity=record.quantity,
        ai_attributed=consultation is not None and report_has_confirmed_ai_finding(session, consultation.report_id),
    ))


def issue_invoice(session: Session, user: User, patient_id: int) -> Invoice:
    """Gather the patient's billable, not yet invoiced charges into one invoice."""
    if user.role is not Role.ADMIN:
        raise Forbidden("only an administrator issues invoices")
    items = list(session.scalars(
        select(ChargeItem)
        .where(ChargeItem.patient_id == patient_id, ChargeItem.status == ChargeStatus.BILLABLE, ChargeItem.invoice_id.is_(None))
        .order_by(ChargeItem.occurred_at, ChargeItem.id)
        .with_for_update()
    ))
    if not items:
        raise Conflict(f"patient {patient_id} has nothing to invoice")
    currencies = {item.currency for item in items}
    if len(currencies) > 1:
        raise Conflict(f"charges are in several currencies {sorted(currencies)}; invoice them separately")
    invoice = Invoice(
        patient_id=patient_id, currency=currencies.pop(), total_minor=sum(i.total_minor for i in items),
        period_start=items[0].occurred_at, period_end=items[-1].occurred_at,
    )
    session.add(invoice)
    session.flush()
    for item in items:
        item.invoice_id = invoice.id
        item.status = ChargeStatus.BILLED
    record_access(session, user, "C", "Invoice", invoice.id, patient_id=patient_id)
    return invoice


def get_invoice(session: Session, user: User, invoice_id: int) -> Invoice:
    invoice = session.get(Invoice, invoice_id)
    if invoice is None:
        raise NotFound(f"invoice {invoice_id} does not exist")
    if user.role not in (Role.ADMIN, Role.PATIENT):
        raise Forbidden("invoices are for the patient and administrators")
    ensure_patient_access(session, user, invoice.patient_id, "Invoice", invoice_id)
    record_access(session, user, "R", "Invoice", invoice.id, patient_id=invoice.patient_id)
    return invoice


def list_charges(session: Session, user: User, patient_id: int) -> list[ChargeItem]:
    if user.role not in (Role.ADMIN, Role.PATIENT):
        raise Forbidden("charges are for the patient and administrators")
    ensure_patient_access(session, user, patient_id, "ChargeItem", None)
    items = list(session.scalars(select(ChargeItem).where(ChargeItem.patient_id == patient_id).order_by(ChargeItem.id)))
    record_access(session, user, "E", "ChargeItem", None, patient_id=patient_id, description=f"list charges ({len(items)})")
    return items


@dataclass(frozen=True)
class RevenueLine:
    service_line: str
    currency: str
    charges: int
    total_minor: int
    ai_attributed_minor: int


def revenue_by_service_line(session: Session, user: User) -> list[RevenueLine]:
    if user.role is not Role.ADMIN:
        raise Forbidden("revenue is for administrators")
    rows = session.execute(
        select(
            ChargeItem.service_line, ChargeItem.currency, func.count(ChargeItem.id), func.sum(ChargeItem.total_minor),
            func.sum(ChargeItem.total_minor).filter(ChargeItem.ai_attributed.is_(True)),
        )
        .where(ChargeItem.status != ChargeStatus.NOT_BILLABLE)
        .group_by(ChargeItem.service_line, ChargeItem.currency)
        .order_by(ChargeItem.service_line)
    )
    return [
        RevenueLine(line.value if isinstance(line, ServiceLine) else str(line), currency, count, total or 0, ai or 0)
        for line, currency, count, total, ai in rows
    ]


def format_money(minor: int, currency: str) -> str:
    """For pages: 12345 EUR -> '123.45 EUR'. Integer arithmetic only (2-decimal currencies)."""
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), 100)
    return f"{sign}{whole:,}.{cents:02d} {currency}"
