"""audit_hash_chain: every audit_event row is chained to the one before it by SHA-256, and TRUNCATE
is refused

`prev_hash` and `row_hash` are filled on insert: on PostgreSQL by a BEFORE INSERT trigger that takes
a transaction-scoped advisory lock, gives the row its id under the lock (so id order is chain order
under concurrent inserts) and hashes the row in the canonical form of `hospital.audit.canonical_text`;
on SQLite by the application (hospital.audit). Existing rows are chained here, in id order. A BEFORE
TRUNCATE trigger refuses TRUNCATE (the UPDATE/DELETE refusal is 0005's).

The downgrade removes these protections, so it refuses to run unless HOSPITAL_ALLOW_AUDIT_DOWNGRADE=1
is set: taking the audit trail's defences down must be a deliberate act, not a routine command.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 12:00:00
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64
# Any fixed number: the advisory lock that makes audit inserts take turns at the chain's head.
CHAIN_LOCK_KEY = 7_314_159_265
ALLOW_DOWNGRADE = "HOSPITAL_ALLOW_AUDIT_DOWNGRADE"

ROW_HASH_FUNCTION = r"""
CREATE FUNCTION audit_event_field(value text) RETURNS text IMMUTABLE LANGUAGE sql AS
$$ SELECT CASE WHEN value IS NULL THEN '-' ELSE length(value)::text || ':' || value END $$;

CREATE FUNCTION audit_event_row_hash(r audit_event, prev text) RETURNS text STABLE LANGUAGE sql AS $$
SELECT encode(sha256(convert_to(
    audit_event_field((extract(epoch FROM r.recorded_at) * 1000000)::bigint::text)
    || audit_event_field(r.user_id::text) || audit_event_field(r.action) || audit_event_field(r.entity_type)
    || audit_event_field(r.entity_id) || audit_event_field(r.patient_id::text) || audit_event_field(r.outcome::text)
    || audit_event_field(r.description) || audit_event_field(r.source) || audit_event_field(prev),
    'UTF8')), 'hex')
$$;
"""

CHAIN_TRIGGER = f"""
CREATE FUNCTION audit_event_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous text;
BEGIN
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK_KEY});
    NEW.id := nextval(pg_get_serial_sequence('audit_event', 'id'));
    SELECT row_hash INTO previous FROM audit_event ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(previous, '{GENESIS_HASH}');
    NEW.row_hash := audit_event_row_hash(NEW, NEW.prev_hash);
    RETURN NEW;
END $$;

CREATE TRIGGER audit_event_chain BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION audit_event_chain();
"""

BACKFILL = f"""
DO $$
DECLARE
    r audit_event;
    previous text := '{GENESIS_HASH}';
    digest text;
BEGIN
    FOR r IN SELECT * FROM audit_event ORDER BY id LOOP
        digest := audit_event_row_hash(r, previous);
        UPDATE audit_event SET prev_hash = previous, row_hash = digest WHERE id = r.id;
        previous := digest;
    END LOOP;
END $$;
"""

SQLITE_NO_UPDATE = (
    "CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
)


def upgrade() -> None:
    with op.batch_alter_table("audit_event", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("row_hash", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ROW_HASH_FUNCTION)
        op.execute("ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only")
        op.execute(BACKFILL)
        op.execute("ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only")
        op.execute(CHAIN_TRIGGER)
        op.execute(
            "CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only()"
        )
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_update")
        _backfill_in_python()
        op.execute(SQLITE_NO_UPDATE)


def _backfill_in_python() -> None:
    # The canonical form of hospital.audit.canonical_text, written out here so this migration
    # keeps meaning what it meant when it was written.
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT id, recorded_at, user_id, action, entity_type, entity_id, patient_id, outcome, description, source "
        "FROM audit_event ORDER BY id"
    )).all()
    previous = GENESIS_HASH
    for row in rows:
        recorded = row.recorded_at
        if isinstance(recorded, str):
            recorded = datetime.fromisoformat(recorded)
        if recorded.tzinfo is None:
            recorded = recorded.replace(tzinfo=UTC)
        micros = (recorded - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        values = (micros, row.user_id, row.action, row.entity_type, row.entity_id, row.patient_id, row.outcome,
                  row.description, row.source, previous)
        text = "".join("-" if v is None else f"{len(str(v))}:{v}" for v in values)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        bind.execute(sa.text("UPDATE audit_event SET prev_hash = :p, row_hash = :h WHERE id = :id"),
                     {"p": previous, "h": digest, "id": row.id})
        previous = digest


def downgrade() -> None:
    if os.environ.get(ALLOW_DOWNGRADE) != "1":
        raise RuntimeError(
            f"refusing to remove the audit trail's hash chain and TRUNCATE refusal; set {ALLOW_DOWNGRADE}=1 "
            "to do it deliberately (and record why)"
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_event")
        op.execute("DROP TRIGGER IF EXISTS audit_event_chain ON audit_event")
        op.execute("DROP FUNCTION IF EXISTS audit_event_chain()")
        op.execute("DROP FUNCTION IF EXISTS audit_event_row_hash(audit_event, text)")
        op.execute("DROP FUNCTION IF EXISTS audit_event_field(text)")
    with op.batch_alter_table("audit_event", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("row_hash")
        batch_op.drop_column("prev_hash")
