"""Administrator pages of the core: search the audit trail by patient, user and date; manage user
accounts (list them, create one with the profile its role needs, change its role, deactivate or
reactivate it, reset its password, unlock it). The rules live in `hospital.users`; these pages
parse the form, call it, and show the outcome (POST, then redirect to a GET).

The audit trail is append-only; this page only reads it, and the search itself is audited (an
administrator looking through who saw what is an access worth recording too). It pages newest first
by id (keyset: "older than this id", so a page does not shift while rows are added), and exports
every row of a search as CSV (streamed, in pages; the export is audited too).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, flash, redirect, render_template, request, stream_with_context, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased
from werkzeug.datastructures import MultiDict

from hospital import clock
from hospital.access import CARE_RELATIONSHIP_STARTED
from hospital.api import enum_value
from hospital.audit import OUTCOME_DENIED, record_access
from hospital.auth import current_user, is_locked, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import AuditEvent, Organization, Patient, Role, User
from hospital.users import (
    MIN_PASSWORD_LENGTH,
    PROFILE_RULES,
    AccountProfile,
    NewAccount,
    PatientChoice,
    change_role,
    create_user,
    deactivate_user,
    find_patients_for_account,
    get_user,
    list_users,
    organization_kind_label,
    reactivate_user,
    reset_password,
    role_as_noun,
    unlock_user,
)
from hospital.web import add_nav_link, ask_first, form_action

logger = logging.getLogger(__name__)

bp = Blueprint("admin_pages", __name__, template_folder="templates")

MAX_ROWS = 200
# Account-form posts that only redraw the form (no script: the role's fields, a patient search).
FORM_STEPS = frozenset({"choose_role", "find_patient"})
ACTION_LABELS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "search"}
# The same actions as the audit page shows them to its reader (the CSV export keeps the codes' English).
ACTION_WORDS = {"C": _l("create"), "R": _l("read"), "U": _l("update"), "D": _l("delete"), "E": _l("search")}


@dataclass(frozen=True)
class AuditQuery:
    patient: str = ""  # MRN, or part of a patient's name
    username: str = ""
    date_from: date | None = None
    date_to: date | None = None  # inclusive
    denied_only: bool = False
    relationships_only: bool = False  # clinicians starting a care relationship, with their reason


@dataclass(frozen=True)
class AuditRow:
    event: AuditEvent
    username: str | None
    patient: Patient | None


def search_audit_events(
    session: Session, query: AuditQuery, limit: int | None = None, before_id: int | None = None
) -> list[AuditRow]:
    """Audit events matching every given criterion, newest (highest id: the hash chain's order)
    first; with `before_id`, only those older than that row."""
    actor = aliased(User)
    statement = (
        select(AuditEvent, actor.username, Patient)
        .outerjoin(actor, AuditEvent.user_id == actor.id)
        .outerjoin(Patient, AuditEvent.patient_id == Patient.id)
        .order_by(AuditEvent.id.desc())
        .limit(MAX_ROWS if limit is None else limit)
    )
    if before_id is not None:
        statement = statement.where(AuditEvent.id < before_id)
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
    if query.relationships_only:
        statement = statement.where(AuditEvent.description.startswith(f"{CARE_RELATIONSHIP_STARTED}:", autoescape=True))
    return [AuditRow(event, username, patient) for event, username, patient in session.execute(statement)]


def _parse_day(value: str | None, label: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(_("%(field)s must be a date YYYY-MM-DD, got %(value)s", field=label, value=repr(value))) from exc


def _audit_query() -> AuditQuery:
    args = request.args
    query = AuditQuery(
        patient=args.get("patient", "").strip(), username=args.get("user", "").strip(),
        date_from=_parse_day(args.get("from"), "from"), date_to=_parse_day(args.get("to"), "to"),
        denied_only=args.get("denied") == "1", relationships_only=args.get("relationships") == "1",
    )
    if query.date_from and query.date_to and query.date_to < query.date_from:
        raise InvalidInput(_("the 'to' date is before the 'from' date"))
    if query.date_to and query.date_to == date.max:
        raise InvalidInput(_("the 'to' date must lie before 9999-12-31"))  # the day after it has no date
    return query


def _query_args(query: AuditQuery) -> dict[str, Any]:
    """The search as query-string arguments, for the next page's and the export's links."""
    args = {"patient": query.patient, "user": query.username,
            "from": query.date_from.isoformat() if query.date_from else "",
            "to": query.date_to.isoformat() if query.date_to else "",
            "denied": "1" if query.denied_only else "", "relationships": "1" if query.relationships_only else ""}
    return {name: value for name, value in args.items() if value}


@bp.get("/admin/audit")
@require_roles(Role.ADMIN)
def audit_log_page() -> ResponseReturnValue:
    query = _audit_query()
    before_id = request.args.get("before", type=int)
    session = request_session()
    user = current_user()
    searched = bool(request.args)
    rows = search_audit_events(session, query, limit=MAX_ROWS + 1, before_id=before_id)
    older = rows[MAX_ROWS - 1].event.id if len(rows) > MAX_ROWS else None
    rows = rows[:MAX_ROWS]
    record_access(session, user, "E", "AuditEvent", None,
                  description=f"audit search ({len(rows)}{f', before {before_id}' if before_id else ''}) {query}")
    args = _query_args(query)
    page = render_template("admin/audit.html", rows=rows, query=query, searched=searched, actions=ACTION_WORDS,
                           denied=OUTCOME_DENIED, older_url=url_for(".audit_log_page", **args, before=older) if older else None,
                           newest_url=url_for(".audit_log_page", **args) if before_id else None,
                           export_url=url_for(".audit_export", **args))
    return page


CSV_COLUMNS = ("id", "recorded_at", "user", "action", "entity_type", "entity_id", "patient_id", "patient_mrn",
               "outcome", "source", "description", "prev_hash", "row_hash")
# A cell a spreadsheet would run as a formula (OWASP "CSV injection"): descriptions hold text users typed.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@bp.get("/admin/audit.csv")
@require_roles(Role.ADMIN)
def audit_export() -> ResponseReturnValue:
    """Every row of the search, newest first, as CSV."""
    query = _audit_query()
    session = request_session()
    record_access(session, current_user(), "E", "AuditEvent", None, description=f"audit export (csv) {query}")

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        before_id = None
        while True:
            rows = search_audit_events(request_session(), query, limit=1000, before_id=before_id)
            for row in rows:
                writer.writerow([_csv_cell(value) for value in _csv_values(row)])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(rows) < 1000:
                return
            before_id = rows[-1].event.id

    filename = f"audit-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    return Response(stream_with_context(lines()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _csv_values(row: AuditRow) -> tuple[object, ...]:
    e = row.event
    return (e.id, e.recorded_at.isoformat(), row.username or "", ACTION_LABELS.get(e.action, e.action),
            e.entity_type, e.entity_id, e.patient_id, row.patient.mrn if row.patient else "",
            "denied" if e.outcome == OUTCOME_DENIED else e.outcome, e.source, e.description, e.prev_hash, e.row_hash)


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


@bp.route("/admin/users", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def users_page() -> ResponseReturnValue:
    session = request_session()
    admin = current_user()
    if request.method == "POST":

        def unlock() -> str:
            user = unlock_user(session, admin, request.form.get("user_id", type=int) or 0)
            return _("%(username)s is unlocked and may sign in again.", username=user.username)

        form_action(session, unlock)
        return redirect(url_for("admin_pages.users_page"))
    users = list_users(session, admin)
    page = render_template("admin/users.html", users=users, locked={u.id for u in users if is_locked(u)})
    return page


@bp.route("/admin/users/new", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def new_user_page() -> ResponseReturnValue:
    """Create an account. On an error the form comes back as typed (but for the password)."""
    session = request_session()
    admin = current_user()
    form = request.form if request.method == "POST" else request.args
    step = form.get("step", "")
    if request.method == "POST" and step not in FORM_STEPS:
        created: list[User] = []

        def create() -> str:
            account = NewAccount(
                username=form.get("username", ""), role=enum_value(Role, form.get("role"), "role"),
                temporary_password=form.get("temporary_password", ""), profile=_account_profile(form),
            )
            created.append(create_user(session, admin, account))
            return _("Account %(username)s created as %(role)s. Give them the temporary password; they must "
                     "choose their own when they first sign in.", username=created[0].username,
                     role=role_as_noun(account.role))

        if form_action(session, create):
            return redirect(url_for("admin_pages.user_page", user_id=created[0].id))
    page = render_template("admin/user_new.html", values=form, found=_patient_choices(session, admin, form, step),
                           **_form_choices(session))
    return page, 422 if request.method == "POST" and step not in FORM_STEPS else 200


@bp.route("/admin/users/<int:user_id>", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def user_page(user_id: int) -> ResponseReturnValue:
    """One account: change its role and profile, reset its password, deactivate or reactivate it,
    unlock it. Each form posts an `action`."""
    session = request_session()
    admin = current_user()
    form = request.form
    action = form.get("action", "")
    step = form.get("step", "")
    if request.method == "POST" and step not in FORM_STEPS:

        def act() -> str:
            if action == "role":
                role = enum_value(Role, form.get("role"), "role")
                user = change_role(session, admin, user_id, role, _account_profile(form))
                return _("Saved: %(username)s is %(role)s. If what the account may reach changed, the API tokens "
                         "it held are revoked.", username=user.username, role=role_as_noun(role))
            if action == "reset_password":
                ask_first(_("Reset the password of %(username)s? Their current password stops working at once "
                            "and they are signed out everywhere.", username=get_user(session, admin, user_id).username),
                          _("Yes, reset the password"))
                user = reset_password(session, admin, user_id, form.get("temporary_password", ""))
                return _("%(username)s has a new temporary password and is unlocked; they must choose their own "
                         "at their next sign-in.", username=user.username)
            if action == "deactivate":
                name = get_user(session, admin, user_id).username
                ask_first(_("Deactivate %(username)s? They are signed out everywhere and their API tokens are "
                            "revoked for good (reactivating lets them sign in again, not the old tokens).",
                            username=name),
                          _("Yes, deactivate %(username)s", username=name))
                user = deactivate_user(session, admin, user_id)
                return _("%(username)s is deactivated: they cannot sign in, and their API tokens are revoked.",
                         username=user.username)
            if action == "reactivate":
                user = reactivate_user(session, admin, user_id)
                return _("%(username)s is active again.", username=user.username)
            if action == "unlock":
                user = unlock_user(session, admin, user_id)
                return _("%(username)s is unlocked and may sign in again.", username=user.username)
            raise InvalidInput(_("unknown action %(action)s", action=repr(action[:40])))

        if form_action(session, act):
            return redirect(url_for("admin_pages.user_page", user_id=user_id))
    user = get_user(session, admin, user_id)
    # After a refused role change the form shows what was typed; otherwise the account as it is.
    values = form if action == "role" else MultiDict(_profile_values(user))
    page = render_template("admin/user.html", user=user, locked=is_locked(user), values=values,
                           found=_patient_choices(session, admin, form, step), **_form_choices(session))
    return page, 422 if request.method == "POST" and step not in FORM_STEPS else 200


def _patient_choices(
    session: Session, admin: User, form: MultiDict[str, str], step: str
) -> list[PatientChoice] | None:
    """The patients an account form's search found (None: no search asked for). An empty search
    says what to type instead of listing every patient."""
    if step != "find_patient":
        return None
    try:
        return find_patients_for_account(session, admin, form.get("patient_query", ""))
    except InvalidInput as exc:
        flash(exc.message, "error")
        return None


def _account_profile(form: MultiDict[str, str]) -> AccountProfile:
    organization = form.get("organization_id", "").strip()
    if organization and not organization.isdigit():
        raise InvalidInput(_("organisation must be chosen from the list, got %(value)s", value=repr(organization[:40])))
    return AccountProfile(
        patient_mrn=form.get("patient_mrn", ""), given_name=form.get("given_name", ""),
        family_name=form.get("family_name", ""), organization_id=int(organization) if organization else None,
        timezone=form.get("timezone", ""), email=form.get("email", ""),
    )


def _profile_values(user: User) -> dict[str, str]:
    return {
        "role": user.role.value,
        "patient_mrn": user.patient.mrn if user.patient else "",
        "given_name": user.practitioner.given_name if user.practitioner else "",
        "family_name": user.practitioner.family_name if user.practitioner else "",
        "organization_id": str(user.organization_id or ""),
        "timezone": user.timezone or "",
        "email": user.email or "",
    }


def _form_choices(session: Session) -> dict[str, object]:
    organizations = session.scalars(select(Organization).order_by(Organization.kind, Organization.name)).all()
    return {"roles": list(Role), "role_rules": {role.value: rule for role, rule in PROFILE_RULES.items()},
            "organizations": organizations, "zones": clock.zone_names(), "min_length": MIN_PASSWORD_LENGTH}


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    add_nav_link(app, _l("Audit log"), "admin_pages.audit_log_page", Role.ADMIN)
    add_nav_link(app, _l("Users"), "admin_pages.users_page", Role.ADMIN)
    # The account form's macros see globals only.
    app.jinja_env.globals["organization_kind_label"] = organization_kind_label
