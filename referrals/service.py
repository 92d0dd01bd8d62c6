"""Referral workflow: a clinician orders an imaging examination; the clinician may cancel it.

The imaging centre's decisions (accept, reject, book) live in `imaging_orders.service`; it moves the
referral's status only through the transitions in `referrals.public`.

A referral is also a care relationship: while it is live (sent, accepted, scheduled, in progress)
it opens the patient's record to the requesting clinician and to the chosen centre; once completed
it stays open to the clinician for `CARE_RELATIONSHIP_DAYS` and to the centre that performed it;
rejected or cancelled, it opens nothing. Referring a patient who is not yet in the clinician's
care starts such a relationship, so it needs an access reason, which the audit trail keeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from hospital.access import (
    CARE_RELATIONSHIP_STARTED,
    can_access_patient,
    patient_filter,
    relationship_cutoff,
)
from hospital.audit import record_access
from hospital.errors import Conflict, Forbidden, InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.jobs import publish
from hospital.models import Organization, OrganizationKind, Patient, Role, User
from hospital.records import load_record
from referrals.events import ReferralCancelled
from referrals.models import Priority, Referral, ReferralStatus

logger = logging.getLogger(__name__)

# DICOM modality codes (PS3.3 C.7.3.1.1.1) a referral may ask for, with the names clinicians know.
MODALITY_NAMES = {
    "CT": _l("Computed tomography"), "MR": _l("Magnetic resonance"), "CR": _l("Computed radiography (X-ray)"),
    "DX": _l("Digital radiography (X-ray)"), "US": _l("Ultrasound"), "PT": _l("PET"), "NM": _l("Nuclear medicine"),
    "MG": _l("Mammography"), "XA": _l("X-ray angiography"), "RF": _l("Fluoroscopy"),
}
MODALITIES = frozenset(MODALITY_NAMES)
OPEN_STATUSES = frozenset({ReferralStatus.ACTIVE, ReferralStatus.ACCEPTED, ReferralStatus.SCHEDULED})
# From sending until the examination is done: the order is live and opens the record.
LIVE_STATUSES = OPEN_STATUSES | {ReferralStatus.IN_PROGRESS}

# The words a clinician or patient reads for each status, the same on every page. "completed" means
# the images are in (the order is fulfilled), not that a report is signed: later steps have words of
# their own on the referral's page.
PRIORITY_WORDS = {
    Priority.ROUTINE: _l("Routine"),
    Priority.URGENT: _l("Urgent"),
    Priority.ASAP: _l("As soon as possible"),
    Priority.STAT: _l("Immediately (stat)"),
}

# Lazy: each page shows them in its reader's language.
STATUS_WORDS = {
    ReferralStatus.ACTIVE: _l("Waiting for acceptance"),
    ReferralStatus.ACCEPTED: _l("Accepted: to be booked"),
    ReferralStatus.SCHEDULED: _l("Booked"),
    ReferralStatus.IN_PROGRESS: _l("Examination under way"),
    ReferralStatus.COMPLETED: _l("Images received"),
    ReferralStatus.REJECTED: _l("Rejected"),
    ReferralStatus.CANCELLED: _l("Cancelled"),
}


@dataclass(frozen=True)
class ReferralRequest:
    patient_id: int
    performer_organization_id: int
    modality: str
    body_part: str
    procedure_description: str
    reason: str
    priority: Priority = Priority.ROUTINE
    # Why the clinician may open this patient's record: required when the patient is not yet in
    # their care (no live relationship). Audited, never shown to the imaging centre.
    access_reason: str | None = None


def create_referral(session: Session, user: User, request: ReferralRequest) -> Referral:
    if user.role is not Role.CLINICIAN or user.practitioner_id is None:
        raise Forbidden("only a referring clinician can create a referral")
    patient = session.get(Patient, request.patient_id)
    if patient is None:
        raise InvalidInput(_("patient %(id)s does not exist", id=request.patient_id))
    centre = session.get(Organization, request.performer_organization_id)
    if centre is None or centre.kind is not OrganizationKind.IMAGING_CENTRE:
        raise InvalidInput(_("organization %(id)s is not an imaging centre", id=request.performer_organization_id))
    modality = request.modality.upper()
    if modality not in MODALITIES:
        raise InvalidInput(_("modality %(value)s is not one of %(choices)s", value=repr(request.modality),
                             choices=", ".join(sorted(MODALITIES))))
    if not request.reason.strip():
        raise InvalidInput(_("a reason for the examination is required"))
    access_reason = (request.access_reason or "").strip()
    starts_relationship = not can_access_patient(session, user, patient.id)
    if starts_relationship and not access_reason:
        raise Forbidden(_(
            "patient %(id)s is not in your care; a referral that starts a care relationship needs an access reason",
            id=patient.id)
        )
    referral = Referral(
        patient_id=patient.id,
        requester_id=user.practitioner_id,
        created_by_user_id=user.id,
        performer_organization_id=centre.id,
        modality=modality,
        body_part=request.body_part.strip().upper() or "UNKNOWN",
        procedure_description=request.procedure_description.strip() or f"{modality} {request.body_part}",
        reason=request.reason.strip(),
        priority=request.priority,
    )
    session.add(referral)
    session.flush()
    record_access(session, user, "C", "ServiceRequest", referral.id, patient_id=patient.id)
    if starts_relationship:
        record_access(session, user, "C", "ServiceRequest", referral.id, patient_id=patient.id,
                      description=f"{CARE_RELATIONSHIP_STARTED}: {access_reason[:1000]}")
        logger.info("clinician %s started a care relationship through referral %s", user.id, referral.id)
    return referral


def get_referral(session: Session, user: User, referral_id: int, action: str = "R") -> Referral:
    # The requester reads and cancels their own order (its status, a rejection to act on) even
    # once it no longer opens the patient's record; nothing else of the record comes with it.
    return load_record(session, user, Referral, referral_id, entity_type="ServiceRequest", noun="referral",
                       action=action, authored_by=lambda referral: _is_requester(user, referral))


def list_referrals(session: Session, user: User, status: ReferralStatus | None = None) -> list[Referral]:
    if user.role is Role.CLINICIAN:
        query = select(Referral).where(Referral.requester_id == user.practitioner_id)  # their own orders (see get_referral)
    else:
        query = select(Referral).where(patient_filter(user, Referral.patient_id, "ServiceRequest"))
    if user.role in (Role.IMAGING_STAFF, Role.RADIOLOGIST):
        query = query.where(Referral.performer_organization_id == user.organization_id)
    if status is not None:
        query = query.where(Referral.status == status)
    referrals = list(session.scalars(query.order_by(Referral.created_at.desc(), Referral.id.desc()).limit(500)))
    record_access(session, user, "E", "ServiceRequest", None, description=f"list referrals ({len(referrals)})",
                  at_response=True)
    return referrals


def cancel_referral(session: Session, user: User, referral_id: int, reason: str) -> Referral:
    referral = get_referral(session, user, referral_id, action="U")
    if user.role is not Role.CLINICIAN or referral.requester_id != user.practitioner_id:
        raise Forbidden(_("only the requesting clinician can cancel this referral"))
    if referral.status not in OPEN_STATUSES:
        raise Conflict(_("a referral that is %(status)s cannot be cancelled", status=STATUS_WORDS[referral.status]))
    referral.status = ReferralStatus.CANCELLED
    referral.status_reason = reason
    record_access(session, user, "U", "ServiceRequest", referral.id, patient_id=referral.patient_id, description="cancelled")
    publish(session, ReferralCancelled(referral_id=referral.id, patient_id=referral.patient_id,
                                       performer_organization_id=referral.performer_organization_id))
    return referral


@dataclass(frozen=True)
class ReferralChange:
    """What a requester may change in an order not yet performed; None keeps the value. The
    modality and the centre are not here: another modality or centre is another order."""

    reason: str | None = None
    procedure_description: str | None = None
    body_part: str | None = None
    priority: Priority | None = None


def change_referral(session: Session, user: User, referral_id: int, change: ReferralChange) -> Referral:
    referral = get_referral(session, user, referral_id, action="U")
    if not _is_requester(user, referral):
        raise Forbidden(_("only the requesting clinician can change this referral"))
    if referral.status not in OPEN_STATUSES:
        raise Conflict(_("a referral that is %(status)s cannot be changed", status=STATUS_WORDS[referral.status]))
    changed = []
    for name in ("reason", "procedure_description", "body_part", "priority"):
        value = getattr(change, name)
        if value is not None and value != getattr(referral, name):
            setattr(referral, name, value)
            changed.append(name)
    if changed:
        session.flush()
        record_access(session, user, "U", "ServiceRequest", referral.id, patient_id=referral.patient_id,
                      description=f"changed: {', '.join(changed)}")
    return referral


def _is_requester(user: User, referral: Referral) -> bool:
    return user.role is Role.CLINICIAN and user.practitioner_id is not None and referral.requester_id == user.practitioner_id


def referred_patient_ids(user: User) -> Select[tuple[int]]:
    """Patient scope of a clinician: patients with a referral of theirs that is live, or completed
    within `CARE_RELATIONSHIP_DAYS`. Rejected and cancelled referrals open nothing."""
    return select(Referral.patient_id).where(
        Referral.requester_id == user.practitioner_id,
        or_(Referral.status.in_(LIVE_STATUSES),
            and_(Referral.status == ReferralStatus.COMPLETED, Referral.updated_at >= relationship_cutoff())),
    )


def centre_patient_ids(user: User) -> Select[tuple[int]]:
    """Patient scope of imaging-centre staff and radiologists: patients with an order to their
    centre that is live or was performed there (the centre keeps the images it made)."""
    return select(Referral.patient_id).where(
        Referral.performer_organization_id == user.organization_id,
        Referral.status.in_(LIVE_STATUSES | {ReferralStatus.COMPLETED}),
    )
