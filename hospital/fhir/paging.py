"""Keyset (seek) paging for FHIR searches and _history, and Bundle.total by `_total`.

A page's `next` link carries a cursor: the sort key values of the page's last row (its primary key
last), signed with the app's secret and bound to the search it came from. The next page is
`WHERE (keys) > (cursor values) ORDER BY keys LIMIT count + 1`, so PostgreSQL starts an index walk
at the cursor: page 500 costs what page 1 does (an OFFSET reads and throws away every row before
it), and rows written between two page reads neither repeat a row nor hide one.

Sorts put NULLs last in both directions. When the leading key may be NULL the walk is split in
two: the rows that have a value (an index range on it), then the rows that do not (by the
remaining keys); a cursor on a NULL leading key resumes in the second part.

Counting every match for Bundle.total is a scan of the whole match, so it is done as the client's
`_total` asks: `accurate` counts, `none` does not, `estimate` counts up to COUNT_LIMIT and past it
takes PostgreSQL's planner estimate. Without `_total` the count stops at COUNT_LIMIT: a total is
given when the match is at most that big, and left out (as the spec allows) when it is bigger.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any
from urllib.parse import urlencode

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import ColumnElement, Select, and_, false, func, literal, or_, select, tuple_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from hospital.errors import InvalidInput

logger = logging.getLogger(__name__)

CURSOR_PARAM = "_cursor"
LEGACY_PAGE_PARAM = "_page"  # offset pages: links handed out before cursors still work
TOTAL_PARAM = "_total"
TOTAL_MODES = frozenset({"none", "estimate", "accurate"})
# Past this many matches a count costs more than the page; the default leaves the total out.
COUNT_LIMIT = 1000
# Parameters that do not change which rows a search walks, nor their order: a cursor stays valid
# when a client changes them (another page size, asking for the total).
UNBOUND_PARAMS = frozenset({CURSOR_PARAM, LEGACY_PAGE_PARAM, "_count", TOTAL_PARAM, "_format"})
CURSOR_SALT = "hospital.fhir.paging.cursor"


@dataclass(frozen=True)
class SortKey:
    """One key of a page's order: the name `_sort` gave it, what to order by, which way, and
    whether it may be NULL (NULLs sort last either way)."""

    name: str
    column: Any
    descending: bool = False
    nullable: bool = False

    def order_clause(self) -> Any:
        ordered = self.column.desc() if self.descending else self.column.asc()
        # ASC is NULLS LAST already; DESC NULLS LAST only where NULLs can occur, so that a DESC
        # order on a NOT NULL column stays a backward index scan.
        return ordered.nulls_last() if self.nullable and self.descending else ordered

    @property
    def signature(self) -> str:
        return f"-{self.name}" if self.descending else self.name


def is_nullable(column: Any) -> bool:
    """Whether a mapped column (or a plain column) may hold NULL."""
    expression = getattr(column, "expression", column)
    return bool(getattr(expression, "nullable", True))


def seek_clause(keys: Sequence[SortKey], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in the order of `keys` (NULLS LAST)."""
    directions = {key.descending for key in keys}
    if len(directions) == 1 and not any(key.nullable for key in keys) and None not in values:
        # One row comparison: PostgreSQL takes it as an index range start.
        left = tuple_(*(key.column for key in keys))
        right = tuple_(*(literal(value, key.column.type) for key, value in zip(keys, values, strict=True)))
        return left < right if keys[0].descending else left > right
    options = []
    for index, (key, value) in enumerate(zip(keys, values, strict=True)):
        if value is None:
            continue  # only NULLs tie with a NULL, and nothing comes after them in this key
        beyond = key.column < value if key.descending else key.column > value
        if key.nullable:
            beyond = or_(beyond, key.column.is_(None))
        same_before = [
            earlier.column.is_(None) if earlier_value is None else earlier.column == earlier_value
            for earlier, earlier_value in zip(keys[:index], values[:index], strict=True)
        ]
        options.append(and_(*same_before, beyond))
    return or_(*options) if options else false()


def keyset_page(
    session: Session,
    statement: Select[Any],
    keys: Sequence[SortKey],
    after: Sequence[Any] | None,
    limit: int,
    *,
    joined_keys: Sequence[SortKey] | None = None,
) -> list[tuple[Any, list[Any]]]:
    """Up to `limit` rows of `statement` after the cursor values `after` (None: from the start),
    each with its sort key values (for the next cursor).

    `joined_keys`: the keys to walk where the leading key is present, when a joined table's
    column equals one of `keys` there and lets one index serve the whole order (the version
    table's resource_id for the primary key under `_sort=_lastUpdated`).
    """
    lead = keys[0]
    if not lead.nullable:
        return _fetch(session, statement, joined_keys or keys, after, limit)
    rows: list[tuple[Any, list[Any]]] = []
    if after is None or after[0] is not None:
        present = list(joined_keys or keys)
        present[0] = replace(present[0], nullable=False)
        rows = _fetch(session, statement.where(lead.column.is_not(None)), present, after, limit)
    if len(rows) < limit:
        resume = list(after[1:]) if after is not None and after[0] is None else None
        rest = _fetch(session, statement.where(lead.column.is_(None)), keys[1:], resume, limit - len(rows))
        rows += [(row, [None, *values]) for row, values in rest]
    return rows


def offset_page(
    session: Session, statement: Select[Any], keys: Sequence[SortKey], offset: int, limit: int
) -> list[tuple[Any, list[Any]]]:
    """The old `_page` paging, for links handed out before cursors: costs grow with the offset."""
    query = statement.add_columns(*(key.column for key in keys)).order_by(*(key.order_clause() for key in keys))
    return [(row[0], list(row[1:])) for row in session.execute(query.limit(limit).offset(offset))]


def _fetch(
    session: Session, statement: Select[Any], keys: Sequence[SortKey], after: Sequence[Any] | None, limit: int
) -> list[tuple[Any, list[Any]]]:
    query = statement.add_columns(*(key.column for key in keys))
    if after is not None:
        query = query.where(seek_clause(keys, after))
    query = query.order_by(*(key.order_clause() for key in keys)).limit(limit)
    return [(row[0], list(row[1:])) for row in session.execute(query)]


# --- cursors -------------------------------------------------------------------------------------


def search_binding(scope: str, params: Sequence[tuple[str, str]]) -> str:
    """What a cursor is bound to: the resource type (or history) and the parameters that choose
    and order the rows, in any order the client sends them."""
    bound = sorted((name, value) for name, value in params if name not in UNBOUND_PARAMS)
    digest = hashlib.sha256(json.dumps([scope, bound]).encode()).hexdigest()
    return digest[:32]


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.secret_key or "", salt=CURSOR_SALT)


def encode_cursor(binding: str, keys: Sequence[SortKey], values: Sequence[Any]) -> str:
    payload = {"b": binding, "k": [key.signature for key in keys], "v": [_json_value(v) for v in values]}
    return str(_serializer().dumps(payload))


def decode_cursor(token: str, binding: str, keys: Sequence[SortKey]) -> list[Any]:
    """The sort key values a cursor holds; a cursor that was altered, or made for another search
    (another type, filter or sort), is InvalidInput (a 400 OperationOutcome)."""
    try:
        payload = _serializer().loads(token)
    except BadSignature as exc:
        raise InvalidInput(f"{CURSOR_PARAM} is not a cursor this server made (altered or expired); start from the first page") from exc
    if not isinstance(payload, dict) or payload.get("b") != binding or payload.get("k") != [k.signature for k in keys]:
        raise InvalidInput(f"{CURSOR_PARAM} belongs to another search; follow the links of this search's Bundle")
    raw = payload.get("v")
    if not isinstance(raw, list) or len(raw) != len(keys):
        raise InvalidInput(f"{CURSOR_PARAM} is malformed; start from the first page")
    try:
        return [_python_value(key, value) for key, value in zip(keys, raw, strict=True)]
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{CURSOR_PARAM} is malformed; start from the first page") from exc


def _json_value(value: Any) -> Any:
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


def _python_value(key: SortKey, value: Any) -> Any:
    if value is None:
        return None
    column_type = key.column.type
    kind = getattr(column_type, "impl", column_type).python_type  # a TypeDecorator says `object`
    if kind is datetime:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("a cursor time without its zone")
        return parsed
    if kind is date:
        return date.fromisoformat(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise TypeError(f"cursor value {value!r} is not a {kind.__name__}")


def page_link(base_url: str, params: Sequence[tuple[str, str]], position: tuple[str, str] | None = None) -> str:
    """A link to a page of the search: its parameters, and the cursor (or old page number)."""
    query = [*params, position] if position is not None else list(params)
    return f"{base_url}?{urlencode(query)}" if query else base_url


# --- Bundle.total --------------------------------------------------------------------------------


def total_mode(raw: str | None) -> str | None:
    """The `_total` value asked for (None: not asked); an unknown one is a 400."""
    if raw is not None and raw not in TOTAL_MODES:
        raise InvalidInput(f"{TOTAL_PARAM}={raw} is not supported; use one of {sorted(TOTAL_MODES)}")
    return raw


def bundle_total(session: Session, statement: Select[Any], mode: str | None, known: int | None) -> int | None:
    """Bundle.total of the rows `statement` selects, as `mode` asks; `known` is the exact number
    when the page already holds every match (a first page with no next), which costs no count."""
    if mode == "none":
        return None
    if known is not None:
        return known
    unordered = statement.order_by(None)
    if mode == "accurate":
        return session.scalar(select(func.count()).select_from(unordered.subquery())) or 0
    bounded = session.scalar(select(func.count()).select_from(unordered.limit(COUNT_LIMIT + 1).subquery())) or 0
    if bounded <= COUNT_LIMIT:
        return bounded
    if mode == "estimate":
        return max(COUNT_LIMIT + 1, planner_estimate(session, unordered) or 0)
    return None


class _Explain(Executable, ClauseElement):
    """EXPLAIN (FORMAT JSON) of a statement, with its parameters bound as a query's would be."""

    inherit_cache = False

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return "EXPLAIN (FORMAT JSON) " + compiler.process(element.statement, **kw)


def planner_estimate(session: Session, statement: Select[Any]) -> int | None:
    """PostgreSQL's estimate of how many rows `statement` returns (its plan, not a count)."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    [[plan]] = session.execute(_Explain(statement)).all()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])
