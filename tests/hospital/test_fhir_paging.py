"""Keyset paging of FHIR searches and _history (issue 18): walking the `next` links returns every
match exactly once and in order, even when rows are written between page reads, for ascending and
descending sorts, ties and NULLs; cursors are tamper-evident and bound to their search; Bundle.total
follows `_total`; and PostgreSQL's plan for a deep page is an index walk, with no OFFSET.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
from flask import Flask
from sqlalchemy import event, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from hospital.db import get_db
from hospital.fhir.paging import COUNT_LIMIT, encode_cursor, search_binding
from hospital.fhir.registry import fhir_registry
from hospital.fhir.routes import HISTORY_ORDER
from hospital.fhir.search import parse_search, sortable_params
from hospital.models import Patient, ResourceLastUpdated, User
from hospital.seed import DemoSeed

FAMILY = "Keysetwalk"
_numbers = itertools.count(1)


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response.get_json()


def relative(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((relative(link["url"]) for link in bundle["link"] if link["relation"] == "next"), None)


def add_patient(session: Session, birth_date: date | None) -> int:
    patient = Patient(mrn=f"KS-{next(_numbers)}-{id(session)}", family_name=FAMILY, given_name="Walker",
                      birth_date=birth_date)
    session.add(patient)
    session.commit()  # its version (and resource_last_updated row) is written by the flush
    return patient.id


def add_unversioned_patient(session: Session, birth_date: date | None) -> int:
    """A patient written around the app (a bulk load): no version, so no meta.lastUpdated."""
    return int(session.scalar(text(
        "INSERT INTO patient (mrn, family_name, given_name, birth_date, gender, timezone, created_at, updated_at) "
        "VALUES (:mrn, :family, 'Bulk', :birth, 'unknown', 'UTC', now(), now()) RETURNING id"),
        {"mrn": f"KS-bulk-{next(_numbers)}", "family": FAMILY, "birth": birth_date}))


def expected_order(session: Session, ids: set[int], sort: str) -> list[int]:
    """The order the server promises, computed here in Python: NULLs last in either direction,
    the id last, in the direction of the last key named."""
    birth = {p.id: p.birth_date for p in session.scalars(select(Patient).where(Patient.id.in_(ids)))}
    updated = {r.resource_id: r.last_updated for r in session.scalars(
        select(ResourceLastUpdated).where(ResourceLastUpdated.resource_type == "Patient", ResourceLastUpdated.resource_id.in_(ids)))}
    getters: dict[str, Callable[[int], Any]] = {"birthdate": birth.get, "_lastUpdated": updated.get, "_id": lambda i: i}
    keys = [(name.lstrip("-"), name.startswith("-")) for name in sort.split(",")]
    if keys[-1][0] != "_id":
        keys.append(("_id", keys[-1][1]))
    rows = sorted(ids)
    for name, descending in reversed(keys):  # stable sorts, least significant key first
        present = sorted((i for i in rows if getters[name](i) is not None), key=getters[name], reverse=descending)
        rows = present + [i for i in rows if getters[name](i) is None]
    return rows


SORTS = ["_id", "-_id", "birthdate", "-birthdate", "_lastUpdated", "-_lastUpdated", "birthdate,-_lastUpdated",
         "-birthdate,_id"]


@pytest.mark.parametrize("sort", SORTS)
def test_walking_next_links_returns_each_match_once_in_order_while_rows_are_added(
    as_role: Any, demo: DemoSeed, db_session: Session, sort: str
) -> None:
    # Ties (three share a birth date, and the versions of one flush share a time) and NULLs.
    births = [date(1980, 1, 1), date(1975, 5, 5), date(1975, 5, 5), None, date(1990, 3, 3), date(1975, 5, 5),
              None, date(1960, 7, 7), date(1985, 2, 2)]
    original = {add_patient(db_session, birth) for birth in births}
    original.add(add_unversioned_patient(db_session, date(1975, 5, 5)))
    original.add(add_unversioned_patient(db_session, None))
    admin = as_role("admin")
    url: str | None = f"/fhir/Patient?family={FAMILY}&_sort={sort}&_count=3"
    walked: list[int] = []
    written = iter([date(1900, 1, 1), date(2020, 1, 1), None, date(1975, 5, 5), date(1985, 2, 2), None, date(1975, 5, 5),
                    date(1960, 7, 7)])
    while url:
        bundle = ok(admin.get(url))
        walked.extend(int(e["resource"]["id"]) for e in bundle.get("entry", []))
        url = next_link(bundle)
        if url and len(walked) <= 12:
            # Rows written between page reads: before the cursor (not seen), after it (seen once).
            add_patient(db_session, next(written))
            add_unversioned_patient(db_session, next(written))
        assert len(walked) < 60, "the walk does not end"
    assert len(walked) == len(set(walked)), f"a row came twice: {walked}"
    assert original <= set(walked), f"rows missed: {original - set(walked)}"
    assert walked == expected_order(db_session, set(walked), sort)


def test_history_walk_returns_each_version_once_newest_first(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    ids = [add_patient(db_session, None) for _ in range(4)]
    admin = as_role("admin")
    before = ok(admin.get("/fhir/Patient/_history?_count=1000"))
    known = [(e["fullUrl"], e["response"]["etag"]) for e in before["entry"]]
    url: str | None = "/fhir/Patient/_history?_count=2"
    walked: list[tuple[str, str]] = []
    while url:
        bundle = ok(admin.get(url))
        walked.extend((e["fullUrl"], e["response"]["etag"]) for e in bundle.get("entry", []))
        url = next_link(bundle)
        if url:
            add_patient(db_session, None)  # newest: before the cursor, so not in this walk
        assert len(walked) < 500
    assert walked == known
    assert {f"Patient/{i}" for i in ids} <= {url.split("/fhir/")[1] for url, _etag in walked}


def test_a_tampered_or_foreign_cursor_is_a_400(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    for birth in (None, date(1970, 1, 1), date(1971, 1, 1)):
        add_patient(db_session, birth)
    admin = as_role("admin")
    link = next_link(ok(admin.get(f"/fhir/Patient?family={FAMILY}&_sort=birthdate&_count=1")))
    assert link is not None
    cursor = parse_qs(urlsplit(link).query)["_cursor"][0]
    assert ok(admin.get(link))["entry"]

    def refused(url: str, words: str) -> None:
        response = admin.get(url)
        assert response.status_code == 400, response.get_data(as_text=True)
        body = response.get_json()
        assert body["resourceType"] == "OperationOutcome" and words in body["issue"][0]["diagnostics"]

    tampered = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    refused(f"/fhir/Patient?family={FAMILY}&_sort=birthdate&_count=1&_cursor={tampered}", "not a cursor this server made")
    refused(f"/fhir/Patient?family={FAMILY}&_sort=birthdate&_count=1&_cursor=nonsense", "not a cursor this server made")
    refused(f"/fhir/Patient?family=Other&_sort=birthdate&_count=1&_cursor={cursor}", "another search")
    refused(f"/fhir/Patient?family={FAMILY}&_sort=-birthdate&_count=1&_cursor={cursor}", "another search")
    refused(f"/fhir/Practitioner?_sort=birthdate&_cursor={cursor}", "")  # Practitioner cannot sort by birthdate
    refused(f"/fhir/Patient?family={FAMILY}&_sort=birthdate&_page=2&_cursor={cursor}", "not both")
    refused("/fhir/Patient/_history?_cursor=" + cursor, "another search")
    # The page size and _total may change along the way: they do not move the walk.
    assert ok(admin.get(f"/fhir/Patient?_count=5&_total=accurate&family={FAMILY}&_sort=birthdate&_cursor={cursor}"))["entry"]


def test_total_follows_the_total_parameter(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    for _ in range(3):
        add_patient(db_session, None)
    admin = as_role("admin")
    base = f"/fhir/Patient?family={FAMILY}"
    assert ok(admin.get(base))["total"] == 3
    assert ok(admin.get(f"{base}&_count=1"))["total"] == 3  # bounded count: the match is small
    assert "total" not in ok(admin.get(f"{base}&_total=none"))
    assert ok(admin.get(f"{base}&_total=estimate&_count=1"))["total"] == 3
    second = next_link(ok(admin.get(f"{base}&_count=2&_total=accurate")))
    assert second is not None and ok(admin.get(second))["total"] == 3
    assert "_total" in ok(admin.get(f"{base}&_total=maybe"), 400)["issue"][0]["diagnostics"]

    db_session.execute(text(
        "INSERT INTO patient (mrn, family_name, given_name, gender, timezone, created_at, updated_at) "
        "SELECT 'KS-many-' || n, :family, 'Many', 'unknown', 'UTC', now(), now() FROM generate_series(1, :rows) AS n"),
        {"family": FAMILY, "rows": COUNT_LIMIT + 100})
    db_session.commit()
    matches = COUNT_LIMIT + 103
    assert "total" not in ok(admin.get(f"{base}&_count=1"))  # past the limit: not counted by default
    assert ok(admin.get(f"{base}&_count=1&_total=accurate"))["total"] == matches
    assert ok(admin.get(f"{base}&_count=1&_summary=count"))["total"] == matches
    assert ok(admin.get(f"{base}&_count=1&_total=estimate"))["total"] > COUNT_LIMIT  # the planner's guess


# --- plans ---------------------------------------------------------------------------------------

ROWS = 30_000
BIG_TABLES = {"patient", "resource_last_updated", "resource_version"}
DEPTH = 20_000  # the row a deep cursor points at: page 2,000 at _count=10


def load(session: Session) -> None:
    """30,000 patients, each with a version (times that tie in runs of 10; the trigger writes its
    resource_last_updated row), ANALYZEd."""
    session.execute(text(
        "INSERT INTO patient (mrn, family_name, given_name, gender, timezone, created_at, updated_at) "
        "SELECT 'PL-' || n, 'Plan' || n, 'Given', 'unknown', 'UTC', now(), now() FROM generate_series(1, :rows) AS n"),
        {"rows": ROWS})
    session.execute(text(
        "INSERT INTO resource_version (resource_type, resource_id, version_id, last_updated, method, patient_id) "
        "SELECT 'Patient', id, 1, now() - (id / 10) * interval '1 second', 'POST', id FROM patient WHERE mrn LIKE 'PL-%'"))
    for table in BIG_TABLES:
        session.execute(text(f"ANALYZE {table}"))
    session.commit()


READS_BIG_TABLE = re.compile(r"\b(?:FROM|JOIN) (?:patient|resource_version|resource_last_updated)\b")


@contextmanager
def statements_sent(app: Flask) -> Iterator[list[tuple[str, Any]]]:
    """The SELECTs the request sends that read a big table."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and READS_BIG_TABLE.search(statement):
            sent.append((statement, parameters))

    engine = get_db(app).engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plan_problems(plan: dict[str, Any], under_limit: bool = False) -> list[str]:
    """A sequential scan of a big table (unless a LIMIT stops it early), or a sort: a page that
    reads the whole match before returning its rows."""
    found = []
    node = plan.get("Node Type")
    if node == "Seq Scan" and plan.get("Relation Name") in BIG_TABLES and not under_limit:
        found.append(f"Seq Scan on {plan['Relation Name']}")
    if node in ("Sort", "Incremental Sort"):
        found.append(node)
    for child in plan.get("Plans", []):
        found += plan_problems(child, under_limit or node == "Limit")
    return found


def index_scans(plan: dict[str, Any]) -> list[str]:
    found = [plan["Relation Name"]] if "Index" in plan.get("Node Type", "") and "Relation Name" in plan else []
    for child in plan.get("Plans", []):
        found += index_scans(child)
    return found


def deep_search_cursor(app: Flask, session: Session, query: str, value_sql: str) -> str:
    """The cursor a client holds after DEPTH rows of `Patient?<query>&_count=10` (made as the
    server makes one, instead of walking 2,000 pages)."""
    values = list(session.execute(text(value_sql), {"offset": DEPTH}).one())
    admin = session.scalars(select(User).where(User.username == "admin")).one()
    with app.test_request_context():
        search = parse_search(fhir_registry(), fhir_registry().mappings["Patient"], admin,
                              MultiDict([*parse_qsl(query), ("_count", "10")]), lenient=False)
        return encode_cursor(search.binding, search.sort, values)


PATIENTS_BY_ID = "SELECT id FROM patient ORDER BY id LIMIT 1 OFFSET :offset"
PATIENTS_BY_UPDATE = ("SELECT r.last_updated, r.resource_id FROM resource_last_updated r WHERE r.resource_type = 'Patient' "
                      "ORDER BY r.last_updated {0}, r.resource_id {0} LIMIT 1 OFFSET :offset")


@pytest.mark.parametrize(("query", "value_sql"), [
    ("_sort=_id", PATIENTS_BY_ID),
    ("_sort=-_id", PATIENTS_BY_ID.replace("ORDER BY id", "ORDER BY id DESC")),
    ("_sort=_lastUpdated", PATIENTS_BY_UPDATE.format("ASC")),
    ("_sort=-_lastUpdated", PATIENTS_BY_UPDATE.format("DESC")),
    ("_sort=-_lastUpdated&_lastUpdated=ge2000-01-01", PATIENTS_BY_UPDATE.format("DESC")),
])
def test_a_deep_search_page_is_an_index_walk_without_offset(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, query: str, value_sql: str
) -> None:
    if db_session.bind is None or db_session.bind.dialect.name != "postgresql":
        pytest.skip("plans are PostgreSQL's")
    load(db_session)
    cursor = deep_search_cursor(app, db_session, query, value_sql)
    admin = as_role("admin")
    with statements_sent(app) as sent:
        bundle = ok(admin.get(f"/fhir/Patient?{query}&_count=10&_cursor={cursor}"))
    assert len(bundle["entry"]) == 10 and next_link(bundle)
    assert "total" not in bundle  # 30,000 matches: past the count limit
    check_plans(db_session, sent, "patient")


def test_a_deep_history_page_is_an_index_walk_without_offset(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    if db_session.bind is None or db_session.bind.dialect.name != "postgresql":
        pytest.skip("plans are PostgreSQL's")
    load(db_session)
    values = list(db_session.execute(text(
        "SELECT last_updated, id FROM resource_version WHERE resource_type = 'Patient' "
        "ORDER BY last_updated DESC, id DESC LIMIT 1 OFFSET :offset"), {"offset": DEPTH}).one())
    with app.test_request_context():
        cursor = encode_cursor(search_binding("history Patient", []), HISTORY_ORDER, values)
    admin = as_role("admin")
    with statements_sent(app) as sent:
        bundle = ok(admin.get(f"/fhir/Patient/_history?_count=10&_cursor={cursor}"))
    assert len(bundle["entry"]) == 10 and next_link(bundle)
    check_plans(db_session, sent, "resource_version")


def check_plans(session: Session, sent: list[tuple[str, Any]], walked_table: str) -> None:
    pages = [(statement, parameters) for statement, parameters in sent if "ORDER BY" in statement and walked_table in statement]
    assert pages, "the page's SQL was not captured"
    connection = session.connection()
    problems = []
    for statement, parameters in sent:
        [[plan]] = connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).one()
        found = plan_problems(plan["Plan"])
        if found:
            problems.append(f"{found} in: {statement[:400]}")
    assert not problems, "\n".join(problems)
    for statement, parameters in pages:
        assert "OFFSET" not in statement.upper()
        [[plan]] = connection.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).one()
        assert set(index_scans(plan["Plan"])) & BIG_TABLES, f"no index walk in: {statement[:400]}"
        # The walk starts at the cursor: it reads about a page, not the DEPTH rows before it.
        assert rows_read(plan["Plan"]) < 100, f"{rows_read(plan['Plan'])} rows read for a page of 10: {statement[:400]}"


def rows_read(plan: dict[str, Any]) -> int:
    """Rows the scans of a plan that ran produced or filtered out, over all their loops."""
    read = 0
    if "Scan" in plan.get("Node Type", ""):
        loops = plan.get("Actual Loops", 1)
        read += (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops
    return read + sum(rows_read(child) for child in plan.get("Plans", []))


def test_resource_last_updated_follows_each_new_version(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    """The trigger on resource_version keeps one row per record at its latest version, whoever
    writes the version (here the app's own writer, through a FHIR update)."""
    patient_id = add_patient(db_session, date(1970, 1, 1))
    admin = as_role("admin")
    current = ok(admin.get(f"/fhir/Patient/{patient_id}"))
    updated = ok(admin.put(f"/fhir/Patient/{patient_id}", json={**current, "birthDate": "1971-01-01"}))
    row = db_session.get(ResourceLastUpdated, ("Patient", patient_id))
    assert row is not None and row.version_id == 2 == int(updated["meta"]["versionId"])
    assert row.last_updated.isoformat() == updated["meta"]["lastUpdated"]
    # An older version written late (a replay) does not move it back.
    db_session.execute(text(
        "INSERT INTO resource_version (resource_type, resource_id, version_id, last_updated, method) "
        "VALUES ('Patient', :id, 0, now(), 'PUT')"), {"id": patient_id})
    db_session.expire_all()
    assert db_session.get(ResourceLastUpdated, ("Patient", patient_id)).version_id == 2
    newest = ok(admin.get(f"/fhir/Patient?family={FAMILY}&_sort=-_lastUpdated&_count=1"))
    assert newest["entry"][0]["resource"]["id"] == str(patient_id)


def test_every_sort_of_every_type_walks_without_repeats(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    """Each key `_sort` accepts, both ways, on every type: cursors of dates, times and ids (and of
    NULLs) come back as they went out, and a walk never repeats a row."""
    add_patient(db_session, None)
    add_patient(db_session, date(1999, 9, 9))
    admin = as_role("admin")
    walked_any = 0
    for type_name, mapping in sorted(fhir_registry().mappings.items()):
        if not mapping.readable_by(admin_role(db_session)):
            continue
        for name in sortable_params(mapping):
            for sort in (name, f"-{name}"):
                url: str | None = f"/fhir/{type_name}?_sort={sort}&_count=1"
                seen: list[str] = []
                while url and len(seen) < 4:
                    bundle = ok(admin.get(url))
                    seen.extend(e["resource"]["id"] for e in bundle.get("entry", []))
                    url = next_link(bundle)
                assert len(seen) == len(set(seen)), f"{type_name}?_sort={sort} repeated a row: {seen}"
                walked_any += len(seen) > 1
    assert walked_any > 20  # the demo data gives most types more than one row


def admin_role(session: Session) -> Any:
    return session.scalars(select(User).where(User.username == "admin")).one().role
