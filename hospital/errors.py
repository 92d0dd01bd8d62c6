"""Typed domain errors. Services raise them; the edges turn them into an HTTP problem, a FHIR
OperationOutcome, a DICOM status or a page. Never a stack trace to a user."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a user may be told about. `status` is the HTTP status it maps to."""

    status: int = 400
    code: str = "invalid"  # FHIR issue-type code

    def __init__(self, message: str, *, for_people: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # Written for the person reading the page (translated, no record types or ids of ours): an
        # error page shows it whatever its status; otherwise a 404/403/5xx page says it in its own
        # plain words and the message goes to staff as a detail (hospital.errors_http).
        self.for_people = for_people


class InvalidInput(DomainError):
    status = 400
    code = "invalid"


class Unauthenticated(DomainError):
    status = 401
    code = "login"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class AccessDenied(Forbidden):
    """The record belongs to a patient outside the caller's care, or the caller's role may not see
    it. The message names the record type for integrators and the audit; a page shows its reader
    plain words instead ("this is not yours to see"), since a patient cannot act on a type name."""


class NotFound(DomainError):
    status = 404
    code = "not-found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class NotAcceptable(DomainError):
    status = 406
    code = "not-supported"


class NotSupported(DomainError):
    status = 405
    code = "not-supported"


class Gone(DomainError):
    status = 410
    code = "deleted"


class PreconditionFailed(DomainError):
    status = 412
    code = "conflict"


class PayloadTooLarge(DomainError):
    status = 413
    code = "too-long"


class UnsupportedMediaType(DomainError):
    status = 415
    code = "not-supported"


class UnprocessableEntity(DomainError):
    status = 422
    code = "processing"
