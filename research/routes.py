"""The research pages: a patient's own choice about research use of their images."""

from __future__ import annotations

import logging

from flask import Blueprint, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.i18n import lazy_gettext as _l
from hospital.models import Role
from hospital.web import form_action
from research.models import ConsentDecision
from research.service import current_consent, record_consent

logger = logging.getLogger(__name__)

bp = Blueprint("research", __name__, template_folder="templates")

MESSAGES = {
    ConsentDecision.PERMIT: _l("Thank you. Your images may now be used for research, with your name and details "
                               "removed."),
    ConsentDecision.DENY: _l("Done. Your images will not be used in any research dataset made from now on."),
}


@bp.route("/research/consent", methods=["GET", "POST"])
@require_roles(Role.PATIENT)
def consent_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    assert user.patient_id is not None  # a patient account is bound to its patient record
    patient_id = user.patient_id
    if request.method == "POST":

        def choose() -> str:
            consent = record_consent(session, user, patient_id, request.form.get("decision", ""))
            return str(MESSAGES[consent.decision])

        form_action(session, choose)
        return redirect(url_for("research.consent_page"))
    return render_template("research/consent.html", consent=current_consent(session, patient_id))
