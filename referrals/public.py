"""The referrals stage's public face: what later stages may use of it, and nothing else.

The referral (FHIR ServiceRequest) is this stage's record, and so is its lifecycle. The imaging
centre moves it along (accepts, books, examines, fulfils) through the transitions here, which
check the move is allowed from the current status; it never writes the row itself.

Reads come back as frozen `ReferralSummary` values, never the stage's ORM rows. Where a later stage
must join orders in SQL (the worklist, the reconciliation queue) it joins `ORDERS`, a read model
whose columns are named like the summary's fields; `summary_from_row` turns such a row into a
summary. A later stage that creates a referral (a repeat scan from a follow-up plan) does it through
`create_referral` here, which runs the same checks and audit as a clinician's own request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.errors import Conflict, InvalidInput, NotFound
from hospital.models import User
from referrals import service
from referrals.fhir import ACCESSION_SYSTEM, DICOM_MODALITY_SYSTEM, referral_accession_identifier
from referrals.models import Priority, Referral, ReferralStatus
from referrals.service import MODALITIES, STATUS_WORDS, ReferralChange, ReferralRequest

logger = logging.getLogger(__name__)

__all__ = [
    "ACCESSION_SYSTEM",
    "DICOM_MODALITY_SYSTEM",
    "MODALITIES",
    "ORDERS",
    "Priority",
    "ReferralRequest",
    "ReferralStatus",
    "ReferralSummary",
    "STATUS_WORDS",
    "accept",
    "ReferralChange",
    "cancel_referral",
    "change_referral",
    "create_referral",
    "lock_referral",
    "lock_referral_by_accession",
    "mark_completed",
    "mark_in_progress",
    "mark_scheduled",
    "mark_unscheduled",
    "read_referral",
    "referral_accession_identifier",
    "referral_summaries",
    "referral_summary",
    "reject",
    "summary_from_row",
]


@dataclass(frozen=True)
class ReferralSummary:
    """A referral (FHIR ServiceRequest) as later stages see it."""

    referral_id: int
    patient_id: int
    requester_id: int
    performer_organization_id: int
    modality: str
    body_part: str
    procedure_description: str
    reason: str
    priority: Priority
    status: ReferralStatus
    accession_number: str | None
    created_at: datetime
    replaces_referral_id: int | None = None
    status_reason: str | None = None  # why it was rejected or cancelled, for the clinician

    @property
    def is_urgent(self) -> bool:
        return self.priority is not Priority.ROUTINE


# The read model later stages join in SQL: one row per referral, columns named like the summary's
# fields. The referral table may change behind it; these columns are the contract.
ORDERS = select(
    Referral.id.label("referral_id"),
    Referral.patient_id.label("patient_id"),
    Referral.requester_id.label("requester_id"),
    Referral.performer_organization_id.label("performer_organization_id"),
    Referral.modality.label("modality"),
    Referral.body_part.label("body_part"),
    Referral.procedure_description.label("procedure_description"),
    Referral.reason.label("reason"),
    Referral.priority.label("priority"),
    Referral.status.label("status"),
    Referral.accession_number.label("accession_number"),
    Referral.created_at.label("created_at"),
    Referral.replaces_referral_id.label("replaces_referral_id"),
    Referral.status_reason.label("status_reason"),
).subquery("orders")

_FIELDS = tuple(column.name for column in ORDERS.columns)


def summary_from_row(row: Any) -> ReferralSummary:
    """A summary from a row (or mapping) that selected `ORDERS`' columns."""
    mapping = row._mapping if hasattr(row, "_mapping") else row
    return ReferralSummary(**{name: mapping[ORDERS.c[name]] for name in _FIELDS})


def summary_from_values(values: Sequence[Any]) -> ReferralSummary:
    """A summary from `ORDERS`' column values in their order (`select(..., *ORDERS.c)` ends a row
    with them): a plain zip, for callers reading thousands of rows."""
    return ReferralSummary(**dict(zip(_FIELDS, values, strict=True)))


def _summary(referral: Referral) -> ReferralSummary:
    return ReferralSummary(
        referral_id=referral.id, patient_id=referral.patient_id, requester_id=referral.requester_id,
        performer_organization_id=referral.performer_organization_id, modality=referral.modality,
        body_part=referral.body_part, procedure_description=referral.procedure_description, reason=referral.reason,
        priority=referral.priority, status=referral.status, accession_number=referral.accession_number,
        created_at=referral.created_at, replaces_referral_id=referral.replaces_referral_id,
        status_reason=referral.status_reason,
    )


def referral_summary(session: Session, referral_id: int) -> ReferralSummary | None:
    referral = session.get(Referral, referral_id)
    return None if referral is None else _summary(referral)


def read_referral(session: Session, user: User, referral_id: int) -> ReferralSummary:
    """The referral as `user` may read it: the same access check and audit as the referral's own
    pages (its requester always; others through the patient's record). Raises NotFound/Forbidden."""
    return _summary(service.get_referral(session, user, referral_id))


def referral_summaries(session: Session, referral_ids: Iterable[int]) -> dict[int, ReferralSummary]:
    """Summaries of several referrals at once (one query), by id; unknown ids are left out."""
    ids = sorted(set(referral_ids))
    if not ids:
        return {}
    return {r.id: _summary(r) for r in session.scalars(select(Referral).where(Referral.id.in_(ids)))}


def lock_referral(session: Session, referral_id: int) -> ReferralSummary | None:
    """The referral, its row locked until the transaction ends: decide on it, then transition it."""
    referral = session.get(Referral, referral_id, with_for_update=True, populate_existing=True)
    return None if referral is None else _summary(referral)


def lock_referral_by_accession(session: Session, accession_number: str) -> ReferralSummary | None:
    """The referral holding `accession_number` (unique), its row locked; None when none holds it."""
    referral = session.scalar(
        select(Referral).where(Referral.accession_number == accession_number).with_for_update()
        .execution_options(populate_existing=True)
    )
    return None if referral is None else _summary(referral)


def create_referral(
    session: Session, user: User, request: ReferralRequest, *, replaces_referral_id: int | None = None
) -> ReferralSummary:
    """A new referral by `user` (a clinician), optionally replacing an earlier one (a repeat scan)."""
    referral = service.create_referral(session, user, request)
    referral.replaces_referral_id = replaces_referral_id
    session.flush()
    return _summary(referral)


def cancel_referral(session: Session, user: User, referral_id: int, reason: str) -> ReferralSummary:
    """The requesting clinician withdraws an open referral (a follow-up plan's repeat scan
    cancelled before it was booked); audited by the service."""
    return _summary(service.cancel_referral(session, user, referral_id, reason))


def change_referral(session: Session, user: User, referral_id: int, change: ReferralChange) -> ReferralSummary:
    """The requesting clinician changes an order not yet performed (an HL7 ORC-1 XO): the reason,
    the procedure's description, the body part, the priority. Audited by the service."""
    return _summary(service.change_referral(session, user, referral_id, change))


# ---------------------------------------------------------------------------------------------
# The lifecycle, as the imaging centre moves it. Each transition locks the row, checks the move is
# allowed from the current status and raises Conflict (with the status in words) otherwise.
# Auditing is the caller's: it knows who acted and why.
# ---------------------------------------------------------------------------------------------


def _locked(session: Session, referral_id: int) -> Referral:
    referral = session.get(Referral, referral_id, with_for_update=True)
    if referral is None:
        raise NotFound(f"referral {referral_id} does not exist")
    return referral


def accept(session: Session, referral_id: int, accession_number: str) -> ReferralSummary:
    """active -> accepted, with the AccessionNumber the centre's images will carry. Accepting an
    accepted referral again changes nothing."""
    referral = _locked(session, referral_id)
    if referral.status is ReferralStatus.ACCEPTED:
        return _summary(referral)
    if referral.status is not ReferralStatus.ACTIVE:
        raise Conflict(f"a referral that is {referral.status.value} cannot be accepted")
    referral.status = ReferralStatus.ACCEPTED
    referral.accession_number = accession_number
    session.flush()
    return _summary(referral)


def reject(session: Session, referral_id: int, reason: str) -> ReferralSummary:
    """active -> rejected (FHIR: revoked), with the reason the clinician will read."""
    referral = _locked(session, referral_id)
    if referral.status is not ReferralStatus.ACTIVE:
        raise Conflict(f"a referral that is {referral.status.value} cannot be rejected")
    if not reason.strip():
        raise InvalidInput("a reason is required to reject a referral")
    referral.status = ReferralStatus.REJECTED
    referral.status_reason = reason.strip()
    session.flush()
    return _summary(referral)


def mark_scheduled(session: Session, referral_id: int) -> ReferralSummary:
    """accepted -> scheduled: an appointment was booked."""
    referral = _locked(session, referral_id)
    if referral.status is not ReferralStatus.ACCEPTED:
        raise Conflict(f"a referral that is {referral.status.value} cannot be booked (it must be accepted first)")
    referral.status = ReferralStatus.SCHEDULED
    return _summary(referral)


def mark_unscheduled(session: Session, referral_id: int) -> ReferralSummary:
    """scheduled -> accepted: its appointment was cancelled, it may be booked again. Any other
    status is left as it is (an examination already under way stays under way)."""
    referral = _locked(session, referral_id)
    if referral.status is ReferralStatus.SCHEDULED:
        referral.status = ReferralStatus.ACCEPTED
    return _summary(referral)


def mark_in_progress(session: Session, referral_id: int) -> ReferralSummary:
    """accepted or scheduled -> in progress: the examination started. Idempotent and never
    backwards, so the MPPS SCP and image ingest may both call it in either order."""
    referral = _locked(session, referral_id)
    if referral.status in (ReferralStatus.ACCEPTED, ReferralStatus.SCHEDULED):
        referral.status = ReferralStatus.IN_PROGRESS
    return _summary(referral)


def mark_completed(session: Session, referral_id: int) -> ReferralSummary:
    """accepted, scheduled or in progress -> completed: a whole study fulfilled the order. A
    referral already completed, or cancelled meanwhile, is left as it is."""
    referral = _locked(session, referral_id)
    if referral.status in (ReferralStatus.ACCEPTED, ReferralStatus.SCHEDULED, ReferralStatus.IN_PROGRESS):
        referral.status = ReferralStatus.COMPLETED
    return _summary(referral)
