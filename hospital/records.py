"""Loading one patient record for a user: the one way to do it (flaskr's `get_post(id,
check_author)`, HAPI's interceptors).

`load_record` finds the row (404 when absent), authorises the user's action on the patient it
belongs to (403, with the denial audited, through `hospital.access`), and audits a read. Every
stage's `get_*` for a single record goes through it, so no route can forget one of the three.

One read per opening, not per part fetched: the parts of a record a page fetches one by one (a
report's slices and key images, as the viewer scrolls) ask with `part_of_opened_record`; they are
authorised every time, but audited as a read only when the same user has no successful read of
the same record within the last `SESSION_IDLE_MINUTES` (a part fetched on its own, or in a new
sitting, is still a read). Refusals are always audited.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session

from hospital.access import ensure_patient_access, ensure_patient_record_access
from hospital.audit import OUTCOME_SUCCESS, record_access
from hospital.clock import utcnow
from hospital.errors import NotFound
from hospital.models import AuditEvent, User

logger = logging.getLogger(__name__)


class PatientRecord(Protocol):
    id: Any
    patient_id: Any


R = TypeVar("R", bound=PatientRecord)


def load_record(
    session: Session,
    user: User,
    model: type[R],
    key: object,
    *,
    entity_type: str,
    noun: str,
    action: str = "R",
    by: InstrumentedAttribute[Any] | None = None,
    matched_or_not: bool = False,
    lock: bool = False,
    authored_by: Callable[[R], bool] | None = None,
    part_of_opened_record: bool = False,
) -> R:
    """The `model` row whose primary key (or `by` column) is `key`, if `user` may `action` it.

    `entity_type` is the FHIR type the audit names; `noun` is how an error names the record.
    `matched_or_not` is for records that belong to a patient even before they are matched to one
    (an arriving study): only the readers of unmatched records may see those. `lock` takes a row
    lock for a change that follows. `authored_by` says whether the user wrote the record itself
    (a clinician's own order): its author may act on it without a care relationship. A read ("R") is audited here; a change is audited by the
    service that makes it, which knows what changed. `part_of_opened_record`: see the module
    docstring.
    """
    if by is None:
        record = session.get(model, key, with_for_update=lock)
    else:
        statement = select(model).where(by == key)
        record = session.scalar(statement.with_for_update() if lock else statement)
    if record is None:
        raise NotFound(f"{noun} {str(key)[:64]} does not exist")
    if authored_by is None or not authored_by(record):
        check = ensure_patient_record_access if matched_or_not else ensure_patient_access
        check(session, user, record.patient_id, entity_type, record.id, action)
    if action == "R" and not (part_of_opened_record and _read_recently(session, user, entity_type, record.id)):
        record_access(session, user, "R", entity_type, record.id, patient_id=record.patient_id)
    return record


def _read_recently(session: Session, user: User, entity_type: str, record_id: object) -> bool:
    since = utcnow() - timedelta(minutes=int(current_app.config["SESSION_IDLE_MINUTES"]))
    return session.scalar(
        select(AuditEvent.id).where(
            AuditEvent.user_id == user.id, AuditEvent.entity_type == entity_type,
            AuditEvent.entity_id == str(record_id), AuditEvent.action == "R",
            AuditEvent.outcome == OUTCOME_SUCCESS, AuditEvent.recorded_at >= since,
        ).limit(1)
    ) is not None
