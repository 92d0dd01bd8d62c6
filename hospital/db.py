"""The SQLAlchemy engine, the declarative base, and the unit of work: the one owner of transactions.

The rule, for every newcomer: **only this module commits.** Services and models add, change and
`flush()`; they never `commit()`. Whoever sits at the edge owns one unit of work, and it commits
when the work is done or rolls back when it is not:

- an HTTP request: `request_session()` is the request's session; when the view returns, its work
  is committed (`UnitOfWorkFlask.dispatch_request`), before the response leaves. A view that
  raises has nothing kept: the error handler calls `abandon_request_work()`, which rolls back and
  keeps only the audit record of a refusal (and, for a refused sign-in, the failure count that
  `keep_work_despite_refusal()` asked to keep). A form that shows an error page instead of
  raising runs its action in a savepoint (`hospital.web.form_action`), so a failed action leaves
  nothing while the page view itself (and its audit) is kept;
- a job: `hospital.jobs.run_job` runs the handler inside `Database.transaction()`;
- a DICOM message, a CLI command, a background loop: `Database.transaction()` around the work.

What a response delivers is recorded before it leaves, but not inside the request's own work: an
audit row of a read (`hospital.audit`) is handed to `hold_for_response`, and after the request's
work commits, `complete_request_work` writes it through the database's `GroupCommit`. Concurrent
requests' rows share one transaction (one INSERT, one commit, one turn at the audit chain's lock)
instead of one each; each request still waits until its own rows are durable, and if they cannot be
written the request fails (503) and its response, with the data, never leaves.

So "when is this durable?" has one answer: when the unit of work at the edge has ended. Tests swap
`Database.session_factory` for one bound to a connection that is rolled back after each test.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g, has_request_context
from flask.typing import ResponseReturnValue
from sqlalchemy import JSON, DateTime, MetaData, create_engine, event, insert, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.schema import FetchedValue
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeDecorator

logger = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the engine stores.

    SQLite keeps no zone, PostgreSQL keeps timestamptz; naive datetimes are refused on the way in
    because a naive time in health records is a bug waiting for a daylight-saving change.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given; use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Database:
    """Owns the engine and the session factory for one app."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        self.session_factory: sessionmaker[Session] = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.group_commit = GroupCommit(self)

    def session(self) -> Session:
        return self.session_factory()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any error (jobs, CLI)."""
        session = self.session()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


class _Waiting:
    """One request's rows in the group commit, and what became of them."""

    __slots__ = ("rows", "done", "error")

    def __init__(self, rows: list[Base]) -> None:
        self.rows = rows
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    """Append-only rows of many threads written in one transaction (group commit).

    A thread that calls `write` while no write is under way leads: it takes every row waiting at
    that moment, its own included, and writes them in one transaction. Threads arriving meanwhile
    wait; when the leader is done, the first of them leads the next batch with all the rows that
    piled up. `write` returns only once the caller's rows are committed, and raises the batch's
    error to every thread whose rows were in a batch that failed: nothing is reported written that
    was not. No thread of its own: with one request at a time, the request writes its own rows.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._lock = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._leading = False

    def write(self, rows: list[Base]) -> None:
        mine = _Waiting(rows)
        with self._lock:
            self._waiting.append(mine)
            while self._leading and not mine.done:
                self._lock.wait()
            if mine.done:
                if mine.error is not None:
                    raise mine.error
                return
            batch, self._waiting = self._waiting, []
            self._leading = True
        error: BaseException | None = None
        try:
            self._write_batch([row for waiting in batch for row in waiting.rows])
        except BaseException as exc:  # noqa: BLE001 - handed to every writer of the batch, then raised
            error = exc
        with self._lock:
            for waiting in batch:
                waiting.done, waiting.error = True, error
            self._leading = False
            self._lock.notify_all()
        if error is not None:
            raise error

    def _write_batch(self, rows: list[Base]) -> None:
        by_model: dict[type[Base], list[Base]] = {}
        for row in rows:
            by_model.setdefault(type(row), []).append(row)
        bind = self.database.session_factory.kw.get("bind")
        if not isinstance(bind, Engine) or bind.dialect.name != "postgresql":
            # SQLite (development), or sessions bound to one connection (the suite's rollback
            # fixture): through a session, which joins that connection's transaction.
            self._write_in_session(by_model)
            return
        # One INSERT per table, of many rows (SQLAlchemy's "insertmanyvalues": one statement of up
        # to `insertmanyvalues_page_size` rows, compiled once and cached, which RETURNING turns
        # on); the columns the database fills (ids, the audit chain) are left to it. One table
        # and one statement (the usual case, audit rows): atomic on its own and sent in
        # autocommit, so the batch costs one round trip, not BEGIN, INSERT, COMMIT.
        batches = [(_insert_statement(model), [_column_values(row) for row in same]) for model, same in by_model.items()]
        with bind.connect() as connection:
            if len(batches) == 1 and len(batches[0][1]) <= bind.dialect.insertmanyvalues_page_size:
                statement, values = batches[0]
                connection.execution_options(isolation_level="AUTOCOMMIT").execute(statement, values)
                return
            with connection.begin():
                for statement, values in batches:
                    connection.execute(statement, values)

    def _write_in_session(self, by_model: dict[type[Base], list[Base]]) -> None:
        with self.database.transaction() as session:
            if session.get_bind().dialect.name != "postgresql":
                # SQLite: the mapper saves them one by one, with their Python hooks.
                session.add_all([row for same in by_model.values() for row in same])
                return
            for model, same in by_model.items():
                session.execute(_insert_statement(model), [_column_values(row) for row in same])


def _column_values(row: Base) -> dict[str, Any]:
    """A row's values for an INSERT, less the columns the database fills (ids, the audit chain)."""
    return {key: getattr(row, key) for key in _inserted_columns(type(row))}


@cache
def _insert_statement(model: type[Base]) -> Insert:
    return insert(model).returning(*inspect(model).primary_key)


@cache
def _inserted_columns(model: type[Base]) -> tuple[str, ...]:
    return tuple(c.key for c in inspect(model).columns if not c.primary_key and not isinstance(c.server_default, FetchedValue))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets the web app, the DICOM server and a worker share the embedded file.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # hide_parameters: a logged database error shows the SQL, never the values (names, MRNs).
    engine = create_engine(url, pool_size=10, max_overflow=20, hide_parameters=True)
    ping_idle_connections(engine, PING_AFTER_IDLE_SECONDS)
    return engine


# A pooled connection unused for this long is pinged before it is handed out (see below).
PING_AFTER_IDLE_SECONDS = 2.0
_IDLE_SINCE = "hospital.idle_since"


def ping_idle_connections(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection before handing it out only if it sat unused for `idle_seconds`.

    `pool_pre_ping` pinged on every checkout, a round trip that was a tenth of a FHIR read's cost
    and two per read (the request's work and its audit row). A connection handed back a moment
    ago was working a moment ago. One that broke since (the database restarted or failed over
    within those seconds) fails its first statement: SQLAlchemy sees a disconnect, the request
    gets 503 "try again shortly" (a job is retried, a C-STORE answered with a failure status) and
    the pool drops every connection made before it, so the next request gets a new one. A ping
    that fails makes the pool open a new connection instead (the checkout event's documented
    DisconnectionError)."""

    @event.listens_for(engine, "checkin")
    def _handed_back(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _handed_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < idle_seconds:
            return  # just opened, or in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            if engine.dialect.is_disconnect(error, dbapi_connection, None):
                raise DisconnectionError("a pooled connection no longer answers") from error
            raise


class UnitOfWorkFlask(Flask):
    """Flask whose view functions are each one unit of work (see the module docstring)."""

    def dispatch_request(self) -> ResponseReturnValue:
        g.setdefault(RESPONSE_ROWS, [])  # from here on, the request's work ends in complete_request_work
        rv = super().dispatch_request()
        # Committed here, inside the dispatch, so a commit that fails (a constraint, a lost
        # connection) reaches the error handlers like any other error and nothing is claimed done.
        complete_request_work()
        return rv


RESPONSE_ROWS = "hospital.response_rows"


def hold_for_response(row: Base) -> bool:
    """Have `row` written durably after the request's work commits and before its response
    leaves, in a group commit with the same rows of concurrent requests (see the module
    docstring). For append-only records of what the response delivers (the audit row of a read):
    if the request fails, the response delivers nothing and the row is dropped with it. Every
    column must be set here: defaults are not applied to rows written together.

    False, and nothing held, where no request is being dispatched (a job, the CLI, a test calling
    a service in a bare request context): the caller adds the row to its own work."""
    held: list[Base] | None = g.get(RESPONSE_ROWS) if has_request_context() else None
    if held is None:
        return False
    held.append(row)
    return True


def complete_request_work() -> None:
    """Commit the current request's work, if it opened a session or recorded a refusal, then write
    what it holds for the response (and wait until that is durable)."""
    denials = g.pop("audit_denials", [])
    session: Session | None = g.get("db_session")
    if session is not None or denials:
        session = request_session()
        session.add_all(denials)
        session.commit()
    held = g.pop(RESPONSE_ROWS, [])
    if held:
        get_db().group_commit.write(held)


def keep_work_despite_refusal() -> None:
    """Ask that the request's work be kept although it ends in an error (a refused sign-in keeps
    its failure count and its audit record)."""
    g.keep_work_despite_refusal = True


def abandon_request_work() -> None:
    """A request failed: roll its work back (unless asked to keep it), then record the refusals
    that `hospital.audit.record_denied` held for this moment, in a transaction of their own."""
    g.pop(RESPONSE_ROWS, None)  # the request delivers nothing: nothing to record as delivered
    session = request_session()
    if g.pop("keep_work_despite_refusal", False):
        session.commit()
    else:
        session.rollback()
    denials = g.pop("audit_denials", [])
    if denials:
        session.add_all(denials)
        session.commit()


def init_app(app: Flask) -> None:
    url: str = app.config["DATABASE_URL"]
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    database = Database(url)
    app.extensions["hospital.db"] = database
    # RQ forks a work horse per job: pooled connections must not be shared across the fork.
    os.register_at_fork(after_in_child=lambda: _after_fork(database))
    # Per request, not only per app context: a test or CLI may hold one app context around many
    # requests, and each request must start with a fresh session.
    app.teardown_request(_close_request_session)
    app.teardown_appcontext(_close_request_session)


def _after_fork(database: Database) -> None:
    database.engine.dispose(close=False)
    database.group_commit = GroupCommit(database)  # its lock may have been held by another thread


def get_db(app: Flask | None = None) -> Database:
    database: Database = (app or current_app).extensions["hospital.db"]
    return database


def request_session() -> Session:
    """The session of the current request or app context, created on first use."""
    if "db_session" not in g:
        g.db_session = get_db().session()
    session: Session = g.db_session
    return session


def _close_request_session(_exc: BaseException | None) -> None:
    g.pop(RESPONSE_ROWS, None)  # a request that ended without completing its work delivered nothing
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()
