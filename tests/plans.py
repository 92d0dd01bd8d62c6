"""PostgreSQL's plans for the SQL a piece of code sends: capture the statements, EXPLAIN each, and
name the big tables any of them reads whole (the plan tests of FHIR, QIDO and the worklist)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine


@contextmanager
def statements_sent(engine: Engine | Connection, tables: set[str]) -> Iterator[list[tuple[str, Any]]]:
    """The SELECT statements (with their parameters) sent on `engine` that name any of `tables`."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and any(t in statement for t in tables):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def sequential_scans(plan: dict[str, Any], big_tables: set[str]) -> list[str]:
    """The tables of `big_tables` that a plan (EXPLAIN's "Plan" node) reads by a sequential scan."""
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in big_tables:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found += sequential_scans(child, big_tables)
    return found


def scan_problems(connection: Connection, sent: list[tuple[str, Any]], big_tables: set[str]) -> list[str]:
    """For each statement whose plan reads one of `big_tables` whole: which, and the statement."""
    problems = []
    for statement, parameters in sent:
        [[plan]] = connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).one()
        scans = sequential_scans(plan["Plan"], big_tables)
        if scans:
            problems.append(f"a sequential scan of {sorted(set(scans))} in: {statement[:300]}")
    return problems
