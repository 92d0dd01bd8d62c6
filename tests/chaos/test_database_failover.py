"""PostgreSQL with a synchronous streaming replica: the primary is SIGKILLed (postmaster and
backends at once) while the app writes, the replica is promoted, and the app, whose DATABASE_URL
names both hosts (libpq multi-host, `target_session_attrs=read-write`), writes again on the new
primary with nobody's help. Every commit the app was told succeeded before the kill is there."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from hospital.db import get_db
from hospital.migrate import upgrade
from hospital.models import AuditEvent
from tests.chaos.processes import OwnPostgres, multi_host_url, own_postgres_unavailable, wait_until
from tests.conftest import make_test_app

pytestmark = pytest.mark.chaos

ENTITY = "FailoverProbe"


@pytest.fixture()
def primary_and_standby() -> Iterator[tuple[OwnPostgres, OwnPostgres]]:
    reason = own_postgres_unavailable()
    if reason:
        pytest.skip(reason)
    primary = OwnPostgres()
    standby: OwnPostgres | None = None
    try:
        primary.init()
        primary.start()
        upgrade(primary.url)
        standby = primary.start_standby()
        primary.require_synchronous_standby()
        yield primary, standby
    finally:
        primary.destroy()
        if standby is not None:
            standby.destroy()


def write_probe(app: Flask, n: int) -> None:
    with get_db(app).transaction() as session:
        session.add(AuditEvent(action="E", entity_type=ENTITY, entity_id=str(n), source="system"))


def probes(app: Flask) -> set[int]:
    with get_db(app).session() as session:
        return {int(v) for v in session.scalars(select(AuditEvent.entity_id).where(AuditEvent.entity_type == ENTITY))}


def test_app_follows_a_promoted_synchronous_replica(primary_and_standby: tuple[OwnPostgres, OwnPostgres],
                                                    tmp_path: Path) -> None:
    primary, standby = primary_and_standby
    app = make_test_app(multi_host_url(primary, standby), tmp_path)
    acknowledged: list[int] = []
    failed = threading.Event()

    def writer() -> None:
        n = 0
        while not failed.is_set():
            n += 1
            try:
                write_probe(app, n)
            except Exception:  # noqa: BLE001 - the primary died under us: this one is not acknowledged
                failed.set()
                return
            acknowledged.append(n)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    wait_until("some acknowledged commits", lambda: len(acknowledged) >= 50, 30)
    primary.kill_hard()
    thread.join(30)
    assert failed.is_set() and not thread.is_alive()

    assert standby.promote() < 30
    # The pool's connections to the dead primary are dropped by pre-ping; a new one skips the dead
    # host and lands on the promoted standby, the only one taking writes.
    write_probe(app, 0)
    found = probes(app)
    missing = set(acknowledged) - found
    assert not missing, f"{len(missing)} commit(s) acknowledged by the primary are gone after promotion"
    assert 0 in found
    assert standby.query("SELECT pg_is_in_recovery()") == ["f"]
