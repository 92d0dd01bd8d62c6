"""The edges of emergency access (rules in `hospital.emergency`): `POST /api/emergency-access`, the
page where a clinician or radiologist breaks the glass (`/emergency-access`, linked from their
navigation and from the page that refuses them a record), and the administrators' review page
(`/admin/emergency-access`)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hospital.api import json_body, required
from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.emergency import (
    EMERGENCY_ROLES,
    ENTITY_TYPE,
    MIN_REASON_WORDS,
    access_minutes,
    active_grants,
    break_glass,
    list_grants,
    patient_id_for_mrn,
    review_grant,
)
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.i18n import local_datetime
from hospital.models import EmergencyAccess, Role
from hospital.web import add_nav_link, form_action, reader_timezone, same_site_path

logger = logging.getLogger(__name__)

bp = Blueprint("emergency", __name__, template_folder="templates")

REVIEW_PAGE_ROWS = 200


def grant_json(grant: EmergencyAccess) -> dict[str, Any]:
    return {"id": grant.id, "user_id": grant.user_id, "patient_id": grant.patient_id, "reason": grant.reason,
            "started_at": grant.started_at.isoformat(), "expires_at": grant.expires_at.isoformat(),
            "reviewed": grant.reviewed_at is not None}


@bp.post("/api/emergency-access")
@require_roles(*EMERGENCY_ROLES)
def create_grant() -> ResponseReturnValue:
    """`{"patient_id": 12, "reason": "..."}` -> 201 and the grant (200 and the same grant when one
    is already active for this patient)."""
    data = json_body()
    grant, created = break_glass(request_session(), current_user(), required(data, "patient_id", int), data.get("reason"))
    return jsonify(grant_json(grant)), 201 if created else 200


@bp.route("/emergency-access", methods=["GET", "POST"])
@require_roles(*EMERGENCY_ROLES)
def emergency_access_page() -> ResponseReturnValue:
    """The form: the patient's MRN and the reason; on success, back to the page that was refused."""
    session = request_session()
    user = current_user()
    form = request.form
    target = same_site_path(form.get("next") or request.args.get("next"))
    if request.method == "POST":

        def act() -> str:
            patient_id = patient_id_for_mrn(session, user, form.get("mrn", ""))
            grant, created = break_glass(session, user, patient_id, form.get("reason", ""))
            # No patient's name here: a flashed message travels in the (signed, not encrypted) cookie.
            until = local_datetime(grant.expires_at, reader_timezone(user))
            if created:
                return _("Emergency access is open until %(until)s. Administrators have been told, and every "
                         "record you open is audited.", until=until)
            return _("You already have emergency access to this patient, until %(until)s.", until=until)

        if form_action(session, act):
            return redirect(target or url_for("emergency.emergency_access_page"))
    page = render_template("emergency_access.html", values=form, next=target or "", minutes=access_minutes(),
                           min_words=MIN_REASON_WORDS, grants=active_grants(session, user))
    return page, 422 if request.method == "POST" else 200


@bp.route("/admin/emergency-access", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def review_page() -> ResponseReturnValue:
    """Every grant, newest first; each one not yet reviewed has a form to review it with a note."""
    session = request_session()
    admin = current_user()
    if request.method == "POST":

        def review() -> str:
            grant_id = request.form.get("grant_id", type=int)
            if grant_id is None:
                raise InvalidInput(_("Choose the emergency access to review."))
            grant = review_grant(session, admin, grant_id, request.form.get("note", ""))
            return _("Emergency access %(id)s by %(username)s is marked reviewed.", id=grant.id,
                     username=grant.user.username)

        if form_action(session, review):
            return redirect(url_for("emergency.review_page"))
    grants = list_grants(session, REVIEW_PAGE_ROWS)
    record_access(session, admin, "E", ENTITY_TYPE, None, description=f"emergency access review list ({len(grants)})")
    page = render_template("admin/emergency_access.html", grants=grants,
                           waiting=sum(1 for g in grants if g.reviewed_at is None), values=request.form)
    return page, 422 if request.method == "POST" else 200


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    add_nav_link(app, _l("Emergency access"), "emergency.emergency_access_page", *EMERGENCY_ROLES)
    add_nav_link(app, _l("Emergency access"), "emergency.review_page", Role.ADMIN)

    @app.context_processor
    def _emergency_roles() -> dict[str, object]:
        # The page that refuses a record offers emergency access to the roles that may use it.
        return {"emergency_roles": EMERGENCY_ROLES}
