"""Emergency access ("break the glass"): a clinician or radiologist with no care relationship to a
patient opens the patient's record in an emergency by giving a reason.

The four parts the issue asks for, and where each lives:
- a reason: required, a few words at least (`MIN_REASON_WORDS`), kept on the grant and in the audit
  trail ("emergency access: <reason>");
- a time limit: the grant opens the record from `started_at` until `expires_at`
  (`EMERGENCY_ACCESS_MINUTES` later) and then ends by itself: it is a patient scope registered
  with `hospital.access` for the roles that may break the glass, and that scope compares with
  the clock at every check, so the API, FHIR, DICOMweb and the pages all open and close together.
  What the role reads of the record is still `hospital.policy`'s row for it;
- an alert: every active administrator is told once per grant (`alert_administrators`, a job
  dispatched after the grant commits, so no alert names a grant that was rolled back, and a
  retried job tells nobody twice), through the notification centre (in the app, and mailed to an
  administrator with an address); it names no patient and no reason (it may be mailed);
- a review: administrators list the grants at `/admin/emergency-access` and mark each reviewed with
  a note; a review is kept, never overwritten.

Who may break the glass: clinicians and radiologists, the roles that decide a patient's care and
read all of a record under `hospital.policy`. Imaging staff perform what was ordered from their
centre (the order opens the record), pharmacists read only prescriptions, patients their own
record, and administrators already see everything.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import Flask, current_app
from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session, joinedload

from hospital.access import register_patient_scope
from hospital.audit import record_access, record_denied
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.jobs import enqueue
from hospital.models import EmergencyAccess, Patient, Role, User
from hospital.notifications import notify

logger = logging.getLogger(__name__)

EMERGENCY_ROLES = frozenset({Role.CLINICIAN, Role.RADIOLOGIST})
# How the audit trail marks a grant (and the admin audit page's text search finds it).
EMERGENCY_ACCESS = "emergency access"
EMERGENCY_ACCESS_REVIEWED = "emergency access reviewed"
MIN_REASON_WORDS = 3
MAX_REASON_LENGTH = 1000
ENTITY_TYPE = "EmergencyAccess"
ALERT_HANDLER = "hospital.emergency.alert_administrators"


def init_app(app: Flask) -> None:
    for role in EMERGENCY_ROLES:
        register_patient_scope(app, role, emergency_patient_ids)


def emergency_patient_ids(user: User) -> Select[int]:
    """Patient scope: the patients `user` holds an emergency grant for that has not yet ended."""
    return select(EmergencyAccess.patient_id).where(*_active_grants_of(user))


def _active_grants_of(user: User) -> tuple[ColumnElement[bool], ...]:
    now = utcnow()
    return (EmergencyAccess.user_id == user.id, EmergencyAccess.started_at <= now, EmergencyAccess.expires_at > now)


def access_minutes() -> int:
    return int(current_app.config["EMERGENCY_ACCESS_MINUTES"])


def checked_reason(reason: object) -> str:
    """The reason as it will be kept, or InvalidInput saying what a reason must be."""
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput(_("reason must be text"))
    text = " ".join((reason or "").split())
    if len(text.split()) < MIN_REASON_WORDS:
        raise InvalidInput(_("a reason of at least %(num)d words is required for emergency access: say why you "
                             "must open this record now", num=MIN_REASON_WORDS))
    if len(text) > MAX_REASON_LENGTH:
        raise InvalidInput(_("the reason must be at most %(max)d characters, got %(num)d", max=MAX_REASON_LENGTH,
                             num=len(text)))
    return text


def patient_id_for_mrn(session: Session, user: User, mrn: str) -> int:
    """The id of the patient with medical record number `mrn` (a page's form asks for the MRN on the
    wristband); an unknown one is refused, and the attempt audited."""
    mrn = mrn.strip()
    if not mrn:
        raise InvalidInput(_("the patient's MRN is required"))
    patient_id = session.scalar(select(Patient.id).where(Patient.mrn == mrn))
    if patient_id is None:
        record_denied(user, "C", ENTITY_TYPE, None, "emergency access asked for an unknown MRN")
        raise NotFound(_("no patient has the MRN %(mrn)s", mrn=repr(mrn[:64])))
    return patient_id


def break_glass(session: Session, user: User, patient_id: int, reason: object) -> tuple[EmergencyAccess, bool]:
    """Open `patient_id`'s record to `user` for `EMERGENCY_ACCESS_MINUTES`, audited, with the
    administrators alerted after commit. Returns the grant and whether it is new: asking again
    while a grant is active returns that grant (no second alert; a new reason after it ends)."""
    if user.role not in EMERGENCY_ROLES:
        record_denied(user, "C", ENTITY_TYPE, None, f"role {user.role.value} may not use emergency access",
                      patient_id=patient_id)
        raise Forbidden(f"emergency access is not available to the {user.role.value} role")
    text = checked_reason(reason)
    if session.get(Patient, patient_id) is None:
        record_denied(user, "C", ENTITY_TYPE, None, "emergency access asked for an unknown patient")
        raise NotFound(f"patient {patient_id} does not exist")
    active = session.scalar(
        select(EmergencyAccess).where(EmergencyAccess.patient_id == patient_id, *_active_grants_of(user))
        .order_by(EmergencyAccess.expires_at.desc()).limit(1)
    )
    if active is not None:
        return active, False
    now = utcnow()
    grant = EmergencyAccess(user_id=user.id, patient_id=patient_id, reason=text, started_at=now,
                            expires_at=now + timedelta(minutes=access_minutes()))
    session.add(grant)
    session.flush()
    record_access(session, user, "C", ENTITY_TYPE, grant.id, patient_id=patient_id,
                  description=f"{EMERGENCY_ACCESS}: {text}")
    enqueue(session, ALERT_HANDLER, grant_id=grant.id)
    logger.warning("emergency access %s by user %s until %s", grant.id, user.id, grant.expires_at.isoformat())
    return grant, True


def active_grants(session: Session, user: User) -> list[EmergencyAccess]:
    """`user`'s grants that still open a record, soonest to end first."""
    statement = (select(EmergencyAccess).options(joinedload(EmergencyAccess.patient))
                 .where(*_active_grants_of(user))
                 .order_by(EmergencyAccess.expires_at))
    return list(session.scalars(statement))


def alert_administrators(session: Session, grant_id: int) -> None:
    """Job: tell each active administrator, once, that a grant was made (in the app, and by mail
    where they have an address). The notification names the user and when the grant ends, not the
    patient nor the reason (a mail is not a place for PHI); the review page shows the rest."""
    grant = session.get(EmergencyAccess, grant_id, with_for_update=True)
    if grant is None or grant.alerted_at is not None:
        logger.info("emergency access %s is gone or its alert was sent; nothing to do", grant_id)
        return
    admins = list(session.scalars(select(User).where(User.role == Role.ADMIN, User.active.is_(True)).order_by(User.id)))
    told = notify(session, admins, "emergency_access_used", f"emergency-access:{grant.id}",
                  user=grant.user.username, until=grant.expires_at.isoformat())
    grant.alerted_at = utcnow()
    logger.info("emergency access %s: %d administrator(s) alerted", grant.id, len(told))


def list_grants(session: Session, limit: int) -> list[EmergencyAccess]:
    """The newest grants first, with who made them, whose record, and who reviewed them."""
    statement = (select(EmergencyAccess)
                 .options(joinedload(EmergencyAccess.user), joinedload(EmergencyAccess.patient),
                          joinedload(EmergencyAccess.reviewed_by))
                 .order_by(EmergencyAccess.id.desc()).limit(limit))
    return list(session.scalars(statement))


def review_grant(session: Session, admin: User, grant_id: int, note: str) -> EmergencyAccess:
    """An administrator marks a grant reviewed, with a note (kept: a second review is refused)."""
    if admin.role is not Role.ADMIN:
        raise Forbidden("only administrators review emergency access")
    text = " ".join(note.split())
    if not text:
        raise InvalidInput(_("a review note is required: what was checked, and the conclusion"))
    grant = session.get(EmergencyAccess, grant_id, with_for_update=True)
    if grant is None:
        raise NotFound(_("emergency access %(id)s does not exist", id=grant_id))
    if grant.reviewed_at is not None:
        raise Conflict(_("emergency access %(id)s was already reviewed", id=grant_id))
    grant.reviewed_at = utcnow()
    grant.reviewed_by_user_id = admin.id
    grant.review_note = text
    session.flush()
    record_access(session, admin, "U", ENTITY_TYPE, grant.id, patient_id=grant.patient_id,
                  description=f"{EMERGENCY_ACCESS_REVIEWED}: {text}")
    return grant
