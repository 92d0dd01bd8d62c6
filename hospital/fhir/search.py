"""FHIR search: parameters to SQL, the compartment filter, _sort, paging, _include and
_revinclude, and the searchset Bundle.

Paging is by keyset over an order that always ends with the primary key (`hospital.fhir.paging`):
the `next` link carries a signed cursor holding the last row's sort keys, so a deep page costs
what the first does and rows written between page reads do not shift the pages. The old `_page`
offset links are still served. Bundle.total follows `_total` (see paging). Included resources
pass the same role and patient-compartment checks as matches: what a user may not see is left
out, not shown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from hospital.access import patient_filter
from hospital.errors import InvalidInput
from hospital.fhir.paging import (
    CURSOR_PARAM,
    LEGACY_PAGE_PARAM,
    TOTAL_PARAM,
    SortKey,
    bundle_total,
    decode_cursor,
    encode_cursor,
    is_nullable,
    keyset_page,
    offset_page,
    page_link,
    search_binding,
    total_mode,
)
from hospital.fhir.registry import (
    FhirRegistry,
    FhirValidationError,
    ResourceMapping,
    SearchParam,
    check_own_resource,
    date_clause,
)
from hospital.models import ResourceLastUpdated, User

logger = logging.getLogger(__name__)

RESULT_PARAMS = frozenset(
    {"_count", LEGACY_PAGE_PARAM, CURSOR_PARAM, TOTAL_PARAM, "_format", "_sort", "_summary", "_include", "_revinclude"}
)
# Not repeated in the links: each link says its own position.
POSITION_PARAMS = frozenset({LEGACY_PAGE_PARAM, CURSOR_PARAM, "_format"})
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
    sort: list[SortKey] = field(default_factory=list)  # ends with the primary key
    # Under `_sort=_lastUpdated`, the same order walked on resource_last_updated's own columns.
    joined_sort: list[SortKey] | None = None
    # Whether a clause or the sort reads resource_last_updated (an outer join on the matches).
    joins_last_updated: bool = False
    count: int = DEFAULT_COUNT
    after: list[Any] | None = None  # the sort key values of the cursor: the page starts after them
    cursor: str | None = None
    page: int | None = None  # an old `_page` link: an offset page
    total: str | None = None  # the `_total` asked for
    binding: str = ""  # what this search's cursors are bound to
    summary_count: bool = False
    includes: list[tuple[str, SearchParam]] = field(default_factory=list)  # (param name, param) on this type
    revincludes: list[tuple[ResourceMapping, SearchParam]] = field(default_factory=list)
    # The parameters the search honoured, for the self/next/previous links.
    used: list[tuple[str, str]] = field(default_factory=list)


def render_resource(mapping: ResourceMapping, row: Any) -> dict[str, Any]:
    data = mapping.to_fhir(row)
    try:
        return check_own_resource(data)
    except FhirValidationError:
        logger.exception("our own %s/%s failed FHIR validation", mapping.type_name, getattr(row, "id", "?"))
        raise


def primary_key(mapping: ResourceMapping) -> Any:
    return mapping.model.__mapper__.primary_key[0]


def last_updated_column(mapping: ResourceMapping) -> Any:
    """When each row last changed: resource_last_updated's time, joined by `matching` (NULL for a
    row never versioned); an append-only row's own time of writing."""
    if mapping.append_only_at is not None:
        return mapping.append_only_at
    return ResourceLastUpdated.last_updated


def matching(mapping: ResourceMapping, search: SearchRequest) -> Select[Any]:
    """The search's matches, unordered: its clauses, joined to resource_last_updated when a
    clause or the sort reads it (an outer join: a sort keeps rows never versioned, last)."""
    query: Select[Any] = select(mapping.model)
    if search.joins_last_updated:
        query = query.outerjoin(
            ResourceLastUpdated,
            and_(ResourceLastUpdated.resource_type == mapping.type_name, ResourceLastUpdated.resource_id == primary_key(mapping)),
        )
    return query.where(*search.clauses)


def parse_search(
    registry: FhirRegistry, mapping: ResourceMapping, user: User, params: MultiDict[str, str], *, lenient: bool
) -> SearchRequest:
    """Turn request parameters into a SearchRequest; unknown parameters are a 400 unless the
    client asked for lenient handling, when they are ignored (and left out of the links)."""
    search = SearchRequest()
    for name in params:
        values = params.getlist(name)
        if name in RESULT_PARAMS:
            if name not in POSITION_PARAMS:
                search.used.extend((name, v) for v in values)
            continue
        if name == "_lastUpdated":
            search.joins_last_updated = mapping.append_only_at is None
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
    _set_order(search, mapping, params.getlist("_sort"))
    search.total = total_mode(params.get(TOTAL_PARAM))
    _set_position(search, mapping, params)
    summary = params.get("_summary")
    if summary is not None and summary not in SUMMARY_VALUES:
        raise InvalidInput(f"_summary={summary} is not supported; use count or false")
    search.summary_count = summary == "count"
    search.includes = [_include(mapping, value) for value in params.getlist("_include")]
    search.revincludes = [_revinclude(registry, mapping, value) for value in params.getlist("_revinclude")]
    return search


def _set_order(search: SearchRequest, mapping: ResourceMapping, sort_values: list[str]) -> None:
    """The page order, and how to walk it; after the filters are parsed."""
    search.sort = sort_keys(mapping, sort_values)
    # A date search (or _lastUpdated) matches no NULL: sorting by the same key, the walk has no
    # NULL part to visit after the values run out.
    searched = {name for name, _value in search.used}
    search.sort = [replace(key, nullable=False) if key.name in searched else key for key in search.sort]
    if search.sort[0].name == "_lastUpdated" and mapping.append_only_at is None:
        # resource_last_updated's index holds (time, resource_id): where a row has a version the
        # whole order is walked on it, the primary key read as the version row's resource_id.
        search.joined_sort = [
            replace(key, column=ResourceLastUpdated.resource_id) if key.name == "_id" else key for key in search.sort
        ]
    search.joins_last_updated = search.joins_last_updated or any(
        key.column is ResourceLastUpdated.last_updated for key in search.sort
    )


def _set_position(search: SearchRequest, mapping: ResourceMapping, params: MultiDict[str, str]) -> None:
    """Where the page starts: after a cursor's row, at an old `_page` link's offset, or at the
    beginning; a cursor must belong to this search (type, filters and sort)."""
    search.binding = search_binding(mapping.type_name, search.used)
    search.cursor = params.get(CURSOR_PARAM)
    if search.cursor is not None:
        if LEGACY_PAGE_PARAM in params:
            raise InvalidInput(f"give {CURSOR_PARAM} or {LEGACY_PAGE_PARAM}, not both")
        search.after = decode_cursor(search.cursor, search.binding, search.sort)
    elif LEGACY_PAGE_PARAM in params:
        search.page = _int_param(params, LEGACY_PAGE_PARAM, 1, 1, 10**9)


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


def sort_keys(mapping: ResourceMapping, sort_values: list[str]) -> list[SortKey]:
    """The page order `_sort` asks for, ending with the primary key: the tie-breaker that makes
    every row's position unique (a cursor names one), in the direction of the last key asked for."""
    pk = primary_key(mapping)
    keys: list[SortKey] = []
    for raw in ",".join(sort_values).split(","):
        key = raw.strip()
        if not key:
            continue
        descending = key.startswith("-")
        name = key.lstrip("-")
        if any(earlier.name == name for earlier in keys):
            continue  # a key repeated cannot reorder anything
        if name == "_id":
            keys.append(SortKey(name, pk, descending))
            break  # unique: keys after it cannot reorder anything
        if name == "_lastUpdated":
            column = last_updated_column(mapping)
            # Joined, so NULL for a row never versioned, whatever the column says.
            nullable = mapping.append_only_at is None or is_nullable(column)
            keys.append(SortKey(name, column, descending, nullable))
            continue
        param = mapping.search_params.get(name)
        if param is None or param.sort_column is None:
            raise InvalidInput(f"cannot sort {mapping.type_name} by {name!r}; use one of {sortable_params(mapping)}")
        keys.append(SortKey(name, param.sort_column, descending, is_nullable(param.sort_column)))
    if not keys or keys[-1].name != "_id":
        keys.append(SortKey("_id", pk, keys[-1].descending if keys else False))
    return keys


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
    matches = matching(mapping, search)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if search.summary_count:
        bundle["total"] = bundle_total(session, matches, "accurate", None)
        bundle["link"] = [{"relation": "self", "url": page_link(base_url, search.used)}]
        return bundle, []
    if search.count == 0:
        page: list[tuple[Any, list[Any]]] = []
    elif search.page is not None:
        page = offset_page(session, matches.options(*mapping.load_options), search.sort,
                           (search.page - 1) * search.count, search.count + 1)
    else:
        page = keyset_page(session, matches.options(*mapping.load_options), search.sort, search.after,
                           search.count + 1, joined_keys=search.joined_sort)
    more = len(page) > search.count
    page = page[: search.count]
    rows = [row for row, _values in page]
    first_page = search.after is None and search.page in (None, 1)
    total = bundle_total(session, matches, search.total, len(rows) if first_page and not more and search.count else None)
    if total is not None:
        bundle["total"] = total
    links = [{"relation": "self", "url": page_link(base_url, search.used, _position(search))}]
    if search.count:
        links.append({"relation": "first", "url": page_link(base_url, search.used)})
        if more:
            cursor = encode_cursor(search.binding, search.sort, page[-1][1])
            links.append({"relation": "next", "url": page_link(base_url, search.used, (CURSOR_PARAM, cursor))})
        if search.page is not None and search.page > 1:  # an old offset link: its previous page still exists
            links.append({"relation": "previous", "url": page_link(base_url, search.used, (LEGACY_PAGE_PARAM, str(search.page - 1)))})
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


def _position(search: SearchRequest) -> tuple[str, str] | None:
    if search.cursor is not None:
        return (CURSOR_PARAM, search.cursor)
    if search.page is not None:
        return (LEGACY_PAGE_PARAM, str(search.page))
    return None


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
