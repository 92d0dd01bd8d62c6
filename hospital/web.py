"""Core pages: sign in, sign out, change one's own password, and a home page that shows each role
its own work.

A user whose password an administrator set (`User.must_change_password`) is sent to the password
page after signing in, and every other page sends them back there until it is changed; the JSON
APIs answer 403 meanwhile (and `POST /api/auth/token` issues no token), so a temporary password
works for nothing but choosing a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from babel import Locale, UnknownLocaleError
from flask import Blueprint, Flask, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from hospital import clock, i18n
from hospital.auth import (
    authenticate,
    current_user,
    end_browser_session,
    load_current_user,
    renew_browser_session,
    require_roles,
    start_browser_session,
)
from hospital.db import complete_request_work, request_session
from hospital.errors import DomainError, Forbidden, InvalidInput, Unauthenticated
from hospital.i18n import gettext
from hospital.models import Role, User
from hospital.users import MIN_PASSWORD_LENGTH, PASSWORD_CHANGE_REQUIRED, change_own_password

logger = logging.getLogger(__name__)

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

# What a user who must change their password may still reach: the change itself, signing in and
# out, and what needs no user at all.
PASSWORD_CHANGE_EXEMPT = frozenset({
    "web.change_password_page", "web.login", "web.logout", "web.health", "web.static", "web.favicon", "static",
    "web.choose_language",
})
# Machine clients get a problem document, not a redirect to a page they cannot fill in.
API_PREFIXES = ("/api", "/fhir", "/dicomweb", "/wado")


# How many new things wait behind a menu link for a user (unread messages, notifications): shown as
# a badge on the link on every page. Called once per page view per link, so keep it one query.
BadgeCount = Callable[[Session, User], int]


@dataclass(frozen=True)
class NavLink:
    label: str  # a lazy gettext string: it is translated when the page is drawn, in the reader's language
    endpoint: str
    roles: frozenset[Role]
    badge: BadgeCount | None = None


def add_nav_link(app: Flask, label: str, endpoint: str, *roles: Role, badge: BadgeCount | None = None) -> None:
    app.extensions.setdefault("hospital.nav", []).append(NavLink(label, endpoint, frozenset(roles), badge))


class ConfirmationNeeded(Exception):
    """An irreversible page action stopped before it acted: the user has not yet agreed to
    `question`. Raised by `ask_first` inside a `form_action`, answered by a page of its own."""

    def __init__(self, question: str, button: str) -> None:
        super().__init__(question)
        self.question = question
        self.button = button


def ask_first(question: str, button: str) -> None:
    """Inside a form action, just before the step that cannot be undone (after what was typed has
    been read, so the question names real values): go on only if the user has agreed.

    Browsers with scripts ask with a dialog (`data-confirm`, static/js/confirm_actions.js), which
    then sends `confirmed=yes`. Without that, the action's savepoint is rolled back and the same form
    comes back on a page of its own that asks `question`: nothing irreversible happens on one click,
    whatever the browser runs."""
    if request.form.get("confirmed") != "yes":
        raise ConfirmationNeeded(question, button)


@bp.app_errorhandler(ConfirmationNeeded)
def confirmation_page(exc: ConfirmationNeeded) -> ResponseReturnValue:
    """The question, and the form as it was sent, ready to be sent again agreed (or abandoned).
    What the request read is kept (its audit records); the action itself was rolled back."""
    complete_request_work()
    fields = [(name, value) for name, value in request.form.items(multi=True)
              if name not in ("csrf_token", "confirmed")]
    page = render_template("confirm.html", question=exc.question, button=exc.button, fields=fields,
                           action=request.path, back=request.full_path.rstrip("?"))
    # The form may carry what was typed (a temporary password): not for any cache.
    return page, 200, {"Cache-Control": "no-store"}


def form_action(session: Session, action: Callable[[], str]) -> bool:
    """Run one page form's service call in a savepoint: on success flash the message it returns
    (the request's unit of work commits it); on a domain error undo just the action and flash the
    error (the page is shown again with what was typed, nothing half-written). An action that asks
    first (`ask_first`) and is not yet agreed to ends the request with the question."""
    try:
        with session.begin_nested():
            message = action()
    except DomainError as exc:
        flash(exc.message, "error")
        return False
    flash(message)
    return True


def request_locales() -> list[Locale]:
    """The locales the browser says its user reads (Accept-Language, best first), then English (the
    pages' own language) as the last resort: for reading numbers and dates as the user types them."""
    locales: list[Locale] = []
    for tag, _quality in request.accept_languages:
        try:
            locale = Locale.parse(tag.replace("-", "_"))
        except (UnknownLocaleError, ValueError):
            continue
        if locale not in locales:
            locales.append(locale)
    english = Locale.parse("en")
    return locales if english in locales else [*locales, english]


@bp.app_template_filter("local_time")
def local_time(instant: datetime | None, zone_name: str | None, fmt: str = "%a %d %b %Y %H:%M") -> str:
    """`instant` on the wall clock of `zone_name`, with the zone's abbreviation when a time of day
    is shown ("08:00 CET"): people read an appointment's time as the clock where it happens shows it."""
    if instant is None:
        return "—"
    local = instant.astimezone(clock.zone(zone_name))
    return f"{local.strftime(fmt)} {local.tzname()}" if "%H" in fmt else local.strftime(fmt)


@bp.app_context_processor
def _inject_user() -> dict[str, object]:
    try:
        user = load_current_user()
    except Unauthenticated:
        user = None
    # No links while the password must be changed: each would only lead back to the password page.
    links = [
        link for link in current_app.extensions.get("hospital.nav", [])
        if user is not None and not user.must_change_password and (not link.roles or user.role in link.roles)
    ]
    badges = {
        link.endpoint: link.badge(request_session(), user)
        for link in links if link.badge is not None and user is not None
    }
    return {
        "current_user": user, "nav_links": links, "nav_badges": badges, "reader_timezone": reader_timezone(user),
        "user_display_name": i18n.user_display_name(user) if user is not None else "",
    }


def reader_timezone(user: User | None) -> str | None:
    """The zone a reader's own clock shows: their own zone when set, else a patient's home zone,
    staff's organisation's zone."""
    if user is None:
        return None
    if user.timezone:
        return user.timezone
    if user.patient is not None:
        return user.patient.timezone
    return user.organization.timezone if user.organization is not None else None


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    error = None
    if request.method == "POST":
        db_session = request_session()
        try:
            user = authenticate(db_session, request.form.get("username", ""), request.form.get("password", ""))
        except Unauthenticated:
            # The page answers 401; the unit of work keeps the failure count. Every failure reads
            # the same (auth.SIGN_IN_FAILED, which the API answers in English), here in the reader's language.
            error = gettext("unknown username or wrong password, or too many attempts; try again in a few minutes")
        else:
            start_browser_session(db_session, user)
            if user.must_change_password:
                logger.info("user %s signed in with a temporary password", user.id)
                flash(gettext("Your password was set by an administrator. Choose your own password to continue."))
                return redirect(url_for("web.change_password_page"))
            return redirect(same_site_path(request.args.get("next")) or url_for("web.home"))
    return render_template("login.html", error=error), 401 if error else 200


def same_site_path(target: str | None) -> str | None:
    """`target` as a path on this site, or None: a crafted `next=` must not bounce a user to another
    site. Browsers drop tabs and newlines inside a URL and read a backslash as a slash, so
    `/%09/evil.example` (a tab) and `/\\evil.example` both mean `//evil.example`; normalise the way they
    do, then accept only a path with no scheme and no host."""
    if not target:
        return None
    cleaned = "".join(ch for ch in target if ch.isprintable() and not ch.isspace()).replace("\\", "/")
    parts = urlsplit(cleaned)
    if parts.scheme or parts.netloc or not cleaned.startswith("/") or cleaned.startswith("//"):
        return None
    return cleaned


@bp.post("/language")
def choose_language() -> ResponseReturnValue:
    """The language switch every page shows: saved on the account of a signed-in user (so mail and
    PDFs made for them later use it too) and in a cookie for whoever uses this browser, signed in or
    not. Back to the page the switch was on."""
    chosen = i18n.normalise(request.form.get("locale"))
    if chosen is None:
        raise InvalidInput(gettext("Choose one of the languages offered."))
    user = load_current_user()
    if user is not None:
        user.locale = chosen
        request_session().flush()
        i18n.refresh()
        logger.info("user %s reads %s", user.id, chosen)
    response = redirect(same_site_path(request.form.get("next")) or url_for("web.home"))
    response.set_cookie(i18n.LOCALE_COOKIE, chosen, max_age=365 * 24 * 3600, samesite="Lax",
                        secure=request.is_secure, httponly=True)
    return response


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    end_browser_session(request_session())
    return redirect(url_for("web.login"))


@bp.before_app_request
def _require_password_change() -> ResponseReturnValue | None:
    """Hold a user with a temporary password at the password page (see the module docstring)."""
    if request.endpoint is None or request.endpoint in PASSWORD_CHANGE_EXEMPT:
        return None
    try:
        user = load_current_user()
    except Unauthenticated:
        return None  # a malformed Authorization header: the route's own check answers it
    if user is None or not user.must_change_password:
        return None
    if request.path.startswith(API_PREFIXES):
        raise Forbidden(PASSWORD_CHANGE_REQUIRED)
    return redirect(url_for("web.change_password_page"))


@bp.route("/account/password", methods=["GET", "POST"])
@require_roles()
def change_password_page() -> ResponseReturnValue:
    """Any signed-in user changes their own password: current, new, and the new one again."""
    db_session = request_session()
    user = current_user()
    if request.method == "POST":
        form = request.form

        def change() -> str:
            change_own_password(db_session, user, form.get("current_password", ""), form.get("new_password", ""),
                                form.get("confirm_password", ""))
            return gettext("Your password is changed.")

        if form_action(db_session, change):
            # The change ended every session of the user's (whoever knew the old password may hold
            # one); this browser carries on under a new session id.
            renew_browser_session(db_session, user)
            return redirect(url_for("web.home"))
    page = render_template("account_password.html", user=user, min_length=MIN_PASSWORD_LENGTH)
    return page, 422 if request.method == "POST" else 200


@bp.get("/")
def home() -> ResponseReturnValue:
    user = load_current_user()
    if user is None:
        return redirect(url_for("web.login"))
    return render_template("home.html", user=user)


@bp.get("/favicon.ico")
def favicon() -> ResponseReturnValue:
    """Browsers and bookmarking tools ask for this path whatever the page names."""
    return redirect(url_for("web.static", filename="favicon.svg"), code=301)


@bp.get("/healthz")
def health() -> ResponseReturnValue:
    return {"status": "ok"}
