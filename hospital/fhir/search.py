"""FHIR search: parameters to SQL, the compartment filter, _sort, paging, _include and
_revinclude, and the searchset Bundle.

Paging is by offset over an order that always ends with the primary key, so pages are stable
while the data is; `next`/`previous` links carry the same parameters with another `_page`.
Included resources pass the same role and patient-compartment checks as matches: what a user
may not see is left out, not shown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from hospital.access import patient_filter
from hospital.errors import InvalidInput
from hospital.fhir.registry import (
    FhirRegistry,
    FhirValidationError,
    ResourceMapping,
    SearchParam,
    date_clause,
    validate_resource,
)
from hospital.models import ResourceVersion, User

logger = logging.getLogger(__name__)

RESULT_PARAMS = frozenset({"_count", "_page", "_format", "_sort", "_summary", "_include", "_revinclude"})
DEFAULT_COUNT = 50
MAX_COUNT = 500
MAX_INCLUDED = 1000
SUMMARY_VALUES = frozenset({"count", "false"})
# Where a reference search param's value sits in the resource, when the param name does not say.
DEFAULT_REFERENCE_PATHS = {"patient": "subject", "based-on": "basedOn", "derived-from": "derivedFrom"}


@dataclass
class SearchRequest:
    """A parsed search: WHERE clauses, ORDER BY, paging and what to include."""

    clauses: list[ColumnElement[bool]] = field(default_factory=list)
    order_by: list[Any] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    page: int = 1
    summary_count: bool = False
    includes: list[tuple[str, SearchParam]] = field(default_factory=list)  # (param name, param) on this type
    revincludes: list[tuple[ResourceMapping, SearchParam]] = field(default_factory=list)
    # The parameters the search honoured, for the self/next/previous links.
    used: list[tuple[str, str]] = field(default_factory=list)


def render_resource(mapping: ResourceMapping, row: Any) -> dict[str, Any]:
    data = mapping.to_fhir(row)
    try:
        return validate_resource(data)
    except FhirValidationError:
        logger.exception("our own %s/%s failed FHIR validation", mapping.type_name, getattr(row, "id", "?"))
        raise


def primary_key(mapping: ResourceMapping) -> Any:
    return mapping.model.__mapper__.primary_key[0]


def last_updated_column(mapping: ResourceMapping) -> Any:
    """When each row last changed, from its versions (a correlated subquery, for _sort); an
    append-only row's own time of writing."""
    if mapping.append_only_at is not None:
        return mapping.append_only_at
    return (
        select(func.max(ResourceVersion.last_updated))
        .where(ResourceVersion.resource_type == mapping.type_name, ResourceVersion.resource_id == primary_key(mapping))
        .correlate(mapping.model)
        .scalar_subquery()
    )


def parse_search(
    registry: FhirRegistry, mapping: ResourceMapping, user: User, params: MultiDict[str, str], *, lenient: bool
) -> SearchRequest:
    """Turn request parameters into a SearchRequest; unknown parameters are a 400 unless the
    client asked for lenient handling, when they are ignored (and left out of the links)."""
    search = SearchRequest()
    for name in params:
        values = params.getlist(name)
        if name in RESULT_PARAMS:
            if name not in ("_page", "_format"):
                search.used.extend((name, v) for v in values)
            continue
        if name == "_lastUpdated":
            for value in values:
                try:
                    search.clauses.append(date_clause(last_updated_column(mapping), value))
                except ValueError as exc:
                    raise InvalidInput(f"bad value for _lastUpdated: {exc}") from exc
                search.used.append((name, value))
            continue
        param = mapping.search_params.get(name)
        if param is None:
            if lenient:
                continue
            raise InvalidInput(f"unknown search parameter {name!r} for {mapping.type_name}")
        for value in values:
            try:
                search.clauses.append(param.clause(value))
            except ValueError as exc:
                raise InvalidInput(f"bad value for {name}: {exc}") from exc
            search.used.append((name, value))
    if mapping.patient_column is not None:
        search.clauses.append(patient_filter(user, mapping.patient_column, mapping.type_name))
    search.count = _int_param(params, "_count", DEFAULT_COUNT, 0, MAX_COUNT)
    search.page = _int_param(params, "_page", 1, 1, 10**9)
    search.order_by = _order_by(mapping, params.getlist("_sort"))
    summary = params.get("_summary")
    if summary is not None and summary not in SUMMARY_VALUES:
        raise InvalidInput(f"_summary={summary} is not supported; use count or false")
    search.summary_count = summary == "count"
    search.includes = [_include(mapping, value) for value in params.getlist("_include")]
    search.revincludes = [_revinclude(registry, mapping, value) for value in params.getlist("_revinclude")]
    return search


def _int_param(params: MultiDict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be an integer, got {raw!r}") from exc
    return max(low, min(high, value))


def sortable_params(mapping: ResourceMapping) -> list[str]:
    """The names `_sort` accepts for this type."""
    names = {"_id", "_lastUpdated"}
    names.update(name for name, param in mapping.search_params.items() if param.sort_column is not None)
    return sorted(names)


def _order_by(mapping: ResourceMapping, sort_values: list[str]) -> list[Any]:
    pk = primary_key(mapping)
    order: list[Any] = []
    for raw in ",".join(sort_values).split(","):
        key = raw.strip()
        if not key:
            continue
        descending = key.startswith("-")
        name = key.lstrip("-")
        if name == "_id":
            column = pk
        elif name == "_lastUpdated":
            column = last_updated_column(mapping)
        else:
            param = mapping.search_params.get(name)
            if param is None or param.sort_column is None:
                raise InvalidInput(f"cannot sort {mapping.type_name} by {name!r}; use one of {sortable_params(mapping)}")
            column = param.sort_column
        order.append(column.desc().nulls_last() if descending else column.asc().nulls_last())
    order.append(pk)  # the tie-breaker that keeps offset pages stable
    return order


def includable(mapping: ResourceMapping) -> dict[str, SearchParam]:
    """Reference params of this type that _include can follow (they know their element)."""
    return {name: p for name, p in mapping.search_params.items() if p.type == "reference" and p.target and _path(name, p)}


def _path(name: str, param: SearchParam) -> str:
    return param.path or DEFAULT_REFERENCE_PATHS.get(name) or _camel(name)


def _camel(name: str) -> str:
    head, *rest = name.split("-")
    return head + "".join(part.capitalize() for part in rest)


def _include(mapping: ResourceMapping, value: str) -> tuple[str, SearchParam]:
    source, _, rest = value.partition(":")
    name, _, target = rest.partition(":")
    param = includable(mapping).get(name)
    if source != mapping.type_name or param is None or (target and target != param.target):
        raise InvalidInput(f"_include={value} is not supported; {mapping.type_name} can include {include_values(mapping)}")
    return name, param


def include_values(mapping: ResourceMapping) -> list[str]:
    return [f"{mapping.type_name}:{name}" for name in sorted(includable(mapping))]


def revinclude_values(registry: FhirRegistry, target_type: str) -> list[str]:
    return sorted(
        f"{source.type_name}:{name}"
        for source in registry.mappings.values()
        for name, param in source.search_params.items()
        if param.type == "reference" and param.target == target_type
    )


def _revinclude(registry: FhirRegistry, mapping: ResourceMapping, value: str) -> tuple[ResourceMapping, SearchParam]:
    source_type, _, rest = value.partition(":")
    name, _, target = rest.partition(":")
    source = registry.get(source_type)
    param = source.search_params.get(name) if source is not None else None
    if (
        source is None
        or param is None
        or param.type != "reference"
        or param.target != mapping.type_name
        or (target and target != mapping.type_name)
    ):
        raise InvalidInput(
            f"_revinclude={value} is not supported; {mapping.type_name} accepts {revinclude_values(registry, mapping.type_name)}"
        )
    return source, param


def run_search(
    session: Session, registry: FhirRegistry, mapping: ResourceMapping, user: User, search: SearchRequest, base_url: str,
    fhir_base: str,
) -> tuple[dict[str, Any], list[Any]]:
    """Execute a parsed search; returns the searchset Bundle and the matched rows."""
    total = session.scalar(select(func.count()).select_from(mapping.model).where(*search.clauses)) or 0
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total}
    links = [{"relation": "self", "url": page_url(base_url, search.used, search.page)}]
    if search.summary_count:
        bundle["link"] = links
        return bundle, []
    query: Select[Any] = select(mapping.model).where(*search.clauses).order_by(*search.order_by)
    rows = list(session.scalars(query.limit(search.count).offset((search.page - 1) * search.count)))
    if search.count:
        last_page = max(1, -(-total // search.count))
        links.append({"relation": "first", "url": page_url(base_url, search.used, 1)})
        if search.page * search.count < total:
            links.append({"relation": "next", "url": page_url(base_url, search.used, search.page + 1)})
        if search.page > 1:
            links.append({"relation": "previous", "url": page_url(base_url, search.used, min(search.page - 1, last_page))})
        links.append({"relation": "last", "url": page_url(base_url, search.used, last_page)})
    entries: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for row in rows:
        resource = render_resource(mapping, row)
        seen.add((mapping.type_name, row.id))
        entries.append(
            {"fullUrl": f"{fhir_base}/{mapping.type_name}/{row.id}", "resource": resource, "search": {"mode": "match"}}
        )
    included = _included_rows(session, registry, mapping, user, search, [e["resource"] for e in entries], rows)
    for included_mapping, row in included:
        key = (included_mapping.type_name, row.id)
        if key in seen:
            continue
        seen.add(key)
        entries.append(
            {
                "fullUrl": f"{fhir_base}/{included_mapping.type_name}/{row.id}",
                "resource": render_resource(included_mapping, row),
                "search": {"mode": "include"},
            }
        )
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle, rows


def _included_rows(
    session: Session, registry: FhirRegistry, mapping: ResourceMapping, user: User, search: SearchRequest,
    resources: list[dict[str, Any]], rows: list[Any],
) -> list[tuple[ResourceMapping, Any]]:
    found: list[tuple[ResourceMapping, Any]] = []
    for name, param in search.includes:
        target = registry.get(param.target or "")
        if target is None:
            continue
        ids = {ref_id for resource in resources for ref_id in referenced_ids(resource.get(_path(name, param)), target.type_name)}
        if ids:
            found.extend((target, row) for row in visible_rows(session, target, user, primary_key(target).in_(ids)))
    match_ids = [row.id for row in rows]
    for source, param in search.revincludes:
        if match_ids:
            clause = or_(*(param.clause(f"{mapping.type_name}/{row_id}") for row_id in match_ids))
            found.extend((source, row) for row in visible_rows(session, source, user, clause))
    return found


def visible_rows(session: Session, mapping: ResourceMapping, user: User, clause: ColumnElement[bool]) -> list[Any]:
    """Rows matching `clause` that `user` may see: by role, then by patient compartment."""
    if not mapping.readable_by(user.role):
        return []
    clauses = [clause]
    if mapping.patient_column is not None:
        clauses.append(patient_filter(user, mapping.patient_column, mapping.type_name))
    return list(session.scalars(select(mapping.model).where(*clauses).order_by(primary_key(mapping)).limit(MAX_INCLUDED)))


def referenced_ids(element: Any, type_name: str) -> Iterable[int]:
    """Ids of every `type_name/<id>` reference anywhere inside a resource element."""
    if isinstance(element, list):
        for item in element:
            yield from referenced_ids(item, type_name)
    elif isinstance(element, dict):
        ref = element.get("reference")
        if isinstance(ref, str):
            parts = ref.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == type_name and parts[-1].isdigit():
                yield int(parts[-1])
        for key, value in element.items():
            if key != "reference":
                yield from referenced_ids(value, type_name)


def page_url(base_url: str, params: list[tuple[str, str]], page: int) -> str:
    return f"{base_url}?{urlencode([*params, ('_page', str(page))])}"
