"""Administrator pages of the core: search the audit trail by patient, user and date; list the
user accounts and unlock those that failed sign-ins have locked.

The audit trail is append-only; this page only reads it, and the search itself is audited (an
administrator looking through who saw what is an access worth recording too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from flask import Blueprint, Flask, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased

from hospital.audit import OUTCOME_DENIED, record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.models import AuditEvent, Patient, Role, User
from hospital.users import is_locked, list_users, unlock_user
from hospital.web import add_nav_link, form_action

logger = logging.getLogger(__name__)

bp = Blueprint("admin_pages", __name__, template_folder="templates")

MAX_ROWS = 200
ACTION_LABELS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "search"}


@dataclass(frozen=True)
class AuditQuery:
    patient: str = ""  # MRN, or part of a patient's name
    username: str = ""
    date_from: date | None = None
    date_to: date | None = None  # inclusive
    denied_only: bool = False


@dataclass(frozen=True)
class AuditRow:
    event: AuditEvent
    username: str | None
    patient: Patient | None


def search_audit_events(session: Session, query: AuditQuery, limit: int = MAX_ROWS) -> list[AuditRow]:
    """Audit events matching every given criterion, newest first."""
    actor = aliased(User)
    statement = (
        select(AuditEvent, actor.username, Patient)
        .outerjoin(actor, AuditEvent.user_id == actor.id)
        .outerjoin(Patient, AuditEvent.patient_id == Patient.id)
        .order_by(AuditEvent.recorded_at.desc(), AuditEvent.id.desc())
        .limit(limit)
    )
    if query.patient:
        pattern = f"%{query.patient}%"
        statement = statement.where(or_(
            Patient.mrn == query.patient, Patient.family_name.ilike(pattern), Patient.given_name.ilike(pattern)
        ))
    if query.username:
        statement = statement.where(actor.username == query.username)
    if query.date_from:
        statement = statement.where(AuditEvent.recorded_at >= datetime.combine(query.date_from, time.min, tzinfo=UTC))
    if query.date_to:
        end = datetime.combine(query.date_to + timedelta(days=1), time.min, tzinfo=UTC)
        statement = statement.where(AuditEvent.recorded_at < end)
    if query.denied_only:
        statement = statement.where(AuditEvent.outcome == OUTCOME_DENIED)
    return [AuditRow(event, username, patient) for event, username, patient in session.execute(statement)]


def _parse_day(value: str | None, label: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{label} must be a date YYYY-MM-DD, got {value!r}") from exc


@bp.get("/admin/audit")
@require_roles(Role.ADMIN)
def audit_log_page() -> ResponseReturnValue:
    args = request.args
    query = AuditQuery(
        patient=args.get("patient", "").strip(), username=args.get("user", "").strip(),
        date_from=_parse_day(args.get("from"), "from"), date_to=_parse_day(args.get("to"), "to"),
        denied_only=args.get("denied") == "1",
    )
    if query.date_from and query.date_to and query.date_to < query.date_from:
        raise InvalidInput("the 'to' date is before the 'from' date")
    session = request_session()
    user = current_user()
    searched = bool(request.args)
    rows = search_audit_events(session, query)
    record_access(session, user, "E", "AuditEvent", None, description=f"audit search ({len(rows)}) {query}")
    page = render_template("admin/audit.html", rows=rows, query=query, searched=searched,
                           max_rows=MAX_ROWS, actions=ACTION_LABELS, denied=OUTCOME_DENIED)
    session.commit()
    return page


@bp.route("/admin/users", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def users_page() -> ResponseReturnValue:
    session = request_session()
    admin = current_user()
    if request.method == "POST":

        def unlock() -> str:
            user = unlock_user(session, admin, request.form.get("user_id", type=int) or 0)
            return f"{user.username} is unlocked and may sign in again."

        form_action(session, unlock)
        return redirect(url_for("admin_pages.users_page"))
    users = list_users(session, admin)
    page = render_template("admin/users.html", users=users, locked={u.id for u in users if is_locked(u)})
    session.commit()
    return page


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    add_nav_link(app, "Audit log", "admin_pages.audit_log_page", Role.ADMIN)
    add_nav_link(app, "Users", "admin_pages.users_page", Role.ADMIN)
