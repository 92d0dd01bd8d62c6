"""resource_last_updated: each FHIR record's latest version time, for _sort=_lastUpdated and
_lastUpdated searches that walk an index, kept by a trigger on resource_version inserts;
resource_version's (type, last_updated) index gains id so history pages seek on (last_updated, id)

Revision ID: 0042
Revises: 0041
Create Date: 2026-12-04 15:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0042"
down_revision: str | None = "0041"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The inserted version becomes the record's latest, unless a later one is there already.
UPSERT = (
    "INSERT INTO resource_last_updated (resource_type, resource_id, version_id, last_updated) "
    "VALUES (NEW.resource_type, NEW.resource_id, NEW.version_id, NEW.last_updated) "
    "ON CONFLICT (resource_type, resource_id) DO UPDATE SET version_id = excluded.version_id, "
    "last_updated = excluded.last_updated WHERE resource_last_updated.version_id < excluded.version_id"
)


def upgrade() -> None:
    op.create_table(
        "resource_last_updated",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", name=op.f("pk_resource_last_updated")),
    )
    op.create_index(
        "ix_resource_last_updated_type_time", "resource_last_updated", ["resource_type", "last_updated", "resource_id"]
    )
    with op.batch_alter_table("resource_version", schema=None) as batch_op:
        batch_op.drop_index("ix_resource_version_type_updated")
        batch_op.create_index("ix_resource_version_type_updated", ["resource_type", "last_updated", "id"], unique=False)
    # A trigger, not the app's version writer: during a rolling upgrade the previous release keeps
    # writing versions and knows nothing of this table. On PostgreSQL it runs as the table owner
    # (SECURITY DEFINER), so the app's role needs no grant on the new table before it can write.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION resource_version_last_updated() RETURNS trigger LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = public AS $$ BEGIN "
            f"{UPSERT.replace('excluded.', 'EXCLUDED.')}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER resource_version_last_updated AFTER INSERT ON resource_version "
            "FOR EACH ROW EXECUTE FUNCTION resource_version_last_updated()"
        )
    else:
        op.execute(f"CREATE TRIGGER resource_version_last_updated AFTER INSERT ON resource_version BEGIN {UPSERT}; END")
    # Then every record's latest version as it stands (the trigger may have moved some already).
    op.execute(
        "INSERT INTO resource_last_updated (resource_type, resource_id, version_id, last_updated) "
        "SELECT v.resource_type, v.resource_id, v.version_id, v.last_updated FROM resource_version v "
        "JOIN (SELECT resource_type, resource_id, max(version_id) AS version_id FROM resource_version "
        "GROUP BY resource_type, resource_id) latest "
        "ON latest.resource_type = v.resource_type AND latest.resource_id = v.resource_id "
        "AND latest.version_id = v.version_id "
        "WHERE true ON CONFLICT (resource_type, resource_id) DO NOTHING"  # WHERE: SQLite's parser needs it
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS resource_version_last_updated ON resource_version")
        op.execute("DROP FUNCTION IF EXISTS resource_version_last_updated()")
    else:
        op.execute("DROP TRIGGER IF EXISTS resource_version_last_updated")
    with op.batch_alter_table("resource_version", schema=None) as batch_op:
        batch_op.drop_index("ix_resource_version_type_updated")
        batch_op.create_index("ix_resource_version_type_updated", ["resource_type", "last_updated"], unique=False)
    op.drop_index("ix_resource_last_updated_type_time", table_name="resource_last_updated")
    op.drop_table("resource_last_updated")
