"""The Storage page (`/admin/storage`): how full the storage volumes are, what each centre's
studies take, the retention rules per data class, legal holds, and a preview of what the next
retention run would delete. The rules and holds live in `hospital.retention`; this page parses
the forms, calls it, and shows the outcome."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Flask, current_app, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.metrics import STORAGE_VOLUMES
from hospital.models import Role
from hospital.retention import (
    CLASS_LABELS,
    MAX_KEEP_DAYS,
    DataClass,
    active_holds,
    parse_data_class,
    patient_id_by_mrn,
    place_hold,
    release_hold,
    remove_rule,
    rules,
    run_retention,
    set_rule,
    storage_usage,
)
from hospital.web import add_nav_link, ask_first, form_action

logger = logging.getLogger(__name__)

bp = Blueprint("retention", __name__, template_folder="templates")


@dataclass(frozen=True)
class VolumeFigures:
    name: str
    directory: str
    size_bytes: int | None  # None: the directory cannot be read
    free_bytes: int | None

    @property
    def free_share(self) -> float | None:
        return None if not self.size_bytes or self.free_bytes is None else self.free_bytes / self.size_bytes


def _volumes(app: Flask) -> list[VolumeFigures]:
    figures = []
    for name, key in STORAGE_VOLUMES.items():
        try:
            usage = shutil.disk_usage(app.config[key])
            figures.append(VolumeFigures(name, str(app.config[key]), usage.total, usage.free))
        except (OSError, KeyError, TypeError):
            figures.append(VolumeFigures(name, str(app.config.get(key, "")), None, None))
    return figures


def _keep_days(raw: str, data_class: DataClass) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise InvalidInput(_("keep days for %(data_class)s is a whole number of days, not %(value)s",
                             data_class=data_class.value, value=repr(raw[:20])))
    return int(raw)


@bp.route("/admin/storage", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def storage_page() -> ResponseReturnValue:
    session = request_session()
    admin = current_user()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    form = request.form
    if request.method == "POST":
        action = form.get("action", "")

        def save_rule() -> str:
            data_class = parse_data_class(form.get("data_class", ""))
            keep = _keep_days(form.get("keep_days", ""), data_class)
            existing = rules(session).get(data_class)
            if keep is None:
                if existing is None:
                    return _("%(data_class)s is kept for ever (no rule).", data_class=data_class.value)
                remove_rule(session, admin, data_class)
                return _("%(data_class)s is kept for ever now: the retention run leaves it alone.",
                         data_class=data_class.value)
            if existing is None or keep < existing.keep_days:
                ask_first(_("Keep %(data_class)s for %(num)d days? The next retention run deletes what is older and "
                            "not on legal hold, and that cannot be undone.", data_class=data_class.value, num=keep),
                          _("Keep %(num)d days", num=keep))
            set_rule(session, admin, data_class, keep)
            return _("%(data_class)s is kept %(num)d days.", data_class=data_class.value, num=keep)

        def hold() -> str:
            mrn = form.get("mrn", "").strip()
            placed = place_hold(session, admin, reason=form.get("reason", ""),
                                patient_id=patient_id_by_mrn(session, mrn) if mrn else None,
                                study_instance_uid=form.get("study_instance_uid", ""))
            return _("Legal hold %(id)s placed: nothing of it is deleted until it is released.", id=placed.id)

        def release() -> str:
            hold_id = form.get("hold_id", type=int)
            if hold_id is None:
                raise InvalidInput(_("Choose the legal hold to release."))
            ask_first(_("Release legal hold %(id)s? What it kept becomes subject to the retention rules again.",
                        id=hold_id), _("Release the hold"))
            release_hold(session, admin, hold_id)
            return _("Legal hold %(id)s released.", id=hold_id)

        actions = {"rule": save_rule, "hold": hold, "release": release}
        if action not in actions:
            raise InvalidInput(_("unknown action %(action)s", action=repr(action[:40])))
        if form_action(session, actions[action]):
            return redirect(url_for("retention.storage_page"))
    preview = run_retention(app, session, dry_run=True) if request.args.get("preview") == "1" else None
    record_access(session, admin, "R", "StorageSettings", None, description="storage and retention page")
    page = render_template(
        "admin/storage.html", volumes=_volumes(app), usage=storage_usage(app, session), rules=rules(session),
        classes=list(DataClass), labels=CLASS_LABELS, holds=active_holds(session), preview=preview,
        max_keep_days=MAX_KEEP_DAYS, values=form, audit_archive=Path(app.config["AUDIT_ARCHIVE_DIR"]),
    )
    return page, 422 if request.method == "POST" else 200


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    add_nav_link(app, _l("Storage"), "retention.storage_page", Role.ADMIN)
