"""The audit rows of reads are written in a group commit, just before the response leaves (issue
#18): concurrent reads share one transaction, each response waits until its own row is durable, and
a read whose row cannot be written is not answered. A live threaded server on the run's database,
so transactions are real; the audit chain's lock is held from outside to line requests up."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine
from werkzeug.exceptions import NotFound

from hospital.app import create_app
from hospital.audit import record_access, verify_chain
from hospital.db import get_db, request_session
from hospital.models import AuditEvent
from hospital.seed import DEMO_PASSWORD, seed_demo
from tests.chaos.processes import wait_until
from tests.imaging_orders.test_dicomweb_client_live import serving

pytestmark = pytest.mark.usefixtures("live_database")

# The advisory lock the audit trigger takes (migration 0012): whoever holds it holds every audit insert.
CHAIN_LOCK_KEY = 7_314_159_265
CONCURRENT = 8


@pytest.fixture()
def served(live_database: str, tmp_path: Path) -> Iterator[tuple[Flask, str, int, str]]:
    app = create_app({"DATABASE_URL": live_database, "REDIS_URL": None, "SECRET_KEY": "test-secret",
                      "INSTANCE_DIR": tmp_path, "LOGIN_ATTEMPTS_PER_MINUTE": 100_000})
    with app.app_context(), get_db(app).transaction() as session:
        patient_id = seed_demo(session, app).patient.id
    with serving(app) as base:
        request = urllib.request.Request(base + "/api/auth/token", method="POST",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"username": "patient", "password": DEMO_PASSWORD}).encode())
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own local server
            token = json.loads(response.read())["access_token"]
        yield app, base, patient_id, token


@pytest.fixture()
def side(live_database: str) -> Iterator[Engine]:
    engine = create_engine(live_database)
    yield engine
    engine.dispose()


def get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own local server
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def waiting_on_the_chain_lock(side: Engine) -> int:
    with side.connect() as conn:
        return int(conn.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")) or 0)


def burst_behind_the_chain_lock(side: Engine, urls: list[str], token: str) -> list[tuple[int, bytes]]:
    """Send the requests at once while the audit chain is locked from outside; release the lock
    once the first audit write is waiting for it and every request has had time to arrive."""
    with side.connect() as holder, ThreadPoolExecutor(len(urls)) as pool:
        holder.execute(text("BEGIN"))
        holder.execute(text(f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})"))
        futures = [pool.submit(get, url, token) for url in urls]
        wait_until("an audit write waiting for the chain's lock", lambda: waiting_on_the_chain_lock(side) >= 1, 20)
        wait_until("every request to be in the server", lambda: all(not f.done() for f in futures), 1)
        threading.Event().wait(1.0)  # the rest reach the group commit and wait behind its leader
        holder.execute(text("COMMIT"))
        return [f.result() for f in futures]


def read_audits(app: Flask, since: int) -> list[tuple[int, str, str]]:
    with app.app_context(), get_db(app).transaction() as session:
        rows = session.execute(text(
            "SELECT id, xmin::text, action FROM audit_event WHERE id > :since AND entity_type IN ('Patient', 'Observation')"
            " ORDER BY id"), {"since": since}).all()
        return [(r[0], r[1], r[2]) for r in rows]


def last_audit_id(app: Flask) -> int:
    with app.app_context(), get_db(app).transaction() as session:
        return int(session.scalar(select(func.coalesce(func.max(AuditEvent.id), 0))) or 0)


def test_concurrent_reads_share_one_audit_transaction_and_each_is_audited(served, side) -> None:  # type: ignore[no-untyped-def]
    app, base, patient_id, token = served
    before = last_audit_id(app)
    urls = [f"{base}/fhir/Patient/{patient_id}"] * (CONCURRENT - 2) + [f"{base}/fhir/Observation?_count=5"] * 2
    answers = burst_behind_the_chain_lock(side, urls, token)

    assert [status for status, _ in answers] == [200] * CONCURRENT
    rows = read_audits(app, before)
    assert [action for _, _, action in rows].count("R") == CONCURRENT - 2
    assert [action for _, _, action in rows].count("E") == 2  # the two searches
    transactions = {xmin for _, xmin, _ in rows}
    # One transaction per read before the group commit; now the reads that queued behind the
    # first write went in together.
    assert len(transactions) <= 2, f"{len(rows)} audit rows in {len(transactions)} transactions"
    with app.app_context(), get_db(app).transaction() as session:
        assert verify_chain(session).broken is None


def test_a_read_whose_audit_row_cannot_be_written_is_not_answered(served, side) -> None:  # type: ignore[no-untyped-def]
    app, base, patient_id, token = served
    status, body = get(f"{base}/fhir/Patient/{patient_id}", token)
    assert status == 200
    family = json.loads(body)["name"][0]["family"]
    before = last_audit_id(app)
    with side.begin() as conn:
        conn.execute(text("CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$ BEGIN RAISE EXCEPTION 'audit storage refused the row'; END $$"))
        conn.execute(text("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION refuse_audit()"))
    try:
        answers = burst_behind_the_chain_lock(
            side, [f"{base}/fhir/Patient/{patient_id}"] * 4 + [f"{base}/fhir/Observation?_count=5"] * 2, token)
    finally:
        with side.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_audit ON audit_event"))
            conn.execute(text("DROP FUNCTION refuse_audit()"))
    for status, body in answers:
        assert status == 503
        problem = json.loads(body)
        assert problem["resourceType"] == "OperationOutcome" or "title" in problem
        assert family.encode() not in body  # nothing of the record left with the refusal
    assert read_audits(app, before) == []

    # Audit storage back: reads are answered and audited again.
    status, _ = get(f"{base}/fhir/Patient/{patient_id}", token)
    assert status == 200
    assert [action for _, _, action in read_audits(app, before)] == ["R"]


def test_a_read_that_fails_after_its_audit_was_noted_leaves_no_row_and_outside_a_request_the_row_is_the_callers(
    live_database: str, tmp_path: Path,
) -> None:
    app = create_app({"DATABASE_URL": live_database, "REDIS_URL": None, "SECRET_KEY": "test-secret",
                      "INSTANCE_DIR": tmp_path})

    def read_then_fail(outcome: str) -> str:
        record_access(request_session(), None, "R", "Patient", 1, source="test")
        if outcome == "fail":
            raise NotFound("the rest of the answer could not be made")
        return "answered"

    app.add_url_rule("/test-read/<outcome>", view_func=read_then_fail)
    try:
        before = last_audit_id(app)
        client = app.test_client()
        assert client.get("/test-read/fail").status_code == 404
        assert read_audits(app, before) == []  # nothing was delivered, so nothing is recorded as read
        assert client.get("/test-read/ok").status_code == 200
        assert [action for _, _, action in read_audits(app, before)] == ["R"]

        # Outside a dispatched request (a job, or a service called in a bare request context), the
        # row is part of the caller's own work, as every other audit row: nothing waits for a response.
        with app.test_request_context("/"), get_db(app).transaction() as session:
            record_access(session, None, "R", "Patient", 1, source="test")
        assert [action for _, _, action in read_audits(app, before)] == ["R", "R"]
    finally:
        get_db(app).engine.dispose()
