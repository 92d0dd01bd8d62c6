"""Who opened a patient's record without being in their care already: the patient's own view.

Two ways open a record to someone the patient did not choose: a clinician starting a care
relationship by a referral with a recorded reason (`hospital.access.CARE_RELATIONSHIP_STARTED`
in the audit trail), and emergency access (`hospital.emergency`). Issue 13 asks that both be
visible to the patient as well as to administrators; this module lists them for one patient,
newest first, with who (name and organisation), when and the reason they gave. It shows the
patient their own record only: the edges (`record_openings_routes`) serve it to the patient
themself and nobody else (administrators have the audit page and the emergency review page).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from hospital.access import CARE_RELATIONSHIP_STARTED
from hospital.audit import OUTCOME_SUCCESS
from hospital.i18n import gettext as _
from hospital.models import AuditEvent, EmergencyAccess, Practitioner, User

logger = logging.getLogger(__name__)

CARE_RELATIONSHIP = "care relationship"
EMERGENCY = "emergency access"


@dataclass(frozen=True)
class RecordOpening:
    """One opening of a patient's record: `kind` is CARE_RELATIONSHIP or EMERGENCY; `until` is when
    an emergency grant ends (a care relationship ends with the referral, so it has none)."""

    kind: str
    at: datetime
    by_name: str
    by_organisation: str | None
    reason: str
    until: datetime | None = None


def record_openings(session: Session, patient_id: int) -> list[RecordOpening]:
    """The care relationships started for `patient_id` and the emergency grants on their record,
    newest first."""
    prefix = f"{CARE_RELATIONSHIP_STARTED}:"
    started = session.execute(
        select(AuditEvent, User).outerjoin(User, User.id == AuditEvent.user_id)
        .options(joinedload(User.practitioner).joinedload(Practitioner.organization), joinedload(User.organization))
        .where(AuditEvent.patient_id == patient_id, AuditEvent.outcome == OUTCOME_SUCCESS,
               AuditEvent.description.startswith(prefix, autoescape=True))
    ).all()
    openings = [
        RecordOpening(CARE_RELATIONSHIP, event.recorded_at, _name(user), _organisation(user),
                      (event.description or "")[len(prefix):].strip())
        for event, user in started
    ]
    grants = session.scalars(
        select(EmergencyAccess)
        .options(joinedload(EmergencyAccess.user).joinedload(User.practitioner).joinedload(Practitioner.organization),
                 joinedload(EmergencyAccess.user).joinedload(User.organization))
        .where(EmergencyAccess.patient_id == patient_id)
    ).unique()
    openings += [
        RecordOpening(EMERGENCY, grant.started_at, _name(grant.user), _organisation(grant.user), grant.reason,
                      until=grant.expires_at)
        for grant in grants
    ]
    return sorted(openings, key=lambda opening: opening.at, reverse=True)


def _name(user: User | None) -> str:
    if user is None:
        return _("unknown user")
    return user.practitioner.display_name if user.practitioner is not None else user.username


def _organisation(user: User | None) -> str | None:
    if user is None:
        return None
    organization = user.organization or (user.practitioner.organization if user.practitioner else None)
    return organization.name if organization is not None else None
