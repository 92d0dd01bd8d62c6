"""An audit trail you can defend (issue 13, finding 7): each row is hash-chained to the one before
it (on PostgreSQL by a trigger, safe under concurrent inserts), `hospital audit verify` finds the
first row changed or removed behind the application's back, even by a superuser who switched the
triggers off, and TRUNCATE is refused. The role the application connects as
(`hospital db grant-app-role`) may only read and append the trail, and cannot switch triggers off."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from hospital.audit import GENESIS_HASH, record_access, row_hash, verify_chain
from hospital.cli import cli
from hospital.migrate import grant_app_role, upgrade
from hospital.models import AuditEvent


def write_events(session: Session, count: int) -> list[AuditEvent]:
    events = [record_access(session, None, "R", "Patient", i, description=f"read | {i} 'quoted' ∆") for i in range(count)]
    session.flush()
    return events


def as_superuser_without_triggers(session: Session, statement: str) -> None:
    """What the database's owner can always do: switch the triggers off for a moment."""
    session.execute(text("SET LOCAL session_replication_role = replica"))
    session.execute(text(statement))
    session.execute(text("SET LOCAL session_replication_role = origin"))


def verify_by_cli(app: Flask) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(cli, ["audit", "verify"])
    return result.exit_code, result.output


def test_each_row_is_chained_to_the_one_before_it(app: Flask, db_session: Session) -> None:
    events = write_events(db_session, 3)
    for before, after in itertools.pairwise(events):
        assert after.id > before.id and after.prev_hash == before.row_hash
    assert all(e.row_hash == row_hash(e, e.prev_hash or "") for e in events)  # Python and SQL agree
    report = verify_chain(db_session)
    assert report.broken is None and report.head_hash == events[-1].row_hash
    code, output = verify_by_cli(app)
    assert code == 0 and "audit chain intact" in output


def test_the_chain_cannot_be_forged_by_the_application(db_session: Session) -> None:
    forged = AuditEvent(action="R", entity_type="Patient", prev_hash=GENESIS_HASH, row_hash="f" * 64)
    db_session.add(forged)
    db_session.flush()
    db_session.refresh(forged)
    assert forged.row_hash != "f" * 64 and verify_chain(db_session).broken is None


def test_verify_reports_a_row_a_superuser_changed(app: Flask, db_session: Session) -> None:
    events = write_events(db_session, 4)
    target = events[2]
    as_superuser_without_triggers(db_session, f"UPDATE audit_event SET description = 'nothing to see' WHERE id = {target.id}")
    db_session.expire_all()
    broken = verify_chain(db_session).broken
    assert broken is not None and broken.event_id == target.id and "changed" in broken.reason
    code, output = verify_by_cli(app)
    assert code == 1 and f"broken at audit_event {target.id}" in output


def test_verify_reports_a_row_a_superuser_deleted(db_session: Session) -> None:
    events = write_events(db_session, 4)
    as_superuser_without_triggers(db_session, f"DELETE FROM audit_event WHERE id = {events[1].id}")
    db_session.expire_all()
    broken = verify_chain(db_session).broken
    assert broken is not None and broken.event_id == events[2].id and "prev_hash" in broken.reason


@pytest.mark.parametrize("statement", [
    "TRUNCATE audit_event", "TRUNCATE audit_event CASCADE", "UPDATE audit_event SET description = 'x'",
    "DELETE FROM audit_event",
])
def test_truncate_update_and_delete_are_refused(db_session: Session, statement: str) -> None:
    write_events(db_session, 1)
    with pytest.raises(DBAPIError, match="append-only"):
        with db_session.begin_nested():
            db_session.execute(text(statement))


def test_concurrent_inserts_keep_one_chain(live_database: str) -> None:
    engine = create_engine(live_database, pool_size=8)
    factory = sessionmaker(bind=engine)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(15):
                with factory.begin() as session:
                    record_access(session, None, "R", "Patient", f"{n}-{i}", source="test")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with factory() as session:
        report = verify_chain(session)
    engine.dispose()
    assert report.broken is None and report.rows >= 90


def test_sqlite_chains_in_python(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chain.db'}"
    upgrade(url)
    engine = create_engine(url)
    with sessionmaker(bind=engine).begin() as session:
        events = write_events(session, 3)
        assert events[0].prev_hash == GENESIS_HASH and events[1].prev_hash == events[0].row_hash
    with sessionmaker(bind=engine)() as session:
        assert verify_chain(session).broken is None
    engine.dispose()


def test_the_cli_command_is_registered(app: Flask, db_session: Session) -> None:
    assert "verify" in app.test_cli_runner().invoke(cli, ["audit", "--help"]).output



@pytest.fixture()
def app_role_url(database_url: str) -> Iterator[str]:
    role = f"hospital_app_{uuid.uuid4().hex[:8]}"
    grant_app_role(database_url, role)
    grant_app_role(database_url, role)  # a second run changes nothing
    yield make_url(database_url).set(username=role, password=None).render_as_string(hide_password=False)
    owner = create_engine(database_url)
    with owner.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
        conn.execute(text(f'DROP ROLE "{role}"'))
    owner.dispose()


def test_the_app_role_may_only_read_and_append_the_audit_trail(app_role_url: str) -> None:
    engine = create_engine(app_role_url)
    try:
        with sessionmaker(bind=engine).begin() as session:
            event = record_access(session, None, "R", "Patient", 1, source="test")
            session.flush()
            event_id = event.id
            session.execute(text("SELECT count(*) FROM patient"))
        for statement in (f"UPDATE audit_event SET description = 'x' WHERE id = {event_id}",
                          f"DELETE FROM audit_event WHERE id = {event_id}", "TRUNCATE audit_event",
                          "SET session_replication_role = replica",
                          # A checkpoint would let the owner delete rows up to it (retention).
                          "INSERT INTO audit_checkpoint (first_event_id, up_to_event_id, rows, head_hash, archive_name, "
                          "archive_sha256, created_at) VALUES (1, 999999999, 1, 'x', 'x', 'x', now())",
                          "ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only"):
            with engine.connect() as conn, pytest.raises(DBAPIError, match="permission denied|must be owner"):
                conn.execute(text(statement))
    finally:
        engine.dispose()


def test_the_app_role_cannot_erase_an_emergency_access_grant(app_role_url: str) -> None:
    """A grant is reviewed (UPDATE), never removed: a break of the glass stays on record."""
    engine = create_engine(app_role_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT count(*) FROM emergency_access"))
            conn.execute(text("UPDATE emergency_access SET review_note = review_note WHERE false"))
        for statement in ("DELETE FROM emergency_access", "TRUNCATE emergency_access"):
            with engine.connect() as conn, pytest.raises(DBAPIError, match="permission denied"):
                conn.execute(text(statement))
    finally:
        engine.dispose()
