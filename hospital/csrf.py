"""CSRF protection for cookie-authenticated requests.

A browser that holds our session cookie could be tricked into posting a form from another site;
such requests must carry the per-session token. Bearer-token API calls cannot be forged that way
(the browser does not attach the token), so they are exempt.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from flask import Flask, request, session

from hospital.errors import Forbidden
from hospital.i18n import gettext as _

logger = logging.getLogger(__name__)

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def csrf_token() -> str:
    token = session.get("csrf_token")
    if token is None:
        token = secrets.token_urlsafe(32)
        session["csrf_token"] = token
    return token


def init_app(app: Flask) -> None:
    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.before_request
    def _check_csrf() -> None:
        if request.method not in UNSAFE_METHODS or request.headers.get("Authorization"):
            return
        if request.path.startswith(("/api/auth/token", "/oauth/token", "/oauth/revoke")):
            return  # exchanging a password, code or assertion for a token carries no cookie authority
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
        expected = session.get("csrf_token") or ""
        if not expected or not hmac.compare_digest(sent, expected):
            raise Forbidden(_("the form has expired or did not come from this site; reload the page and try again"))
