"""The research pages: a patient's own choice about research use of their images; a research
contributor's uploads (page and JSON API)."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import Role
from hospital.web import ask_first, form_action
from research.models import ConsentDecision, Contribution
from research.service import current_consent, record_consent
from research.storage import research_dir, research_secret
from research.uploads import UploadedFile, contribute_upload, contributions_of, instance_counts, withdraw_upload

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


# -- a research contributor's uploads ---------------------------------------------------------------


def _uploaded_files() -> list[UploadedFile]:
    return [UploadedFile(f.filename or "file", f.read()) for f in request.files.getlist("files") if f.filename]


def _labels_of(text: str) -> Any:
    """The labels a contributor typed or attached: a JSON list (empty: none)."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(_("the labels are not valid JSON (%(reason)s)", reason=exc)) from exc


def _labels_from_form() -> Any:
    attached = request.files.get("labels_file")
    if attached is not None and attached.filename:
        try:
            return _labels_of(attached.read().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(_("the labels file is not UTF-8 text")) from exc
    return _labels_of(request.form.get("labels", ""))


def _upload(labels: Any, consent_reference: str) -> Contribution:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return contribute_upload(request_session(), current_user(), _uploaded_files(), labels,
                             consent_reference=consent_reference, research_dir=research_dir(app),
                             secret=research_secret(app))


def upload_json(contribution: Contribution) -> dict[str, Any]:
    usable, kept_out = instance_counts(request_session(), contribution.id)
    return {
        "id": contribution.id, "contributed_at": contribution.contributed_at.isoformat(),
        "images": usable, "kept_out": kept_out, "labels": len(contribution.labels),
        "consent_reference": contribution.consent_reference,
        "withdrawn_at": contribution.withdrawn_at.isoformat() if contribution.withdrawn_at else None,
    }


@bp.route("/research/contributions", methods=["GET", "POST"])
@require_roles(Role.CONTRIBUTOR)
def contributions_page() -> ResponseReturnValue:
    session = request_session()
    if request.method == "POST":

        def upload() -> str:
            contribution = _upload(_labels_from_form(), request.form.get("consent_reference", ""))
            usable, kept_out = instance_counts(session, contribution.id)
            message = _("Upload %(id)s kept: %(images)s images, de-identified, with %(labels)s labels.",
                        id=contribution.id, images=usable, labels=len(contribution.labels))
            if kept_out:
                message += " " + _("Kept out: %(reasons)s.", reasons="; ".join(kept_out))
            return message

        form_action(session, upload)
        return redirect(url_for("research.contributions_page"))
    uploads = contributions_of(session, current_user())
    return render_template("research/contributions.html", uploads=uploads,
                           counts={c.id: instance_counts(session, c.id) for c in uploads})


@bp.post("/research/contributions/<int:contribution_id>/withdraw")
@require_roles(Role.CONTRIBUTOR)
def withdraw_page(contribution_id: int) -> ResponseReturnValue:
    session = request_session()

    def withdraw() -> str:
        ask_first(_("Withdraw upload %(id)s? It is left out of every dataset version made from now on, "
                    "and of later exports of earlier ones.", id=contribution_id), _("Withdraw"))
        withdraw_upload(session, current_user(), contribution_id)
        return _("Upload %(id)s is withdrawn.", id=contribution_id)

    form_action(session, withdraw)
    return redirect(url_for("research.contributions_page"))


@bp.post("/api/research/contributions")
@require_roles(Role.CONTRIBUTOR)
def upload_api() -> ResponseReturnValue:
    """multipart/form-data: `files` (the study's DICOM files), `labels` (a JSON list, optional),
    `consent_reference`."""
    contribution = _upload(_labels_of(request.form.get("labels", "")), request.form.get("consent_reference", ""))
    return jsonify(upload_json(contribution)), 201


@bp.get("/api/research/contributions")
@require_roles(Role.CONTRIBUTOR)
def uploads_api() -> ResponseReturnValue:
    return jsonify([upload_json(c) for c in contributions_of(request_session(), current_user())])


@bp.post("/api/research/contributions/<int:contribution_id>/withdraw")
@require_roles(Role.CONTRIBUTOR)
def withdraw_api(contribution_id: int) -> ResponseReturnValue:
    return jsonify(upload_json(withdraw_upload(request_session(), current_user(), contribution_id)))
