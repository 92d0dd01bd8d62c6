"""Loading one patient record for a user: the one way to do it (flaskr's `get_post(id,
check_author)`, HAPI's interceptors).

`load_record` finds the row (404 when absent), authorises the user's action on the patient it
belongs to (403, with the denial audited, through `hospital.access`), and audits a read. Every
stage's `get_*` for a single record goes through it, so no route can forget one of the three.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session

from hospital.access import ensure_patient_access, ensure_patient_record_access
from hospital.audit import record_access
from hospital.errors import NotFound
from hospital.models import User

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
) -> R:
    """The `model` row whose primary key (or `by` column) is `key`, if `user` may `action` it.

    `entity_type` is the FHIR type the audit names; `noun` is how an error names the record.
    `matched_or_not` is for records that belong to a patient even before they are matched to one
    (an arriving study): only the readers of unmatched records may see those. `lock` takes a row
    lock for a change that follows. `authored_by` says whether the user wrote the record itself
    (a clinician's own order): its author may act on it without a care relationship. A read ("R") is audited here; a change is audited by the
    service that makes it, which knows what changed.
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
    if action == "R":
        record_access(session, user, "R", entity_type, record.id, patient_id=record.patient_id)
    return record
