"""Version tracking of FHIR-visible records: the source of meta.versionId, vread and _history.

A session `after_flush` listener snapshots every new, changed or deleted row of a registered model
as its FHIR JSON (through the mapping's `to_fhir`) into `resource_version`, in the same
transaction as the change: whichever code path changed the row (page, API, FHIR, job, DICOM),
the history sees it, and a rolled-back change leaves no version. Each version inserted also moves
the record's row in `resource_last_updated` (a trigger, migration 0042), which `_lastUpdated`
searches and sorts walk.

A version is taken when the row itself changes. A change that only shows in a resource through
a related row (a finding rejected under a report) makes a version of the related row's resource,
not of the report; the report's read always renders the current state.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, bindparam, event, func, insert, inspect, select
from sqlalchemy.orm import Session, UOWTransaction

from hospital.clock import utcnow
from hospital.fhir.registry import VERSIONED_MODELS, ResourceMapping
from hospital.models import ResourceLastUpdated, ResourceVersion

logger = logging.getLogger(__name__)

METHOD_CREATE = "POST"
METHOD_UPDATE = "PUT"
METHOD_DELETE = "DELETE"


PENDING_KEY = "hospital.fhir.pending_versions"


@event.listens_for(Session, "after_flush")
def _collect_flushed_rows(session: Session, _flush_context: UOWTransaction) -> None:
    """Note what changed while the flush still knows (new, dirty and deleted are reset after)."""
    if not VERSIONED_MODELS:
        return
    changes: list[tuple[ResourceMapping, Any, str]] = []
    for row in session.new:
        mapping = VERSIONED_MODELS.get(type(row))
        if mapping is not None and mapping.append_only_at is None:  # an append-only row is its own version
            changes.append((mapping, row, METHOD_CREATE))
    for row in session.dirty:
        mapping = VERSIONED_MODELS.get(type(row))
        if mapping is not None and _changed_columns(row) - mapping.unversioned_columns:
            changes.append((mapping, row, METHOD_UPDATE))
    for row in session.deleted:
        mapping = VERSIONED_MODELS.get(type(row))
        if mapping is not None:
            changes.append((mapping, row, METHOD_DELETE))
    if changes:
        session.info.setdefault(PENDING_KEY, []).extend(changes)


@event.listens_for(Session, "after_flush_postexec")
def _snapshot_flushed_rows(session: Session, _flush_context: UOWTransaction) -> None:
    """Render and store the versions now that new rows are persistent (they can lazy-load)."""
    changes = session.info.pop(PENDING_KEY, None)
    if changes:
        write_versions(session, changes)


def _changed_columns(row: Any) -> set[str]:
    state = inspect(row)
    return {attr.key for attr in state.mapper.column_attrs if state.attrs[attr.key].history.has_changes()}


def write_versions(session: Session, changes: list[tuple[ResourceMapping, Any, str]]) -> None:
    """Insert the next version of each changed row (plain Core inserts: this runs mid-flush).

    The rows are rendered from a second session on the same connection: it sees this
    transaction's data, and rendering (which loads relationships) leaves the caller's session
    exactly as it was.
    """
    now = utcnow()
    keys = [(m.type_name, row.id) for m, row, _method in changes]
    latest = _latest_versions(session, [key for key, (_m, _r, method) in zip(keys, changes, strict=True) if method != METHOD_CREATE])
    rendered = _render_rows(session, [(m, row.id) for m, row, method in changes if method != METHOD_DELETE])
    rows = []
    for (mapping, row, method), key in zip(changes, keys, strict=True):
        version_id = latest.get(key, 0) + 1
        latest[key] = version_id
        resource, patient_id = rendered.get(key, (None, mapping.patient_id_of(row)))
        rows.append(
            {
                "resource_type": mapping.type_name,
                "resource_id": row.id,
                "version_id": version_id,
                "last_updated": now,
                "method": method,
                "patient_id": patient_id,
                "resource": resource,
            }
        )
    session.connection().execute(insert(ResourceVersion), rows)


def _render_rows(
    session: Session, keys: list[tuple[ResourceMapping, int]]
) -> dict[tuple[str, int], tuple[dict[str, Any], int | None]]:
    ids_by_type: dict[str, set[int]] = defaultdict(set)
    mappings: dict[str, ResourceMapping] = {}
    for mapping, row_id in keys:
        ids_by_type[mapping.type_name].add(row_id)
        mappings[mapping.type_name] = mapping
    rendered: dict[tuple[str, int], tuple[dict[str, Any], int | None]] = {}
    if not ids_by_type:
        return rendered
    with Session(bind=session.connection(), autoflush=False) as reader:
        for type_name, ids in ids_by_type.items():
            mapping = mappings[type_name]
            pk = mapping.model.__mapper__.primary_key[0]
            for row in reader.scalars(select(mapping.model).where(pk.in_(ids))):
                rendered[(type_name, getattr(row, str(pk.key)))] = (json_safe(mapping.to_fhir(row)), mapping.patient_id_of(row))
    return rendered


def _latest_versions(session: Session, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    by_type: dict[str, list[int]] = defaultdict(list)
    for type_name, row_id in keys:
        by_type[type_name].append(row_id)
    found: dict[tuple[str, int], int] = {}
    for type_name, ids in by_type.items():
        query = (
            select(ResourceVersion.resource_id, func.max(ResourceVersion.version_id))
            .where(ResourceVersion.resource_type == type_name, ResourceVersion.resource_id.in_(ids))
            .group_by(ResourceVersion.resource_id)
        )
        for resource_id, version_id in session.connection().execute(query):
            found[(type_name, resource_id)] = version_id
    return found


def json_safe(value: Any) -> Any:
    """FHIR JSON from `to_fhir` as plain JSON: None fields dropped, decimals as numbers."""
    if isinstance(value, dict):
        cleaned = {k: json_safe(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v is not None and v != [] and v != {}}
    if isinstance(value, list):
        return [item for item in (json_safe(v) for v in value) if item is not None and item != {}]
    if isinstance(value, Decimal):
        as_float = float(value)
        return int(value) if value == value.to_integral_value() and math.isfinite(as_float) else as_float
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def current_version(session: Session, mapping: ResourceMapping, row: Any) -> ResourceVersion:
    """The latest version of a row; a row that predates tracking gets its first version now. An
    append-only row's one version is the row itself (not stored: nothing to add to the session)."""
    if mapping.append_only_at is not None:
        return ResourceVersion(resource_type=mapping.type_name, resource_id=row.id, version_id=1,
                               last_updated=getattr(row, mapping.append_only_at.key), method=METHOD_CREATE,
                               patient_id=mapping.patient_id_of(row), resource=None)
    version = session.scalar(
        select(ResourceVersion)
        .where(ResourceVersion.resource_type == mapping.type_name, ResourceVersion.resource_id == row.id)
        .order_by(ResourceVersion.version_id.desc())
        .limit(1)
    )
    if version is None:
        write_versions(session, [(mapping, row, METHOD_CREATE)])
        return current_version(session, mapping, row)
    return version


def row_and_version(session: Session, mapping: ResourceMapping, row_id: int) -> tuple[Any, ResourceVersion] | None:
    """A row and its current version's number and time, in one query (resource_last_updated holds
    them); None when there is no such row. The version is not loaded whole (a read renders the
    row) and is not added to the session."""
    if mapping.append_only_at is not None:
        row = session.get(mapping.model, row_id)
        return None if row is None else (row, current_version(session, mapping, row))
    found = session.execute(_row_and_version_statement(mapping), {"row_id": row_id}).first()
    if found is None:
        return None
    row, version_id, last_updated = found
    if version_id is None:  # predates version tracking: its first version is taken now
        return row, current_version(session, mapping, row)
    return row, ResourceVersion(resource_type=mapping.type_name, resource_id=row_id, version_id=version_id,
                                last_updated=last_updated, patient_id=mapping.patient_id_of(row))


def _row_and_version_statement(mapping: ResourceMapping) -> Select[Any, int, datetime]:
    """Built once per mapping (it is the same statement for every read of the type, the id a
    bound parameter), so its cache key is worked out once too."""
    key = (mapping.type_name, mapping.model)
    cached = _ROW_AND_VERSION.get(key)
    if cached is not None:
        return cached
    pk = mapping.model.__mapper__.primary_key[0]
    statement = (
        select(mapping.model, ResourceLastUpdated.version_id, ResourceLastUpdated.last_updated)
        .outerjoin(ResourceLastUpdated, and_(ResourceLastUpdated.resource_type == mapping.type_name,
                                             ResourceLastUpdated.resource_id == pk))
        .where(pk == bindparam("row_id"))
        .options(*mapping.load_options)
    )
    _ROW_AND_VERSION[key] = statement
    return statement


_ROW_AND_VERSION: dict[tuple[str, type[Any]], Select[Any, int, datetime]] = {}


def get_version(session: Session, type_name: str, resource_id: int, version_id: int) -> ResourceVersion | None:
    return session.scalar(
        select(ResourceVersion).where(
            ResourceVersion.resource_type == type_name,
            ResourceVersion.resource_id == resource_id,
            ResourceVersion.version_id == version_id,
        )
    )


def with_version_meta(resource: dict[str, Any], version: ResourceVersion) -> dict[str, Any]:
    """The resource with meta.versionId and meta.lastUpdated of `version`."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version.version_id)
    meta["lastUpdated"] = version.last_updated.isoformat()
    return {**resource, "meta": meta}
