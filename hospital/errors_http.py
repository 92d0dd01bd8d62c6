"""Turns errors into what the caller can read: an OperationOutcome under /fhir, an RFC 9457
problem document under /api and /dicomweb, an error page elsewhere. Never a stack trace."""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, Response, json, redirect, render_template, request, url_for
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from werkzeug.exceptions import HTTPException

from hospital.db import abandon_request_work
from hospital.errors import DomainError, Unauthenticated
from hospital.fhir.outcome import FHIR_JSON, operation_outcome
from hospital.ratelimit import RateLimited

logger = logging.getLogger(__name__)

_HTTP_TO_FHIR_CODE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                      409: "conflict", 412: "conflict", 413: "too-long", 415: "not-supported", 422: "processing"}


def error_response(status: int, message: str, code: str | None = None) -> Response:
    fhir_code = code or _HTTP_TO_FHIR_CODE.get(status, "exception")
    if request.path.startswith("/fhir"):
        body = json.dumps(operation_outcome(message, code=fhir_code))
        return Response(body, status=status, mimetype=FHIR_JSON)
    if request.path.startswith(("/api", "/dicomweb")) or request.accept_mimetypes.best == "application/json":
        body = json.dumps({"type": "about:blank", "title": _title(status), "status": status, "detail": message})
        return Response(body, status=status, mimetype="application/problem+json")
    if status == 401:
        return redirect(url_for("web.login", next=request.full_path))  # type: ignore[return-value]
    html = render_template("error.html", status=status, title=_title(status), message=message)
    return Response(html, status=status, mimetype="text/html")


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
        response = error_response(exc.status, exc.message, exc.code)
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
        return error_response(400, "a value is out of range, too long or contains characters that cannot be stored")

    @app.errorhandler(IntegrityError)
    def _integrity_error(exc: IntegrityError) -> Response:
        logger.warning("constraint refused a change on %s %s: %s", request.method, request.path, type(exc.orig).__name__)
        return error_response(409, "the request conflicts with existing records or refers to one that does not exist")

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
