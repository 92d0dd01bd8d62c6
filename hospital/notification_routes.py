"""The notification centre's edges (rules in `hospital.notifications`): the page `/notifications`
(every role; its menu link carries the unread count), opening one (`/notifications/<id>`: marked
read, then on to the thing it is about), marking one or all read, and the same list as JSON at
`GET /api/notifications` for the phone app. A reader sees only their own notifications."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, jsonify, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from hospital import i18n, notifications
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.i18n import lazy_gettext as _l
from hospital.notifications import ShownNotification, mark_all_read, mark_read, notifications_of, show, unread_count
from hospital.web import add_nav_link

logger = logging.getLogger(__name__)

bp = Blueprint("notifications", __name__, template_folder="templates")


def notification_json(shown: ShownNotification) -> dict[str, Any]:
    return {"id": shown.id, "kind": shown.kind, "title": shown.title, "body": shown.body, "link": shown.path,
            "created_at": shown.created_at.isoformat(), "read": shown.read}


@bp.get("/notifications")
@require_roles()
def notifications_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    shown = [show(n) for n in notifications_of(session, user)]
    return render_template("notifications.html", notifications=shown, local_datetime=i18n.local_datetime,
                           unread=sum(1 for n in shown if not n.read))


@bp.get("/api/notifications")
@require_roles()
def notifications_api() -> ResponseReturnValue:
    """The reader's notifications, newest first, worded in their language, and the unread count."""
    session = request_session()
    user = current_user()
    return jsonify({"unread": unread_count(session, user),
                    "notifications": [notification_json(show(n)) for n in notifications_of(session, user)]})


@bp.get("/notifications/<int:notification_id>")
@require_roles()
def open_notification(notification_id: int) -> ResponseReturnValue:
    """Follow a notification (from the list or a mail's link): it counts as read, and the reader
    lands on what it is about, whose own page checks they may see it. A GET that marks read, as
    every mail client's does: nothing is lost if a link checker follows it."""
    notification = mark_read(request_session(), current_user(), notification_id)
    return redirect(notifications.target_path(notification))


@bp.post("/notifications/<int:notification_id>/read")
@require_roles()
def mark_read_page(notification_id: int) -> ResponseReturnValue:
    mark_read(request_session(), current_user(), notification_id)
    return redirect(url_for("notifications.notifications_page"))


@bp.post("/notifications/read")
@require_roles()
def mark_all_read_page() -> ResponseReturnValue:
    mark_all_read(request_session(), current_user())
    return redirect(url_for("notifications.notifications_page"))


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    notifications.init_app(app)
    add_nav_link(app, _l("Notifications"), "notifications.notifications_page", badge=unread_count)
