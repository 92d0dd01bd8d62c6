"""Core pages: sign in, sign out, and a home page that shows each role its own work."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, Flask, current_app, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from hospital.auth import authenticate, load_current_user
from hospital.db import request_session
from hospital.errors import DomainError, Unauthenticated
from hospital.models import Role

logger = logging.getLogger(__name__)

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")


@dataclass(frozen=True)
class NavLink:
    label: str
    endpoint: str
    roles: frozenset[Role]


def add_nav_link(app: Flask, label: str, endpoint: str, *roles: Role) -> None:
    app.extensions.setdefault("hospital.nav", []).append(NavLink(label, endpoint, frozenset(roles)))


def form_action(session: Session, action: Callable[[], str]) -> bool:
    """Run one page form's service call: on success commit and flash the message it returns; on a
    domain error roll back and flash the error (the page is shown again, nothing half-written)."""
    try:
        message = action()
    except DomainError as exc:
        session.rollback()
        flash(exc.message, "error")
        return False
    session.commit()
    flash(message)
    return True


@bp.app_context_processor
def _inject_user() -> dict[str, object]:
    try:
        user = load_current_user()
    except Unauthenticated:
        user = None
    links = [
        link for link in current_app.extensions.get("hospital.nav", [])
        if user is not None and (not link.roles or user.role in link.roles)
    ]
    return {"current_user": user, "nav_links": links}


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    error = None
    if request.method == "POST":
        db_session = request_session()
        try:
            user = authenticate(db_session, request.form.get("username", ""), request.form.get("password", ""))
        except Unauthenticated as exc:
            db_session.commit()
            error = exc.message
        else:
            db_session.commit()
            session.clear()
            session["user_id"] = user.id
            target = request.args.get("next") or url_for("web.home")
            # Only same-site paths, so a crafted link cannot bounce a user to another site.
            if not target.startswith("/") or target.startswith("//"):
                target = url_for("web.home")
            return redirect(target)
    return render_template("login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("web.login"))


@bp.get("/")
def home() -> ResponseReturnValue:
    user = load_current_user()
    if user is None:
        return redirect(url_for("web.login"))
    return render_template("home.html", user=user)


@bp.get("/healthz")
def health() -> ResponseReturnValue:
    return {"status": "ok"}
