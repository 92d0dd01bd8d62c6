"""Turns errors into what the caller can read: an OperationOutcome under /fhir, an RFC 9457
problem document under /api and /dicomweb, an error page elsewhere. Never a stack trace.

The machine answers stay English (integrators search for them). The page speaks its reader's
language in plain words: a refused record says it is not theirs to see and what they can do, not
which FHIR resource type was refused; a missing page or a failure on our side says so without the
server's wording. Staff get the machine message as a detail they can quote to the help desk.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from urllib.parse import urlsplit

from flask import Flask, Response, json, redirect, render_template, request, url_for
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from werkzeug.exceptions import HTTPException

from hospital.auth import load_current_user
from hospital.db import abandon_request_work
from hospital.errors import AccessDenied, DomainError, Unauthenticated
from hospital.fhir.outcome import FHIR_JSON, operation_outcome
from hospital.i18n import lazy_gettext as _l
from hospital.models import Role
from hospital.ratelimit import RateLimited

logger = logging.getLogger(__name__)

_HTTP_TO_FHIR_CODE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                      409: "conflict", 412: "conflict", 413: "too-long", 415: "not-supported", 422: "processing"}


def error_response(
    status: int, message: str, code: str | None = None, *, page_message: object | None = None,
    access_denied: bool = False,
) -> Response:
    """The error in the caller's form. `message` is the machine answer (English); `page_message`,
    when given, is what a person reads on the page instead: a lazy gettext string, translated only
    when a page is drawn (choosing the language may read the database, which a failed commit has
    left unusable until the request ends; a JSON answer never needs it). `access_denied`: the
    refusal is the access policy's (the record is someone else's, or not for the role), which the
    page explains in plain words rather than with `message`."""
    fhir_code = code or _HTTP_TO_FHIR_CODE.get(status, "exception")
    if request.path.startswith("/fhir"):
        body = json.dumps(operation_outcome(message, code=fhir_code))
        return Response(body, status=status, mimetype=FHIR_JSON)
    if request.path.startswith(("/api", "/dicomweb")) or request.accept_mimetypes.best == "application/json":
        body = json.dumps({"type": "about:blank", "title": _title(status), "status": status, "detail": message})
        return Response(body, status=status, mimetype="application/problem+json")
    if status == 401:
        return redirect(url_for("web.login", next=request.full_path))  # type: ignore[return-value]
    return Response(_error_page(status, message, page_message, access_denied), status=status, mimetype="text/html")


def _error_page(status: int, message: str, page_message: object | None, access_denied: bool) -> str:
    # What the page says is chosen by the kind of error (error.html); a message written for people
    # (a form's refusal, already in their language) is shown as it is, the machine's wording only
    # to staff, as a detail to quote.
    kind = "not_yours" if access_denied else "not_found" if status == 404 else (
        "busy" if status == 503 else "failure" if status >= 500 else "refused")
    try:
        reader = load_current_user()
    except Unauthenticated:
        reader = None
    shown = page_message if page_message is not None else message if kind == "refused" else None
    detail = message if reader is not None and reader.role is not Role.PATIENT and shown != message else None
    return render_template("error.html", status=status, kind=kind, message=shown, detail=detail,
                           back=_previous_page(), reader_is_patient=reader is not None and reader.role is Role.PATIENT)


def _previous_page() -> str | None:
    """The page the reader came from on this site (not this one), for a "go back" link: a page
    that refuses a link must not strand its reader."""
    referrer = request.referrer
    if not referrer:
        return None
    parts = urlsplit(referrer)
    if parts.netloc != request.host or not parts.path.startswith("/") or parts.path == request.path:
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def init_app(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain_error(exc: DomainError) -> Response:
        if isinstance(exc, Unauthenticated):
            logger.info("unauthenticated request to %s: %s", request.path, exc.message)
        abandon_request_work()  # nothing of a refused request is kept but the record that it was refused
        # A page says how long to wait in its reader's words; the API's answer keeps the machine's.
        waiting = _l("Too many attempts. Please wait %(seconds)d seconds and try again.",
                     seconds=exc.retry_after) if isinstance(exc, RateLimited) else None
        response = error_response(exc.status, exc.message, exc.code,
                                  page_message=waiting or (exc.message if exc.for_people else None),
                                  access_denied=isinstance(exc, AccessDenied))
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(DataError)
    def _data_error(exc: DataError) -> Response:
        # The caller's value got past validation but not past the column: out of range, too long,
        # a NUL byte. Their mistake, not an outage; the message names no value (it may be PHI).
        logger.warning("database refused a value on %s %s: %s", request.method, request.path, type(exc.orig).__name__)
        return error_response(400, "a value is out of range, too long or contains characters that cannot be stored",
                              page_message=_l("A value you entered is out of range, too long, or contains "
                                              "characters that cannot be stored. Please check it and try again."))

    @app.errorhandler(IntegrityError)
    def _integrity_error(exc: IntegrityError) -> Response:
        logger.warning("constraint refused a change on %s %s: %s", request.method, request.path, type(exc.orig).__name__)
        return error_response(409, "the request conflicts with existing records or refers to one that does not exist",
                              page_message=_l("This clashes with what is already recorded, or refers to "
                                              "something that no longer exists. Reload the page and try again."))

    @app.errorhandler(SQLAlchemyError)
    def _database_error(exc: SQLAlchemyError) -> Response:
        logger.exception("database error on %s %s", request.method, request.path)
        return error_response(503, "the database could not complete the request; try again shortly", "transient")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "an internal error occurred; it has been logged", "exception")

    @app.after_request
    def _security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"
        )
        if request.path.startswith(("/api", "/fhir")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response
