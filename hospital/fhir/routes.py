"""FHIR REST routes: `GET /fhir/metadata`, read and search for every registered type.

Every interaction is authorised by role and patient compartment and audited.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, json, request
from sqlalchemy import func, select

from hospital.access import ensure_patient_access, ensure_patient_record_access, patient_filter
from hospital.audit import record_access, record_denied
from hospital.auth import current_user
from hospital.clock import utcnow
from hospital.db import request_session
from hospital.errors import Forbidden, InvalidInput, NotFound
from hospital.fhir.outcome import FHIR_JSON
from hospital.fhir.registry import FhirValidationError, ResourceMapping, fhir_registry, validate_resource
from hospital.models import User

logger = logging.getLogger(__name__)

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

FHIR_VERSION = "4.0.1"
RESULT_PARAMS = {"_count", "_page", "_format"}
DEFAULT_COUNT = 50
MAX_COUNT = 500


def fhir_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON, headers=headers)


def render_resource(mapping: ResourceMapping, row: Any) -> dict[str, Any]:
    data = mapping.to_fhir(row)
    try:
        return validate_resource(data)
    except FhirValidationError:
        logger.exception("our own %s/%s failed FHIR validation", mapping.type_name, getattr(row, "id", "?"))
        raise


@bp.get("/metadata")
def capability_statement() -> Response:
    resources = []
    for mapping in sorted(fhir_registry().mappings.values(), key=lambda m: m.type_name):
        resources.append(
            {
                "type": mapping.type_name,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": name, "type": param.type, "documentation": param.documentation or None}
                    for name, param in sorted(mapping.search_params.items())
                ],
            }
        )
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": utcnow().isoformat(),
        "kind": "instance",
        "software": {"name": "closed-loop-hospital", "version": "0.1.0"},
        "implementation": {"description": "Closed-loop imaging internet hospital", "url": request.url_root + "fhir"},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"}]}],
                    "description": "Bearer tokens from POST /api/auth/token",
                },
                "resource": resources,
            }
        ],
    }
    return fhir_response(validate_resource(statement))


def _ensure_role_may_read(mapping: ResourceMapping, user: User, resource_id: str | None) -> None:
    """Some types are closed to whole roles (the audit trail is for administrators)."""
    if not mapping.readable_by(user.role):
        action = "R" if resource_id is not None else "E"
        record_denied(user, action, mapping.type_name, resource_id, f"role {user.role.value} may not read {mapping.type_name}")
        raise Forbidden(f"{mapping.type_name} is not available to the {user.role.value} role")


def _mapping_or_404(type_name: str) -> ResourceMapping:
    mapping = fhir_registry().get(type_name)
    if mapping is None:
        raise NotFound(f"resource type {type_name!r} is not supported here")
    return mapping


@bp.get("/<type_name>/<resource_id>")
def read(type_name: str, resource_id: str) -> Response:
    mapping = _mapping_or_404(type_name)
    user = current_user()
    _ensure_role_may_read(mapping, user, resource_id)
    session = request_session()
    row = session.get(mapping.model, int(resource_id)) if resource_id.isdigit() else None
    if row is None:
        raise NotFound(f"{type_name}/{resource_id} does not exist")
    patient_id = mapping.patient_id_of(row)
    if mapping.patient_column is not None:
        ensure_patient_record_access(session, user, patient_id, type_name, resource_id)
    else:
        ensure_patient_access(session, user, patient_id, type_name, resource_id)
    body = render_resource(mapping, row)
    record_access(session, user, "R", type_name, resource_id, patient_id=patient_id)
    session.commit()
    return fhir_response(body)


@bp.get("/<type_name>")
def search(type_name: str) -> Response:
    mapping = _mapping_or_404(type_name)
    user = current_user()
    _ensure_role_may_read(mapping, user, None)
    session = request_session()
    clauses = []
    for name in request.args:
        if name in RESULT_PARAMS:
            continue
        param = mapping.search_params.get(name)
        if param is None:
            raise InvalidInput(f"unknown search parameter {name!r} for {type_name}")
        for value in request.args.getlist(name):
            try:
                clauses.append(param.clause(value))
            except ValueError as exc:
                raise InvalidInput(f"bad value for {name}: {exc}") from exc
    if mapping.patient_column is not None:
        clauses.append(patient_filter(user, mapping.patient_column))
    count = _int_arg("_count", DEFAULT_COUNT, 0, MAX_COUNT)
    page = _int_arg("_page", 1, 1, 10**9)

    pk = mapping.model.__mapper__.primary_key[0]  # type: ignore[attr-defined]
    total = session.scalar(select(func.count()).select_from(mapping.model).where(*clauses)) or 0
    rows = session.scalars(
        select(mapping.model).where(*clauses).order_by(pk).limit(count).offset((page - 1) * count)
    ).all()
    base = request.base_url
    entries = []
    for row in rows:
        entries.append(
            {
                "fullUrl": f"{request.url_root}fhir/{type_name}/{row.id}",
                "resource": render_resource(mapping, row),
                "search": {"mode": "match"},
            }
        )
    links = [{"relation": "self", "url": _page_url(base, page)}]
    if page * count < total:
        links.append({"relation": "next", "url": _page_url(base, page + 1)})
    if page > 1:
        links.append({"relation": "previous", "url": _page_url(base, page - 1)})
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}
    record_access(
        session, user, "E", type_name, None, description=f"search {request.query_string.decode()[:500]}",
        patient_id=next((mapping.patient_id_of(r) for r in rows), None) if len({mapping.patient_id_of(r) for r in rows}) == 1 else None,
    )
    session.commit()
    return fhir_response(validate_resource(bundle))


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be an integer, got {raw!r}") from exc
    return max(low, min(high, value))


def _page_url(base: str, page: int) -> str:
    args = [(k, v) for k in request.args for v in request.args.getlist(k) if k != "_page"]
    args.append(("_page", str(page)))
    return f"{base}?{urlencode(args)}"
