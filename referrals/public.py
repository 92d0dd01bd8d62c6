"""The referrals stage's public face: what later stages may use of it, and nothing else.

Reads come back as frozen summaries, never the stage's ORM rows; a later stage that creates a
referral (a repeat scan from a follow-up plan) does it through `create_referral` here, which runs
the same checks and audit as a clinician's own request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from hospital.models import User
from referrals import service
from referrals.fhir import ACCESSION_SYSTEM, DICOM_MODALITY_SYSTEM
from referrals.models import Priority, Referral
from referrals.service import MODALITIES, ReferralRequest

logger = logging.getLogger(__name__)

__all__ = [
    "ACCESSION_SYSTEM",
    "DICOM_MODALITY_SYSTEM",
    "MODALITIES",
    "Priority",
    "ReferralRequest",
    "ReferralSummary",
    "create_referral",
    "referral_summary",
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
    status: str
    accession_number: str | None


def _summary(referral: Referral) -> ReferralSummary:
    return ReferralSummary(
        referral_id=referral.id, patient_id=referral.patient_id, requester_id=referral.requester_id,
        performer_organization_id=referral.performer_organization_id, modality=referral.modality,
        body_part=referral.body_part, procedure_description=referral.procedure_description, reason=referral.reason,
        priority=referral.priority, status=referral.status.value, accession_number=referral.accession_number,
    )


def referral_summary(session: Session, referral_id: int) -> ReferralSummary | None:
    referral = session.get(Referral, referral_id)
    return None if referral is None else _summary(referral)


def create_referral(
    session: Session, user: User, request: ReferralRequest, *, replaces_referral_id: int | None = None
) -> ReferralSummary:
    """A new referral by `user` (a clinician), optionally replacing an earlier one (a repeat scan)."""
    referral = service.create_referral(session, user, request)
    referral.replaces_referral_id = replaces_referral_id
    session.flush()
    return _summary(referral)
