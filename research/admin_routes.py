"""The research database's page for administrators: dataset versions (with what changed and what
later withdrawals took out), contributions waiting for the next version, data-use agreements (added
and revoked here); making the next version. Exports stay on the command line: they write files on
the server (`hospital research dataset export`)."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.models import Role
from hospital.web import ask_first, form_action
from research import service
from research.storage import dicom_dir, research_dir, research_secret

logger = logging.getLogger(__name__)

bp = Blueprint("research_admin", __name__, template_folder="templates")


@bp.get("/research/admin")
@require_roles(Role.ADMIN)
def research_admin_page() -> ResponseReturnValue:
    return render_template("research/admin.html", overview=service.research_overview(request_session()))


@bp.post("/research/admin/versions")
@require_roles(Role.ADMIN)
def create_version_page() -> ResponseReturnValue:
    session = request_session()
    licence = request.form.get("licence", "").strip()

    def create() -> str:
        if not licence:
            raise InvalidInput(_("a dataset version needs a licence"))
        ask_first(_("Make the next dataset version under %(licence)s? It holds every contribution that may be used "
                    "now and can never be changed.", licence=licence), _("Make the version"))
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        version = service.create_dataset_version(
            session, licence=licence, created_by=current_user().username, dicom_dir=dicom_dir(app),
            research_dir=research_dir(app), secret=research_secret(app), user=current_user(),
        )
        counts = version.manifest["counts"]
        return _("Dataset version %(number)s made: %(studies)s studies, %(instances)s images.",
                 number=version.number, studies=counts["studies"], instances=counts["instances"])

    form_action(session, create)
    return redirect(url_for("research_admin.research_admin_page"))


@bp.post("/research/admin/agreements")
@require_roles(Role.ADMIN)
def add_agreement_page() -> ResponseReturnValue:
    session = request_session()

    def add() -> str:
        try:
            organization_id = int(request.form.get("organization_id", ""))
        except ValueError:
            raise InvalidInput(_("choose the institution")) from None
        agreement = service.add_data_use_agreement(session, organization_id, request.form.get("licence", "").strip(),
                                                   request.form.get("reference", "").strip())
        return _("Data-use agreement %(reference)s recorded.", reference=agreement.reference)

    form_action(session, add)
    return redirect(url_for("research_admin.research_admin_page"))


@bp.post("/research/admin/agreements/<int:agreement_id>/revoke")
@require_roles(Role.ADMIN)
def revoke_agreement_page(agreement_id: int) -> ResponseReturnValue:
    session = request_session()

    def revoke() -> str:
        ask_first(_("Revoke this data-use agreement? Versions holding the institution's images can no longer be "
                    "exported under it."), _("Revoke"))
        agreement = service.revoke_data_use_agreement(session, agreement_id)
        return _("Data-use agreement %(reference)s revoked.", reference=agreement.reference)

    form_action(session, revoke)
    return redirect(url_for("research_admin.research_admin_page"))
