"""The patient's view of who opened their record (rules in `hospital.record_openings`): the page
`/my-record-access` (linked from a patient's navigation as "Who opened my record") and the same as
JSON at `GET /api/me/record-access`. Only a patient, about their own record: other roles are
refused (administrators read the same on the audit page and the emergency access review page)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, jsonify, render_template
from flask.typing import ResponseReturnValue

from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.i18n import lazy_gettext as _l
from hospital.models import Role, User
from hospital.record_openings import RecordOpening, record_openings
from hospital.web import add_nav_link

logger = logging.getLogger(__name__)

bp = Blueprint("record_openings", __name__, template_folder="templates")


def opening_json(opening: RecordOpening) -> dict[str, Any]:
    return {"kind": opening.kind, "at": opening.at.isoformat(), "by": opening.by_name,
            "organisation": opening.by_organisation, "reason": opening.reason,
            "until": opening.until.isoformat() if opening.until is not None else None}


def _my_openings(user: User, view: str) -> list[RecordOpening]:
    session = request_session()
    openings = [] if user.patient_id is None else record_openings(session, user.patient_id)
    record_access(session, user, "E", "AuditEvent", None, patient_id=user.patient_id,
                  description=f"{view} ({len(openings)})")
    return openings


@bp.get("/api/me/record-access")
@require_roles(Role.PATIENT)
def my_record_access() -> ResponseReturnValue:
    """The care relationships started for the caller and the emergency grants on their record,
    newest first."""
    return jsonify([opening_json(o) for o in _my_openings(current_user(), "who opened my record")])


@bp.get("/my-record-access")
@require_roles(Role.PATIENT)
def my_record_access_page() -> ResponseReturnValue:
    return render_template("record_openings.html",
                           openings=_my_openings(current_user(), "who opened my record page"))


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    add_nav_link(app, _l("Who opened my record"), "record_openings.my_record_access_page", Role.PATIENT)
