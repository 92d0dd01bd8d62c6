"""FHIR REST routes: the CapabilityStatement, read, vread, history, search (GET and POST
`_search`), create and update through the stages' services, and transaction/batch Bundles.

Every interaction is authorised by role and patient compartment and audited. Writes go through
each mapping's `create`/`update` handler, which parses the resource (the stage's `from_fhir`) and
calls the same service function the web pages call.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flask import Blueprint, Response, current_app, json, request
from sqlalchemy import select, true
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict
from werkzeug.http import http_date

from hospital.access import ensure_patient_access, ensure_patient_record_access, patient_filter
from hospital.audit import record_access, record_denied
from hospital.auth import current_user
from hospital.clock import utcnow
from hospital.db import request_session
from hospital.errors import DomainError, Forbidden, Gone, InvalidInput, NotFound, NotSupported, PreconditionFailed
from hospital.fhir.outcome import FHIR_JSON, operation_outcome
from hospital.fhir.paging import (
    COUNT_LIMIT,
    CURSOR_PARAM,
    LEGACY_PAGE_PARAM,
    TOTAL_PARAM,
    SortKey,
    bundle_total,
    decode_cursor,
    encode_cursor,
    keyset_page,
    offset_page,
    page_link,
    search_binding,
    total_mode,
)
from hospital.fhir.registry import (
    FhirValidationError,
    ResourceMapping,
    check_own_resource,
    fhir_registry,
    parse_date_search,
    row_id,
    validate_resource,
)
from hospital.fhir.search import (
    DEFAULT_COUNT,
    MAX_COUNT,
    SUMMARY_VALUES,
    include_values,
    parse_search,
    render_resource,
    revinclude_values,
    run_search,
    sortable_params,
)
from hospital.fhir.versions import METHOD_DELETE, current_version, get_version, row_and_version, with_version_meta
from hospital.limits import check_bundle_entries
from hospital.models import ResourceVersion, User

logger = logging.getLogger(__name__)

bp = Blueprint("fhir", __name__, url_prefix="/fhir")

FHIR_VERSION = "4.0.1"
HISTORY_STATUS = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}
ETAG_PATTERN = re.compile(r'^(?:W/)?"?([0-9]+)"?$')
# Bundle entries run in this order (FHIR transaction processing rules).
METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}


def fhir_response(body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body) if body is not None else "", status=status, mimetype=FHIR_JSON, headers=headers)


def fhir_base() -> str:
    return request.url_root + "fhir"


def etag(version: ResourceVersion) -> str:
    return f'W/"{version.version_id}"'


def version_headers(mapping: ResourceMapping, version: ResourceVersion) -> dict[str, str]:
    return {
        "ETag": etag(version),
        "Last-Modified": http_date(version.last_updated),
        "Location": f"{fhir_base()}/{mapping.type_name}/{version.resource_id}/_history/{version.version_id}",
    }


# --- capability ----------------------------------------------------------------------------------


# Base URLs a CapabilityStatement is kept for: the Host header is the caller's to choose, so the
# cache is bounded (past it, a statement is built per request, as before there was a cache).
CAPABILITY_CACHE_SIZE = 8


@bp.get("/metadata")
def capability_statement() -> Response:
    """What this server supports. It depends only on the registered mappings, fixed once the app
    is made, and on the base URL it is reached at: built once per base URL, then served as is."""
    cache: dict[str, bytes] = current_app.extensions.setdefault("hospital.fhir.capability", {})
    base = fhir_base()
    body = cache.get(base)
    if body is None:
        body = json.dumps(_capability_statement()).encode()
        if len(cache) < CAPABILITY_CACHE_SIZE:
            cache[base] = body
    return Response(body, mimetype=FHIR_JSON)


def _capability_statement() -> dict[str, Any]:
    registry = fhir_registry()
    resources = []
    for mapping in sorted(registry.mappings.values(), key=lambda m: m.type_name):
        entry: dict[str, Any] = {
            "type": mapping.type_name,
            "interaction": [{"code": code} for code in mapping.interactions()],
            "versioning": "versioned",
            "readHistory": mapping.append_only_at is None,
            "updateCreate": False,
            "conditionalCreate": mapping.create is not None,
            "searchInclude": include_values(mapping) or None,
            "searchRevInclude": revinclude_values(registry, mapping.type_name) or None,
            "searchParam": [
                {"name": name, "type": param.type, "documentation": param.documentation or None}
                for name, param in sorted(mapping.search_params.items())
            ],
        }
        if mapping.update is not None:
            entry["conditionalUpdate"] = False
        entry["extension"] = [
            {"url": f"{fhir_base()}/StructureDefinition/sortable", "valueString": ",".join(sortable_params(mapping))}
        ]
        resources.append(entry)
    resources.extend(registry.extra_capabilities)
    resources.sort(key=lambda entry: str(entry["type"]))
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": utcnow().isoformat(),
        "kind": "instance",
        "software": {"name": "closed-loop-hospital", "version": "0.1.0"},
        "implementation": {"description": "Closed-loop imaging internet hospital", "url": fhir_base()},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "extension": [{
                        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [
                            {"url": "authorize", "valueUri": f"{request.url_root}oauth/authorize"},
                            {"url": "token", "valueUri": f"{request.url_root}oauth/token"},
                            {"url": "revoke", "valueUri": f"{request.url_root}oauth/revoke"},
                        ],
                    }],
                    "service": [{"coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"},
                        {"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"},
                    ]}],
                    "description": "Bearer tokens from POST /api/auth/token, or from SMART on FHIR "
                                   "(see .well-known/smart-configuration)",
                },
                "resource": resources,
                **({"extension": registry.rest_extensions} if registry.rest_extensions else {}),
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "searchParam": [
                    {"name": "_count", "type": "number", "documentation": f"Page size, default {DEFAULT_COUNT}, at most {MAX_COUNT}; "
                     "pages follow the Bundle's next link (a cursor)"},
                    {"name": "_total", "type": "token", "documentation": "none | estimate | accurate; without it Bundle.total is "
                     f"given when at most {COUNT_LIMIT} resources match"},
                    {"name": "_lastUpdated", "type": "date", "documentation": "When the resource last changed (prefixes ge, le, gt, lt, eq, ne)"},
                    {"name": "_sort", "type": "special", "documentation": "_id, _lastUpdated or a date parameter; '-' for descending"},
                    {"name": "_summary", "type": "token", "documentation": " | ".join(sorted(SUMMARY_VALUES))},
                    {"name": "_include", "type": "special", "documentation": "See each resource's searchInclude"},
                    {"name": "_revinclude", "type": "special", "documentation": "See each resource's searchRevInclude"},
                ],
            }
        ],
    }
    return validate_resource(statement)


# --- shared checks -------------------------------------------------------------------------------


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


def _ensure_record_access(
    session: Session, user: User, mapping: ResourceMapping, patient_id: int | None, resource_id: object, action: str = "R"
) -> None:
    if mapping.patient_column is not None:
        ensure_patient_record_access(session, user, patient_id, mapping.type_name, resource_id, action)
    else:
        ensure_patient_access(session, user, patient_id, mapping.type_name, resource_id, action)


def _load_row(session: Session, mapping: ResourceMapping, resource_id: str) -> Any:
    key = row_id(resource_id)
    row = session.get(mapping.model, key) if key is not None else None
    if row is None:
        raise NotFound(f"{mapping.type_name}/{resource_id} does not exist")
    return row


def _lenient() -> bool:
    return "handling=lenient" in request.headers.get("Prefer", "").replace(" ", "")


# --- read, vread, history ------------------------------------------------------------------------


def read_resource(session: Session, user: User, mapping: ResourceMapping, resource_id: str) -> tuple[dict[str, Any], ResourceVersion]:
    _ensure_role_may_read(mapping, user, resource_id)
    key = row_id(resource_id)
    found = row_and_version(session, mapping, key) if key is not None else None
    if found is None:
        raise NotFound(f"{mapping.type_name}/{resource_id} does not exist")
    row, version = found
    patient_id = mapping.patient_id_of(row)
    _ensure_record_access(session, user, mapping, patient_id, resource_id)
    body = with_version_meta(render_resource(mapping, row), version)
    record_access(session, user, "R", mapping.type_name, resource_id, patient_id=patient_id)
    return body, version


@bp.get("/<type_name>/<resource_id>")
def read(type_name: str, resource_id: str) -> Response:
    mapping = _mapping_or_404(type_name)
    session = request_session()
    body, version = read_resource(session, current_user(), mapping, resource_id)
    headers = version_headers(mapping, version)
    headers.pop("Location")
    return fhir_response(body, headers=headers)


def _authorise_history(session: Session, user: User, mapping: ResourceMapping, resource_id: str) -> int:
    """Authorise access to one resource's versions, by its current row or, once deleted, by
    the compartment of its last version."""
    _ensure_role_may_read(mapping, user, resource_id)
    key = row_id(resource_id)
    if key is None:
        raise NotFound(f"{mapping.type_name}/{resource_id} does not exist")
    row = session.get(mapping.model, key)
    if row is not None:
        patient_id = mapping.patient_id_of(row)
    else:
        last = session.scalar(
            select(ResourceVersion)
            .where(ResourceVersion.resource_type == mapping.type_name, ResourceVersion.resource_id == key)
            .order_by(ResourceVersion.version_id.desc())
            .limit(1)
        )
        if last is None:
            raise NotFound(f"{mapping.type_name}/{resource_id} does not exist")
        patient_id = last.patient_id
    _ensure_record_access(session, user, mapping, patient_id, resource_id)
    return key


@bp.get("/<type_name>/<resource_id>/_history/<version_id>")
def vread(type_name: str, resource_id: str, version_id: str) -> Response:
    mapping = _mapping_or_404(type_name)
    user = current_user()
    session = request_session()
    if mapping.append_only_at is not None:  # the one version of an append-only record is the record
        if version_id != "1":
            raise NotFound(f"{type_name}/{resource_id} has no version {version_id}: it never changes")
        body, only = read_resource(session, user, mapping, resource_id)
        headers = version_headers(mapping, only)
        headers.pop("Location")
        return fhir_response(body, headers=headers)
    key = _authorise_history(session, user, mapping, resource_id)
    number = row_id(version_id)  # version numbers are written like ids
    version = get_version(session, type_name, key, number) if number is not None else None
    if version is None:
        raise NotFound(f"{type_name}/{resource_id} has no version {version_id}")
    if version.method == METHOD_DELETE or version.resource is None:
        raise Gone(f"{type_name}/{resource_id} was deleted in version {version_id}")
    body = with_version_meta(check_own_resource(version.resource), version)
    record_access(session, user, "R", type_name, resource_id, patient_id=version.patient_id, description=f"vread {version_id}")
    headers = version_headers(mapping, version)
    headers.pop("Location")
    return fhir_response(body, headers=headers)


@bp.get("/<type_name>/<resource_id>/_history")
def instance_history(type_name: str, resource_id: str) -> Response:
    mapping = _mapping_or_404(type_name)
    user = current_user()
    session = request_session()
    _refuse_history_of_append_only(mapping)
    key = _authorise_history(session, user, mapping, resource_id)
    bundle = _history_bundle(
        session, mapping, [ResourceVersion.resource_type == type_name, ResourceVersion.resource_id == key],
        f"{type_name}/{key}",
    )
    record_access(session, user, "R", type_name, resource_id, description="history")
    return fhir_response(bundle)


@bp.get("/<type_name>/_history")
def type_history(type_name: str) -> Response:
    mapping = _mapping_or_404(type_name)
    user = current_user()
    _ensure_role_may_read(mapping, user, None)
    _refuse_history_of_append_only(mapping)
    session = request_session()
    compartment = patient_filter(user, ResourceVersion.patient_id, type_name) if mapping.patient_column is not None else true()
    bundle = _history_bundle(session, mapping, [ResourceVersion.resource_type == type_name, compartment], type_name)
    record_access(session, user, "E", type_name, None, description=f"history {request.query_string.decode()[:500]}",
                  at_response=True)
    return fhir_response(bundle)


def _refuse_history_of_append_only(mapping: ResourceMapping) -> None:
    if mapping.append_only_at is not None:
        raise NotSupported(f"{mapping.type_name} records never change: there is no history (search by date instead)")


# History runs newest first; ties (versions written in one flush) by id, newest first too.
HISTORY_ORDER = [
    SortKey("_lastUpdated", ResourceVersion.last_updated, descending=True),
    SortKey("_id", ResourceVersion.id, descending=True),
]
HISTORY_PARAMS = frozenset({"_count", "_since", "_format", CURSOR_PARAM, LEGACY_PAGE_PARAM, TOTAL_PARAM})


def _history_bundle(session: Session, mapping: ResourceMapping, clauses: list[Any], scope: str) -> dict[str, Any]:
    """A history Bundle of the versions `clauses` select, paged by keyset like a search: `scope`
    (the type, or the one resource) is what its cursors are bound to."""
    for name in request.args:
        if name not in HISTORY_PARAMS and not _lenient():
            raise InvalidInput(f"unknown history parameter {name!r}")
    since = request.args.get("_since")
    if since is not None:
        try:
            _prefix, start, _end = parse_date_search(since)
        except ValueError as exc:
            raise InvalidInput(f"bad _since: {exc}") from exc
        clauses.append(ResourceVersion.last_updated >= start)
    count = _int_arg("_count", DEFAULT_COUNT, 1, MAX_COUNT)
    params = [(k, v) for k in request.args if k in HISTORY_PARAMS - {CURSOR_PARAM, LEGACY_PAGE_PARAM, "_format"}
              for v in request.args.getlist(k)]
    binding = search_binding(f"history {scope}", params)
    cursor = request.args.get(CURSOR_PARAM)
    mode = total_mode(request.args.get(TOTAL_PARAM))
    versions_selected = select(ResourceVersion).where(*clauses)
    page_number: int | None = None
    if cursor is not None:
        if LEGACY_PAGE_PARAM in request.args:
            raise InvalidInput(f"give {CURSOR_PARAM} or {LEGACY_PAGE_PARAM}, not both")
        after = decode_cursor(cursor, binding, HISTORY_ORDER)
        page = keyset_page(session, versions_selected, HISTORY_ORDER, after, count + 1)
    elif LEGACY_PAGE_PARAM in request.args:
        page_number = _int_arg(LEGACY_PAGE_PARAM, 1, 1, 10**9)
        page = offset_page(session, versions_selected, HISTORY_ORDER, (page_number - 1) * count, count + 1)
    else:
        page = keyset_page(session, versions_selected, HISTORY_ORDER, None, count + 1)
    more = len(page) > count
    page = page[:count]
    first_page = cursor is None and page_number in (None, 1)
    total = bundle_total(session, versions_selected, mode, len(page) if first_page and not more else None)
    position = (CURSOR_PARAM, cursor) if cursor is not None else None
    if page_number is not None:
        position = (LEGACY_PAGE_PARAM, str(page_number))
    links = [
        {"relation": "self", "url": page_link(request.base_url, params, position)},
        {"relation": "first", "url": page_link(request.base_url, params)},
    ]
    if more:
        next_cursor = encode_cursor(binding, HISTORY_ORDER, page[-1][1])
        links.append({"relation": "next", "url": page_link(request.base_url, params, (CURSOR_PARAM, next_cursor))})
    if page_number is not None and page_number > 1:
        links.append({"relation": "previous", "url": page_link(request.base_url, params, (LEGACY_PAGE_PARAM, str(page_number - 1)))})
    entries = []
    for version, _values in page:
        url = f"{mapping.type_name}/{version.resource_id}"
        entry: dict[str, Any] = {
            "fullUrl": f"{fhir_base()}/{url}",
            "request": {"method": version.method, "url": mapping.type_name if version.method == "POST" else url},
            "response": {
                "status": HISTORY_STATUS[version.method],
                "etag": etag(version),
                "lastModified": version.last_updated.isoformat(),
            },
        }
        if version.resource is not None:
            entry["resource"] = with_version_meta(check_own_resource(version.resource), version)
        entries.append(entry)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "link": links}
    if total is not None:
        bundle["total"] = total
    if entries:
        bundle["entry"] = entries
    return bundle  # its entries were validated one by one above


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be an integer, got {raw!r}") from exc
    return max(low, min(high, value))


# --- search --------------------------------------------------------------------------------------


def search_resources(
    session: Session, user: User, mapping: ResourceMapping, params: MultiDict[str, str], *, lenient: bool
) -> dict[str, Any]:
    _ensure_role_may_read(mapping, user, None)
    registry = fhir_registry()
    search = parse_search(registry, mapping, user, params, lenient=lenient)
    base_url = f"{fhir_base()}/{mapping.type_name}"
    bundle, rows = run_search(session, registry, mapping, user, search, base_url, fhir_base())
    patients = {mapping.patient_id_of(r) for r in rows}
    record_access(
        session, user, "E", mapping.type_name, None,
        description=f"search {'&'.join(f'{k}={v}' for k, v in search.used)[:500]}",
        patient_id=next(iter(patients)) if len(patients) == 1 else None, at_response=True,
    )
    # Each entry was validated as it was rendered; the Bundle around them is ours and fixed in
    # shape (tests validate it), so it is not validated again: that doubled the cost of a search.
    return bundle


@bp.get("/<type_name>")
def search(type_name: str) -> Response:
    mapping = _mapping_or_404(type_name)
    session = request_session()
    bundle = search_resources(session, current_user(), mapping, request.args, lenient=_lenient())
    return fhir_response(bundle)


@bp.post("/<type_name>/_search")
def search_by_post(type_name: str) -> Response:
    """Search with the parameters in a form body (and the query string), as FHIR allows."""
    user = current_user()  # before looking at the body: an anonymous caller learns nothing from it
    mapping = _mapping_or_404(type_name)
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidInput("POST _search takes application/x-www-form-urlencoded parameters")
    params: MultiDict[str, str] = MultiDict(request.args)
    for key in request.form:
        for value in request.form.getlist(key):
            params.add(key, value)
    session = request_session()
    bundle = search_resources(session, user, mapping, params, lenient=_lenient())
    return fhir_response(bundle)


# --- create and update ---------------------------------------------------------------------------


def parse_body_resource(data: Any, type_name: str) -> dict[str, Any]:
    """The request's resource validated by fhir.resources; a bad one is a 400 with its message."""
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a FHIR JSON resource")
    if data.get("resourceType") != type_name:
        raise InvalidInput(f"expected a {type_name} resource, got {data.get('resourceType')!r}")
    try:
        return validate_resource(data)
    except FhirValidationError as exc:
        raise InvalidInput(str(exc)) from exc


def request_json() -> Any:
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError as exc:
        raise InvalidInput("the body is nested too deeply") from exc
    if data is None:
        raise InvalidInput("the body is not JSON")
    return data


def create_resource(
    session: Session, user: User, mapping: ResourceMapping, data: Any, if_none_exist: str | None
) -> tuple[Any, int]:
    """Create through the mapping's handler, or find the one match of `if_none_exist`.
    Returns the row and 201 (created) or 200 (already there)."""
    if mapping.create is None:
        raise NotSupported(f"{mapping.type_name} cannot be created through FHIR")
    resource = parse_body_resource(data, mapping.type_name)
    if if_none_exist:
        params: MultiDict[str, str] = MultiDict(parse_qsl(if_none_exist.lstrip("?"), keep_blank_values=True))
        search = parse_search(fhir_registry(), mapping, user, params, lenient=False)
        matches = session.scalars(select(mapping.model).where(*search.clauses).limit(2)).all()
        if len(matches) > 1:
            raise PreconditionFailed(f"If-None-Exist {if_none_exist} matches more than one {mapping.type_name}")
        if matches:
            return matches[0], 200
    row = mapping.create(session, user, resource)
    session.flush()
    return row, 201


def update_resource(
    session: Session, user: User, mapping: ResourceMapping, resource_id: str, data: Any, if_match: str | None
) -> Any:
    if mapping.update is None:
        raise NotSupported(f"{mapping.type_name} cannot be updated through FHIR")
    resource = parse_body_resource(data, mapping.type_name)
    if resource.get("id") != resource_id:
        raise InvalidInput(f"the resource's id ({resource.get('id')!r}) must match the URL ({resource_id!r})")
    row = _load_row(session, mapping, resource_id)
    _ensure_record_access(session, user, mapping, mapping.patient_id_of(row), resource_id, "U")
    if if_match:
        matched = ETAG_PATTERN.match(if_match.strip())
        current = current_version(session, mapping, row)
        if matched is None or int(matched.group(1)) != current.version_id:
            raise PreconditionFailed(
                f"If-Match {if_match} is stale: {mapping.type_name}/{resource_id} is at version {current.version_id}"
            )
    row = mapping.update(session, user, row, resource)
    session.flush()
    return row


def _write_response(mapping: ResourceMapping, row: Any, status: int, session: Session) -> Response:
    version = current_version(session, mapping, row)
    body = with_version_meta(render_resource(mapping, row), version)
    headers = version_headers(mapping, version)
    prefer = request.headers.get("Prefer", "").replace(" ", "")
    if "return=minimal" in prefer:
        return fhir_response(None, status, headers)
    if "return=OperationOutcome" in prefer:
        outcome = operation_outcome(f"{mapping.type_name}/{row.id} version {version.version_id} saved", code="informational", severity="information")
        return fhir_response(outcome, status, headers)
    return fhir_response(body, status, headers)


@bp.post("/<type_name>")
def create(type_name: str) -> Response:
    mapping = _mapping_or_404(type_name)
    session = request_session()
    row, status = create_resource(session, current_user(), mapping, request_json(), request.headers.get("If-None-Exist"))
    return _write_response(mapping, row, status, session)


@bp.put("/<type_name>/<resource_id>")
def update(type_name: str, resource_id: str) -> Response:
    mapping = _mapping_or_404(type_name)
    session = request_session()
    row = update_resource(session, current_user(), mapping, resource_id, request_json(), request.headers.get("If-Match"))
    return _write_response(mapping, row, 200, session)


@bp.delete("/<type_name>/<resource_id>")
def delete(type_name: str, resource_id: str) -> Response:
    """Health and billing records are kept (retention, audit): ending one is a status change."""
    current_user()
    mapping = _mapping_or_404(type_name)
    how = DELETE_ALTERNATIVES.get(mapping.type_name, "records of this type are kept for the legal retention period")
    raise NotSupported(f"{mapping.type_name} records are never deleted; {how}")


DELETE_ALTERNATIVES = {
    "ServiceRequest": "cancel with an update to status 'revoked'",
    "Appointment": "cancel with an update to status 'cancelled'",
    "Task": "end it with an update to status 'cancelled'",
}


# --- transaction and batch -----------------------------------------------------------------------


@bp.post("", strict_slashes=False)
def transaction_or_batch() -> Response:
    """A transaction (all entries or none, one database transaction) or a batch (each entry on
    its own) Bundle."""
    current_user()  # before looking at the body: an anonymous caller learns nothing from it
    data = request_json()
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise InvalidInput("POST /fhir takes a transaction or batch Bundle")
    if isinstance(data.get("entry"), list):
        check_bundle_entries(len(data["entry"]))  # before validating thousands of entries
    try:
        bundle = validate_resource(data)
    except FhirValidationError as exc:
        raise InvalidInput(str(exc)) from exc
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidInput(f"Bundle.type must be transaction or batch, got {kind!r}")
    # Validation normalised the entries; references are rewritten in the raw JSON, which the
    # handlers validate again.
    entries = data.get("entry") or []
    session = request_session()
    user = current_user()
    if kind == "transaction":
        responses = _run_transaction(session, user, entries)
    else:
        responses = _run_batch(session, user, entries)
    return fhir_response(validate_resource({"resourceType": "Bundle", "type": f"{kind}-response", "entry": responses}))


def _run_transaction(session: Session, user: User, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    responses: list[dict[str, Any] | None] = [None] * len(entries)
    resolved: dict[str, str] = {}  # urn:uuid fullUrl -> Type/id
    pending = sorted(range(len(entries)), key=lambda i: METHOD_ORDER.get(_method(entries[i]), 9))
    # Creates run when every urn:uuid they reference is resolved, whatever the entry order.
    while pending:
        ready = [i for i in pending if not (_urn_references(entries[i].get("resource")) - resolved.keys())]
        if not ready:
            unresolved = sorted(set().union(*(_urn_references(entries[i].get("resource")) for i in pending)) - resolved.keys())
            raise InvalidInput(f"the transaction references {unresolved} that no entry creates")
        index = ready[0]
        pending.remove(index)
        entry = entries[index]
        responses[index] = _run_entry(session, user, entry, resolved)
        full_url = entry.get("fullUrl")
        location = responses[index]["response"].get("location", "")  # type: ignore[index]
        if isinstance(full_url, str) and full_url.startswith("urn:") and location:
            resolved[full_url] = "/".join(location.split("/")[:2])
    return [r for r in responses if r is not None]


def _run_batch(session: Session, user: User, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    responses = []
    for entry in entries:
        # Each entry in a savepoint: a refused entry leaves nothing, the others are kept (its denial
        # is recorded by the unit of work at the end of the request).
        try:
            with session.begin_nested():
                responses.append(_run_entry(session, user, entry, {}))
        except DomainError as exc:
            responses.append(
                {"response": {"status": str(exc.status), "outcome": operation_outcome(exc.message, code=exc.code)}}
            )
    return responses


def _method(entry: dict[str, Any]) -> str:
    return str((entry.get("request") or {}).get("method", "")).upper()


def _urn_references(element: Any) -> set[str]:
    if isinstance(element, list):
        return set().union(*(_urn_references(e) for e in element)) if element else set()
    if isinstance(element, dict):
        found = set().union(*(_urn_references(v) for k, v in element.items() if k != "reference")) if element else set()
        ref = element.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:"):
            found.add(ref)
        return found
    return set()


def _resolve_references(element: Any, resolved: dict[str, str]) -> Any:
    if isinstance(element, list):
        return [_resolve_references(e, resolved) for e in element]
    if isinstance(element, dict):
        copy = {k: _resolve_references(v, resolved) for k, v in element.items()}
        ref = copy.get("reference")
        if isinstance(ref, str) and ref in resolved:
            copy["reference"] = resolved[ref]
        return copy
    return element


def _run_entry(session: Session, user: User, entry: dict[str, Any], resolved: dict[str, str]) -> dict[str, Any]:
    req = entry.get("request") or {}
    method = _method(entry)
    url = urlsplit(str(req.get("url", "")))
    parts = [p for p in url.path.strip("/").split("/") if p]
    if not parts:
        raise InvalidInput(f"a Bundle entry has no request.url ({req.get('url')!r})")
    mapping = _mapping_or_404(parts[0])
    if method == "POST" and len(parts) == 1:
        resource = _resolve_references(entry.get("resource"), resolved)
        row, status = create_resource(session, user, mapping, resource, req.get("ifNoneExist"))
        return _entry_response(session, mapping, row, "201 Created" if status == 201 else "200 OK")
    if method == "PUT" and len(parts) == 2:
        resource = _resolve_references(entry.get("resource"), resolved)
        row = update_resource(session, user, mapping, parts[1], resource, req.get("ifMatch"))
        return _entry_response(session, mapping, row, "200 OK")
    if method == "GET" and len(parts) == 2:
        body, version = read_resource(session, user, mapping, parts[1])
        return {"resource": body, "response": {"status": "200 OK", "etag": etag(version)}}
    if method == "GET" and len(parts) == 1:
        params: MultiDict[str, str] = MultiDict(parse_qsl(url.query, keep_blank_values=True))
        return {"resource": search_resources(session, user, mapping, params, lenient=False), "response": {"status": "200 OK"}}
    raise NotSupported(f"{method} {req.get('url')} is not supported in a Bundle")


def _entry_response(session: Session, mapping: ResourceMapping, row: Any, status: str) -> dict[str, Any]:
    version = current_version(session, mapping, row)
    return {
        "fullUrl": f"{fhir_base()}/{mapping.type_name}/{row.id}",
        "resource": with_version_meta(render_resource(mapping, row), version),
        "response": {
            "status": status,
            "location": f"{mapping.type_name}/{row.id}/_history/{version.version_id}",
            "etag": etag(version),
            "lastModified": version.last_updated.isoformat(),
        },
    }
