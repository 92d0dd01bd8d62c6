"""Audit trail of access to patient data (FHIR AuditEvent semantics).

Records are written in the caller's transaction for successful access. A denial is held until
the request's unit of work ends (`hospital.db.abandon_request_work` rolls the refused work back
and keeps only the denial); outside a request it is written at once, in a transaction of its own.
There is no update or delete path.
"""

from __future__ import annotations

import logging

from flask import current_app, g, has_request_context, request
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.models import AuditEvent, User

logger = logging.getLogger(__name__)

ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOME_SUCCESS = 0
OUTCOME_DENIED = 4


def record_access(
    session: Session,
    user: User | None,
    action: str,
    entity_type: str,
    entity_id: object | None = None,
    *,
    patient_id: int | None = None,
    outcome: int = OUTCOME_SUCCESS,
    description: str | None = None,
    source: str | None = None,
) -> AuditEvent:
    if action not in ACTIONS:
        raise ValueError(f"audit action must be one of {sorted(ACTIONS)}, got {action!r}")
    event = AuditEvent(
        user_id=user.id if user is not None else None,
        action=action,
        entity_type=entity_type,
        entity_id=None if entity_id is None else str(entity_id),
        patient_id=patient_id,
        outcome=outcome,
        description=description,
        source=source or _default_source(),
    )
    session.add(event)
    return event


def record_denied(
    user: User | None, action: str, entity_type: str, entity_id: object | None, description: str,
    *, patient_id: int | None = None,
) -> None:
    """Record a denied access so that it survives the rollback of the denied request. `patient_id`
    names whose record was targeted, when the refusal knows it: a privacy officer asks "who tried
    to open this patient's record", not only "what did this user try"."""
    denial = AuditEvent(user_id=user.id if user else None, action=action, entity_type=entity_type,
                        entity_id=None if entity_id is None else str(entity_id), patient_id=patient_id,
                        description=description, outcome=OUTCOME_DENIED, source=_default_source())
    if has_request_context():
        # Not added to the request's session: that work is about to be rolled back.
        g.setdefault("audit_denials", []).append(denial)
        return
    with get_db(current_app._get_current_object()).transaction() as session:  # type: ignore[attr-defined]
        session.add(denial)


def _default_source() -> str:
    if has_request_context():
        return "fhir" if request.path.startswith("/fhir") else "web" if not request.path.startswith("/api") else "api"
    return "system"
