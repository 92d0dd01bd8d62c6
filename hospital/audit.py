"""Audit trail of access to patient data (FHIR AuditEvent semantics).

Records are written in the caller's transaction for successful access, but for a read in a web
request (`action="R"`, or `at_response=True` for a search or list): its record is written after the
request's work commits and before the response leaves, in one transaction with the reads of
concurrent requests (`hospital.db.hold_for_response`, a group commit). A read that cannot be
audited is not answered. A denial is held until
the request's unit of work ends (`hospital.db.abandon_request_work` rolls the refused work back
and keeps only the denial); outside a request it is written at once, in a transaction of its own.
There is no update or delete path.

Each row is chained to the one before it: `prev_hash` is the previous row's `row_hash`, and
`row_hash` is the SHA-256 of the row's fields and `prev_hash` in the canonical form of
`canonical_text`. On PostgreSQL a BEFORE INSERT trigger (migration 0012) fills both, whatever the
application sent, under a transaction-scoped advisory lock, and gives the row its id under that
lock too, so id order is chain order even when transactions insert concurrently (the lock is held
until commit: audit-writing transactions take turns at their end). On SQLite (development only) the
`before_insert` hook below computes the same in Python. `verify_chain` (`hospital audit verify`)
walks the rows in id order and reports the first row whose link or hash does not match: a row
changed, deleted or inserted behind the application's back, by someone able to get round the
database's own refusals (a superuser), shows up there.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app, g, has_request_context, request
from sqlalchemy import event, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, Session

from hospital.clock import utcnow
from hospital.db import get_db, hold_for_response
from hospital.models import AuditCheckpoint, AuditEvent, User

logger = logging.getLogger(__name__)

ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOME_SUCCESS = 0
OUTCOME_DENIED = 4


def record_access(
    session: Session,
    user: User | None,
    action: str,
    entity_type: str,
    entity_id: object | None = None,
    *,
    patient_id: int | None = None,
    outcome: int = OUTCOME_SUCCESS,
    description: str | None = None,
    source: str | None = None,
    at_response: bool = False,
) -> AuditEvent:
    """Record an access. A successful read (`action="R"`, or `at_response` for an "E" that only
    lists or searches) inside a web request is written just before the response leaves, grouped
    with concurrent requests' reads; everything else is added to `session`, so it commits or rolls
    back with the change it records."""
    if action not in ACTIONS:
        raise ValueError(f"audit action must be one of {sorted(ACTIONS)}, got {action!r}")
    event = AuditEvent(
        recorded_at=utcnow(),
        user_id=user.id if user is not None else None,
        action=action,
        entity_type=entity_type,
        entity_id=None if entity_id is None else str(entity_id),
        patient_id=patient_id,
        outcome=outcome,
        description=description,
        source=source or _default_source(),
    )
    if not ((action == "R" or at_response) and outcome == OUTCOME_SUCCESS and hold_for_response(event)):
        session.add(event)
    return event


def record_denied(
    user: User | None, action: str, entity_type: str, entity_id: object | None, description: str,
    *, patient_id: int | None = None,
) -> None:
    """Record a denied access so that it survives the rollback of the denied request. `patient_id`
    names whose record was targeted, when the refusal knows it: a privacy officer asks "who tried
    to open this patient's record", not only "what did this user try"."""
    denial = AuditEvent(user_id=user.id if user else None, action=action, entity_type=entity_type,
                        entity_id=None if entity_id is None else str(entity_id), patient_id=patient_id,
                        description=description, outcome=OUTCOME_DENIED, source=_default_source())
    if has_request_context():
        # Not added to the request's session: that work is about to be rolled back.
        g.setdefault("audit_denials", []).append(denial)
        return
    with get_db(current_app._get_current_object()).transaction() as session:  # type: ignore[attr-defined]
        session.add(denial)


def _default_source() -> str:
    if has_request_context():
        smart = g.get("smart_access")
        if smart is not None:
            # A SMART app's access is marked with its client id (the column holds 32 characters;
            # client ids made here are 22).
            return f"smart:{smart.client_id}"[:32]
        return "fhir" if request.path.startswith("/fhir") else "web" if not request.path.startswith("/api") else "api"
    return "system"


# --- the hash chain ----------------------------------------------------------------------------

# The prev_hash of the first row.
GENESIS_HASH = "0" * 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def canonical_text(event: AuditEvent, prev_hash: str) -> str:
    """The row as the chain hashes it: each field as `<length>:<value>` (`-` for NULL), so no
    value can be made to read as two; the time as integer microseconds since the epoch. Must stay
    the same as `audit_event_row_hash` in migrations/versions/0012_audit_hash_chain.py."""
    micros = (event.recorded_at - _EPOCH) // timedelta(microseconds=1)
    values = (micros, event.user_id, event.action, event.entity_type, event.entity_id, event.patient_id,
              event.outcome, event.description, event.source, prev_hash)
    return "".join("-" if v is None else f"{len(str(v))}:{v}" for v in values)


def row_hash(event: AuditEvent, prev_hash: str) -> str:
    return hashlib.sha256(canonical_text(event, prev_hash).encode("utf-8")).hexdigest()


@event.listens_for(AuditEvent, "before_insert")
def _chain_on_sqlite(_mapper: Mapper[Any], connection: Connection, target: AuditEvent) -> None:
    # PostgreSQL chains in its trigger. SQLite allows one writer at a time, and the mapper saves
    # audit rows one by one (`batch=False`), so the row read here is the one this row follows.
    if connection.dialect.name != "sqlite":
        return
    if target.recorded_at is None:
        target.recorded_at = utcnow()
    if target.outcome is None:
        target.outcome = OUTCOME_SUCCESS
    if target.source is None:
        target.source = "api"
    previous = connection.scalar(select(AuditEvent.row_hash).order_by(AuditEvent.id.desc()).limit(1))
    target.prev_hash = previous or GENESIS_HASH
    target.row_hash = row_hash(target, target.prev_hash)


@dataclass(frozen=True)
class BrokenLink:
    """The first row where the chain does not hold, and why."""

    event_id: int
    reason: str


@dataclass(frozen=True)
class ChainReport:
    rows: int
    head_hash: str  # the last row's hash: keep it outside the database to detect a cut-off tail
    broken: BrokenLink | None


def verify_chain(session: Session) -> ChainReport:
    """Walk the audit trail in id order and check every link and every row's hash. Rows archived
    and removed by retention (`hospital.retention`) are replaced by their checkpoint: the first
    remaining row must follow the last archived row's hash."""
    expected_prev = GENESIS_HASH
    checkpoint = session.scalar(select(AuditCheckpoint).order_by(AuditCheckpoint.up_to_event_id.desc()).limit(1))
    count = 0
    for audit in _rows_in_order(session):
        count += 1
        if count == 1 and checkpoint is not None and audit.id > checkpoint.up_to_event_id:
            expected_prev = checkpoint.head_hash
        if audit.prev_hash != expected_prev:
            reason = ("the first row does not start the chain (or follow the newest checkpoint)" if count == 1 else
                      f"prev_hash does not match the row before it: a row was removed, inserted or changed before {audit.id}")
            return ChainReport(count, expected_prev, BrokenLink(audit.id, reason))
        if audit.row_hash != row_hash(audit, audit.prev_hash or ""):
            return ChainReport(count, expected_prev, BrokenLink(audit.id, "row_hash does not match the row: it was changed"))
        expected_prev = audit.row_hash
    return ChainReport(count, expected_prev, None)


def _rows_in_order(session: Session) -> Iterator[AuditEvent]:
    statement = select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=1000)
    yield from session.scalars(statement)
