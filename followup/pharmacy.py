"""The pharmacy's side of a prescription: its queue, dispensing (all or part of a fill) from stock
lots in date, restocking lots with their expiry, and returning a prescription to its prescriber.

The pages, the JSON API and FHIR call these same functions. A prescription returned to the
prescriber is put `on-hold` (FHIR MedicationRequest.status) with the pharmacist's reason as its
statusReason: it leaves the queue and is not dispensed until the prescriber acts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from followup.events import MedicationDispensed
from followup.formulary import find_formulary_item, formulary_item
from followup.models import (
    Consultation,
    FormularyItem,
    MedicationDispense,
    MedicationRequest,
    MedicationRequestStatus,
    StockLot,
)
from followup.service import opened_by_ai_finding
from followup.words import medication_status
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput
from hospital.events import iso_instant
from hospital.i18n import format_number
from hospital.i18n import gettext as _
from hospital.jobs import publish
from hospital.models import Role, User
from hospital.notifications import notify, practitioner_users
from hospital.records import load_record

logger = logging.getLogger(__name__)

MAX_REASON_CHARS = 1000


class OutOfStock(Conflict):
    """The pharmacy does not hold enough of the medication, in date, to dispense."""


class NotInFormulary(Conflict):
    """The prescription names a code outside the formulary (written before it existed): nothing
    can be dispensed for it; the pharmacist returns it to the prescriber."""


def _pharmacist(user: User) -> int:
    if user.role is not Role.PHARMACIST or user.organization_id is None:
        raise Forbidden(_("only a pharmacist can do this"))
    return user.organization_id


def _pharmacy_request(session: Session, user: User, request_id: int, action: str) -> MedicationRequest:
    """A prescription sent to the user's own pharmacy, locked for a change (`action` "U") or read."""
    pharmacy_id = _pharmacist(user)
    request = load_record(session, user, MedicationRequest, request_id, entity_type="MedicationRequest",
                          noun="medication request", action=action, lock=action == "U")
    if request.pharmacy_organization_id != pharmacy_id:
        raise Forbidden(_("this prescription was sent to another pharmacy"))
    return request


def remaining_to_dispense(request: MedicationRequest) -> int:
    """Units still to hand over across the first fill and its refills."""
    return request.quantity * (1 + request.refills) - sum(d.quantity for d in request.dispenses)


def dispense_queue(session: Session, user: User) -> list[MedicationRequest]:
    pharmacy_id = _pharmacist(user)
    found = list(session.scalars(
        select(MedicationRequest)
        .where(MedicationRequest.pharmacy_organization_id == pharmacy_id,
               MedicationRequest.status == MedicationRequestStatus.ACTIVE)
        .order_by(MedicationRequest.created_at)
    ))
    record_access(session, user, "E", "MedicationRequest", None, description=f"dispense queue ({len(found)})")
    return found


def review_dispense(session: Session, user: User, request_id: int) -> MedicationRequest:
    """The prescription a pharmacist is about to dispense (read and audited, nothing changed)."""
    return _pharmacy_request(session, user, request_id, "R")


def take_from_stock(session: Session, pharmacy_id: int | None, medication_code: str, amount: int) -> None:
    """Take `amount` units from the lots in date, the one that expires first first. The lots are
    locked while they are counted and decremented, so a racing dispense waits, then sees what is
    left (an expired lot is never taken, nor counted as on hand)."""
    today = utcnow().date()
    in_date = or_(StockLot.expires_on.is_(None), StockLot.expires_on >= today)
    lots = session.scalars(
        select(StockLot)
        .where(StockLot.pharmacy_organization_id == pharmacy_id, StockLot.medication_code == medication_code,
               StockLot.quantity_on_hand > 0, in_date)
        .order_by(StockLot.expires_on.asc().nulls_last(), StockLot.id)
        .with_for_update()
    ).all()
    usable = sum(lot.quantity_on_hand for lot in lots)
    if usable < amount:
        expired = session.scalar(select(func.coalesce(func.sum(StockLot.quantity_on_hand), 0)).where(
            StockLot.pharmacy_organization_id == pharmacy_id, StockLot.medication_code == medication_code,
            StockLot.quantity_on_hand > 0, StockLot.expires_on < today))
        if expired:
            raise OutOfStock(_("out of stock: %(code)s has %(usable)s unit(s) in date on hand, %(amount)s needed "
                               "(%(expired)s expired, not dispensed)", code=medication_code, usable=usable,
                               amount=amount, expired=expired))
        raise OutOfStock(_("out of stock: %(code)s has %(usable)s unit(s) on hand, %(amount)s needed",
                           code=medication_code, usable=usable, amount=amount))
    left = amount
    for lot in lots:
        taken = min(left, lot.quantity_on_hand)
        lot.quantity_on_hand -= taken
        left -= taken
        if left == 0:
            break
    session.flush()


def dispense(session: Session, user: User, request_id: int, quantity: int | None = None) -> MedicationDispense:
    """Hand over medication: `quantity` units (default: one fill, or what is left of it), a part
    of the prescription being a partial supply. The request completes once every fill is handed over."""
    request = _pharmacy_request(session, user, request_id, "U")
    if request.status is not MedicationRequestStatus.ACTIVE:
        raise Conflict(_("a prescription that is %(status)s cannot be dispensed",
                         status=medication_status(request.status).lower()))
    if find_formulary_item(session, request.medication_code) is None:
        raise NotInFormulary(_("cannot dispense: medication code %(code)s is not in the formulary; "
                               "return the prescription to the prescriber", code=repr(request.medication_code)))
    left = remaining_to_dispense(request)
    amount = min(request.quantity, left) if quantity is None else quantity
    if amount < 1 or amount > left:
        raise InvalidInput(_("can dispense 1..%(left)s more of this prescription, not %(amount)s", left=left, amount=amount))
    take_from_stock(session, request.pharmacy_organization_id, request.medication_code, amount)
    record = MedicationDispense(request_id=request.id, patient_id=request.patient_id, quantity=amount, dispensed_by_user_id=user.id)
    session.add(record)
    if amount == left:
        request.status = MedicationRequestStatus.COMPLETED
    session.flush()
    record_access(session, user, "C", "MedicationDispense", record.id, patient_id=request.patient_id)
    consultation = session.get(Consultation, request.consultation_id) if request.consultation_id else None
    publish(session, MedicationDispensed(
        dispense_id=record.id, patient_id=record.patient_id, pharmacy_organization_id=request.pharmacy_organization_id,
        medication_code=request.medication_code, quantity=record.quantity,
        dispensed_at=iso_instant(record.dispensed_at),
        ai_attributed=consultation is not None and opened_by_ai_finding(session, consultation),
    ))
    return record


def return_to_prescriber(session: Session, user: User, request_id: int, reason: str) -> MedicationRequest:
    """The pharmacist sends a prescription back with the reason: it goes on hold, leaves the queue,
    and its prescriber is told to look (the reason is on their page, not in the message)."""
    request = _pharmacy_request(session, user, request_id, "U")
    text = reason.strip()
    if not text:
        raise InvalidInput(_("a reason is required to return a prescription to the prescriber"))
    if len(text) > MAX_REASON_CHARS:
        raise InvalidInput(_("a reason is at most %(num)s characters", num=format_number(MAX_REASON_CHARS)))
    if request.status is not MedicationRequestStatus.ACTIVE:
        raise Conflict(_("a prescription that is %(status)s cannot be returned to the prescriber",
                         status=medication_status(request.status).lower()))
    request.status = MedicationRequestStatus.ON_HOLD
    request.status_reason = text
    session.flush()
    record_access(session, user, "U", "MedicationRequest", request.id, patient_id=request.patient_id,
                  description="returned to the prescriber")
    if request.consultation_id is not None:
        # Once per prescription: an on-hold prescription cannot be returned again.
        notify(session, practitioner_users(session, request.prescriber_id), "prescription_returned",
               f"prescription-returned:{request.id}", consultation_id=request.consultation_id)
    else:
        # Written before prescriptions belonged to a consultation: no page to send the prescriber to.
        logger.warning("medication request %s has no consultation; its prescriber is not told", request.id)
    logger.info("medication request %s returned to its prescriber", request.id)
    return request


@dataclass(frozen=True)
class Delivery:
    """A delivery of one lot to the pharmacy."""

    medication_code: str
    lot_number: str
    quantity: int
    expires_on: date


def restock(session: Session, user: User, delivery: Delivery) -> StockLot:
    """A pharmacist records a delivery to their pharmacy: the lot is added to, or recorded."""
    pharmacy_id = _pharmacist(user)
    item = formulary_item(session, delivery.medication_code)
    lot_number = delivery.lot_number.strip()
    if not lot_number or len(lot_number) > 64:
        raise InvalidInput(_("a lot number (at most 64 characters) is required"))
    if delivery.quantity < 1:
        raise InvalidInput(_("a delivery adds at least one unit"))
    lot = session.scalar(select(StockLot).where(
        StockLot.pharmacy_organization_id == pharmacy_id, StockLot.medication_code == item.code,
        StockLot.lot_number == lot_number,
    ).with_for_update())
    if lot is None:
        lot = StockLot(pharmacy_organization_id=pharmacy_id, medication_code=item.code, lot_number=lot_number,
                       expires_on=delivery.expires_on, quantity_on_hand=0)
        session.add(lot)
    elif lot.expires_on != delivery.expires_on:
        recorded = lot.expires_on.isoformat() if lot.expires_on else _("never")
        raise Conflict(_("lot %(lot)s of %(code)s is recorded as expiring %(recorded)s, not %(given)s", lot=lot_number,
                         code=item.code, recorded=recorded, given=delivery.expires_on.isoformat()))
    lot.quantity_on_hand += delivery.quantity
    session.flush()
    record_access(session, user, "C", "Medication", lot.id,
                  description=f"restock {item.code} lot {lot_number} +{delivery.quantity}")
    return lot


@dataclass(frozen=True)
class StockLine:
    """What a pharmacy holds of one code: its lots, and the units in date."""

    medication_code: str
    item: FormularyItem | None
    lots: tuple[StockLot, ...]
    in_date: int
    expired: int


def stock_lines(session: Session, user: User) -> list[StockLine]:
    """The user's pharmacy's stock per code (formulary items it holds no lot of included, at zero)."""
    pharmacy_id = _pharmacist(user)
    today = utcnow().date()
    lots = session.scalars(select(StockLot).where(StockLot.pharmacy_organization_id == pharmacy_id)
                           .order_by(StockLot.medication_code, StockLot.expires_on.asc().nulls_last(), StockLot.id)).all()
    items = {item.code: item for item in session.scalars(select(FormularyItem).where(FormularyItem.active.is_(True)))}
    codes = sorted(set(items) | {lot.medication_code for lot in lots})
    lines = []
    for code in codes:
        mine = tuple(lot for lot in lots if lot.medication_code == code)
        expired = sum(lot.quantity_on_hand for lot in mine if lot.expires_on is not None and lot.expires_on < today)
        total = sum(lot.quantity_on_hand for lot in mine)
        lines.append(StockLine(code, items.get(code), mine, total - expired, expired))
    return lines
