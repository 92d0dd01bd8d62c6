"""Pages of partner model packages: a partner uploads its packages and follows their checks and
decisions; an administrator reads every version and approves, rejects or retires. Every version,
retired or refused, keeps its page."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from ai_services.package_service import (
    approve_package,
    package_for,
    packages_for,
    reject_package,
    retire_package,
    submit_package,
)
from ai_services.wording import PACKAGE_STATUS_WORDS, template_words, word_for
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.models import Role
from hospital.web import ask_first, form_action

logger = logging.getLogger(__name__)

bp = Blueprint("ai_packages", __name__, template_folder="templates")
bp.context_processor(template_words)


@bp.get("/model-packages")
@require_roles(Role.PARTNER, Role.ADMIN)
def packages_page() -> ResponseReturnValue:
    return render_template("ai_services/packages.html", packages=packages_for(request_session(), current_user()))


@bp.post("/model-packages")
@require_roles(Role.PARTNER, Role.ADMIN)
def submit_package_page() -> ResponseReturnValue:
    session = request_session()
    upload = request.files.get("package")

    def submit() -> str:
        if upload is None or not upload.filename:
            raise InvalidInput(_("choose the package's zip file to upload"))
        with tempfile.TemporaryDirectory(prefix="package-upload-") as work:
            path = Path(work) / "package.zip"
            upload.save(path)
            package = submit_package(session, path, current_user(), Path(current_app.config["AI_MODELS_DIR"]))
        return _("%(label)s was received and verified; its checks run next.", label=package.label)

    form_action(session, submit)
    return redirect(url_for("ai_packages.packages_page"))


@bp.get("/model-packages/<int:package_id>")
@require_roles(Role.PARTNER, Role.ADMIN)
def package_page(package_id: int) -> ResponseReturnValue:
    return render_template("ai_services/package.html",
                           package=package_for(request_session(), package_id, current_user()))


@bp.post("/model-packages/<int:package_id>/approve")
@require_roles(Role.ADMIN)
def approve_package_page(package_id: int) -> ResponseReturnValue:
    return _decide(package_id, "approve")


@bp.post("/model-packages/<int:package_id>/reject")
@require_roles(Role.ADMIN)
def reject_package_page(package_id: int) -> ResponseReturnValue:
    return _decide(package_id, "reject")


@bp.post("/model-packages/<int:package_id>/retire")
@require_roles(Role.ADMIN)
def retire_package_page(package_id: int) -> ResponseReturnValue:
    return _decide(package_id, "retire")


def _decide(package_id: int, action: str) -> ResponseReturnValue:
    session = request_session()
    reason = request.form.get("reason", "")

    def decide() -> str:
        package = package_for(session, package_id, current_user())
        questions = {
            "approve": _("Approve %(label)s? Routing rules may then run it on patients' studies.", label=package.label),
            "reject": _("Reject %(label)s? The partner reads your reason; a rejected version cannot be approved later.",
                        label=package.label),
            "retire": _("Retire %(label)s? It stops running for good; it stays readable here.", label=package.label),
        }
        buttons = {"approve": _("Approve"), "reject": _("Reject"), "retire": _("Retire")}
        decide_package = {"approve": approve_package, "reject": reject_package, "retire": retire_package}[action]
        if action == "reject" and not reason.strip():
            raise InvalidInput(_("say why the package is rejected: the partner reads the reason"))
        ask_first(questions[action], buttons[action])
        decided = decide_package(session, package_id, current_user(), reason)
        return _("%(label)s: %(status)s.", label=decided.label, status=word_for(PACKAGE_STATUS_WORDS, decided.status))

    form_action(session, decide)
    return redirect(url_for("ai_packages.package_page", package_id=package_id))
