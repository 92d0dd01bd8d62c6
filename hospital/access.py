"""Patient-compartment authorisation: which patients' records a user may see.

Each stage knows the relations it owns (a clinician's referrals, a centre's orders, a pharmacy's
prescriptions) and registers them here as 'patient scopes' for a role; this module combines them.
A patient sees only their own record; an administrator sees all (and every access is audited).
Within the patients a user may see, `hospital.policy` says which resource types their role reads;
both checks happen here, so every surface that asks for a resource type gets the same answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import Flask, current_app
from sqlalchemy import ColumnElement, Select, and_, false, literal, true, union
from sqlalchemy.orm import Session

from hospital.audit import record_denied
from hospital.clock import utcnow
from hospital.errors import AccessDenied
from hospital.models import Role, User
from hospital.policy import may_see_type
from hospital.smart_scopes import current_smart_access

logger = logging.getLogger(__name__)

# A scope maps a user to a SELECT of the patient ids that user may see through one relation
# (`Select[int]`: one int column, in SQLAlchemy 2.1's typing).
PatientScope = Callable[[User], Select[int]]


@dataclass
class AccessPolicy:
    scopes: dict[Role, list[PatientScope]] = field(default_factory=dict)

    def add(self, role: Role, scope: PatientScope) -> None:
        self.scopes.setdefault(role, []).append(scope)


def init_app(app: Flask) -> None:
    app.extensions["hospital.access"] = AccessPolicy()


def register_patient_scope(app: Flask, role: Role, scope: PatientScope) -> None:
    app.extensions["hospital.access"].add(role, scope)


# How the audit trail marks a clinician starting a care relationship with a patient not yet in
# their care (with the reason they gave); the admin audit page filters on it.
CARE_RELATIONSHIP_STARTED = "care relationship started"


def relationship_cutoff() -> datetime:
    """A care relationship that has ended (a completed referral, a finished consultation) still
    opens the record until this long ago (`CARE_RELATIONSHIP_DAYS`): time to read the report and
    answer the patient's questions, not for ever."""
    return utcnow() - timedelta(days=int(current_app.config["CARE_RELATIONSHIP_DAYS"]))


def patient_filter(
    user: User, patient_column: ColumnElement[int] | object, resource_type: str | None = None
) -> ColumnElement[bool]:
    """A WHERE clause limiting `patient_column` to the patients `user` may see; with
    `resource_type`, to none at all when the user's role may not see that type (`hospital.policy`).
    A SMART token narrows it further: to the types its scopes name, and for `patient/` scopes to
    its launch patient."""
    if resource_type is not None and not may_see_type(user.role, resource_type):
        return false()
    smart = current_smart_access(user)
    if smart is not None:
        if resource_type is not None and not smart.allows(resource_type, "R"):
            return false()
        only = smart.patient_restriction(resource_type or "*")
        user_clause = _user_patient_filter(user, patient_column)
        if only is None:
            return user_clause
        return and_(user_clause, patient_column == literal(only))
    return _user_patient_filter(user, patient_column)


def _user_patient_filter(user: User, patient_column: ColumnElement[int] | object) -> ColumnElement[bool]:
    if user.role is Role.ADMIN:
        return true()
    if user.role is Role.PATIENT:
        if user.patient_id is None:
            return false()
        return patient_column == literal(user.patient_id)
    policy: AccessPolicy = current_app.extensions["hospital.access"]
    scopes = policy.scopes.get(user.role, [])
    if not scopes:
        return false()
    selects = [scope(user) for scope in scopes]
    allowed = selects[0] if len(selects) == 1 else union(*selects)
    return patient_column.in_(allowed)  # type: ignore[union-attr]


def can_access_patient(session: Session, user: User, patient_id: int | None) -> bool:
    smart = current_smart_access(user)
    if smart is not None and patient_id is not None:
        only = smart.patient_restriction("Patient")
        if only is not None and only != patient_id:
            return False
    if patient_id is None:
        # Records that belong to no patient (catalog, schedules) are governed by role alone.
        return True
    if user.role is Role.ADMIN:
        return True
    if user.role is Role.PATIENT:
        return user.patient_id == patient_id
    clause = patient_filter(user, literal(patient_id))
    return bool(session.scalar(Select(literal(True)).where(clause)))


def ensure_patient_access(
    session: Session, user: User, patient_id: int | None, entity_type: str, entity_id: object | None, action: str = "R"
) -> None:
    """Raise AccessDenied (and audit the denial, naming the patient) unless `user` may act on this
    patient's record, and their role may see records of `entity_type`."""
    _ensure_smart_scope(user, patient_id, entity_type, entity_id, action, patient_bound=False)
    if patient_id is not None and not may_see_type(user.role, entity_type):
        record_denied(user, action, entity_type, entity_id, f"role {user.role.value} may not see {entity_type}",
                      patient_id=patient_id)
        raise AccessDenied(f"{entity_type} is not available to the {user.role.value} role")
    if not can_access_patient(session, user, patient_id):
        record_denied(user, action, entity_type, entity_id, "outside the user's patient compartment",
                      patient_id=patient_id)
        raise AccessDenied(f"no access to this {entity_type}")


# Roles that may read a patient-bound record before it is matched to a patient (an unmatched
# study names someone in its headers): the centre's staff who reconcile it, and administrators.
UNMATCHED_READERS = frozenset({Role.ADMIN, Role.IMAGING_STAFF, Role.RADIOLOGIST})


def ensure_patient_record_access(
    session: Session, user: User, patient_id: int | None, entity_type: str, entity_id: object | None, action: str = "R"
) -> None:
    """Like `ensure_patient_access`, for records that always belong to a patient, matched or not."""
    _ensure_smart_scope(user, patient_id, entity_type, entity_id, action, patient_bound=True)
    if patient_id is None:
        if user.role not in UNMATCHED_READERS:
            record_denied(user, action, entity_type, entity_id, "record not yet matched to a patient")
            raise AccessDenied(f"this {entity_type} is not available to the {user.role.value} role")
        return
    ensure_patient_access(session, user, patient_id, entity_type, entity_id, action)


def _ensure_smart_scope(
    session_user: User, patient_id: int | None, entity_type: str, entity_id: object | None, action: str,
    *, patient_bound: bool,
) -> None:
    """Raise AccessDenied (audited) when the request's SMART token does not reach this record: its
    scopes do not name the type and interaction, or a `patient/` scope holds it to another patient
    (a record of no patient included: an unmatched study names someone)."""
    smart = current_smart_access(session_user)
    if smart is None:
        return
    if not smart.allows(entity_type, action):
        record_denied(session_user, action, entity_type, entity_id,
                      f"SMART app {smart.client_id}: no scope grants {action} on {entity_type}", patient_id=patient_id)
        raise AccessDenied(f"the token's scopes do not grant this access to {entity_type}")
    only = smart.patient_restriction(entity_type, action)
    if only is not None and patient_id != only and (patient_id is not None or patient_bound):
        record_denied(session_user, action, entity_type, entity_id,
                      f"SMART app {smart.client_id}: outside the launch patient", patient_id=patient_id)
        raise AccessDenied(f"this {entity_type} is outside the token's patient context")

