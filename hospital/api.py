"""Core JSON API: exchange a password for a bearer token, revoke it, and say who I am.

An account whose password an administrator set gets no token (403) until its user has chosen
their own password in the web app at /account/password: a temporary password is for that alone.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, TypeVar

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from hospital.auth import authenticate, current_user, issue_token, revoke_token, token_ttl
from hospital.db import keep_work_despite_refusal, request_session
from hospital.errors import Forbidden, InvalidInput, Unauthenticated
from hospital.users import PASSWORD_CHANGE_REQUIRED

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api")


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a clear 400 (never a 500 on a malformed body)."""
    try:
        data = request.get_json(silent=True)
    except RecursionError as exc:
        raise InvalidInput("the request body is nested too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object")
    return data


def required(data: dict[str, Any], name: str, kind: type | tuple[type, ...] = str) -> Any:
    value = data.get(name)
    if value is None or value == "":
        raise InvalidInput(f"{name} is required")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InvalidInput(f"{name} must be of type {getattr(kind, '__name__', kind)}")
    return value


E = TypeVar("E", bound=enum.Enum)


def enum_value(cls: type[E], value: Any, name: str) -> E:
    """`value` as a member of `cls`, or a clear 400 listing the accepted values."""
    try:
        return cls(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be one of {[m.value for m in cls]}") from exc


def optional_enum_arg(cls: type[E], name: str) -> E | None:
    """A query-string filter such as `?status=active`; absent means no filter."""
    value = request.args.get(name)
    return enum_value(cls, value, name) if value else None


@bp.post("/auth/token")
def create_token() -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    try:
        user = authenticate(session, required(data, "username"), required(data, "password"))
    except Unauthenticated:
        keep_work_despite_refusal()  # keep the failed-login count
        raise
    if user.must_change_password:
        keep_work_despite_refusal()  # the password was right: keep the cleared failed-login count
        raise Forbidden(PASSWORD_CHANGE_REQUIRED)
    plain, token = issue_token(session, user, token_ttl())
    return jsonify(access_token=plain, token_type="Bearer", expires_in=token_ttl(), role=user.role.value), 201


@bp.post("/auth/revoke")
def revoke() -> ResponseReturnValue:
    current_user()
    header = request.headers.get("Authorization", "")
    session = request_session()
    revoke_token(session, header.partition(" ")[2].strip())
    return "", 204


@bp.get("/me")
def me() -> ResponseReturnValue:
    user = current_user()
    return jsonify(
        id=user.id, username=user.username, role=user.role.value, patient_id=user.patient_id,
        practitioner_id=user.practitioner_id, organization_id=user.organization_id,
    )
