"""Pooled connections are pinged before use only after sitting idle (hospital.db.ping_idle_connections):
no round trip for a connection in use a moment ago, and a broken one never outlives one failure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from hospital.db import make_engine


@pytest.fixture()
def engine(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Engine, list[int]]]:
    made = make_engine(database_url)
    pings: list[int] = []
    real_ping = made.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(made.dialect, "do_ping", counted)
    yield made, pings
    made.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)


def terminate(database_url: str, pid: int) -> None:
    side = create_engine(database_url)
    with side.connect() as conn:
        assert conn.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    side.dispose()


def idle_for(seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Move the pool's clock on, as if its connections had sat unused this long."""
    import hospital.db

    real = hospital.db.time.monotonic
    monkeypatch.setattr(hospital.db.time, "monotonic", lambda: real() + seconds)


def test_a_connection_in_use_a_moment_ago_is_not_pinged(engine: tuple[Engine, list[int]]) -> None:
    made, pings = engine
    first = backend_pid(made)
    for _ in range(20):
        assert backend_pid(made) == first  # the same pooled connection, handed out again
    assert pings == []


def test_an_idle_connection_is_pinged_and_a_dead_one_replaced_before_use(
    engine: tuple[Engine, list[int]], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, pings = engine
    first = backend_pid(made)
    terminate(database_url, first)  # the server went away while the connection sat in the pool
    idle_for(60, monkeypatch)
    second = backend_pid(made)  # no error: the ping failed and the pool opened a new connection
    assert second != first
    assert len(pings) == 1


def test_a_connection_broken_within_the_idle_window_fails_once_and_the_pool_recovers(
    engine: tuple[Engine, list[int]], database_url: str
) -> None:
    made, pings = engine
    with made.connect() as one, made.connect() as two:  # two pooled connections
        pids = [one.scalar(text("SELECT pg_backend_pid()")), two.scalar(text("SELECT pg_backend_pid()"))]
    for pid in pids:
        terminate(database_url, int(pid or 0))
    with pytest.raises(DBAPIError) as failed, made.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert failed.value.connection_invalidated  # seen as a disconnect: the whole pool is dropped
    # The other broken connection is not handed out again: the next request works at once.
    assert backend_pid(made) not in pids
    assert pings == []
