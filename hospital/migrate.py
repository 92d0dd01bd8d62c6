"""Schema migrations through Alembic, for the CLI and the tests; and the application's database role,
which owns nothing (the migrations run as the owner)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from hospital.config import PROJECT_ROOT
from hospital.process_registry import RunningProcess

logger = logging.getLogger(__name__)

# This code's migrations (a test points it at a copy with a migration of its own added).
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def alembic_config(database_url: str, script_location: Path | None = None) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(script_location or MIGRATIONS_DIR))
    # Alembic's config is an INI file: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head", *, script_location: Path | None = None) -> None:
    command.upgrade(alembic_config(database_url, script_location), revision)


# --- expand/contract: destructive steps wait for the old code to stop ---------------------------

class OldCodeRunning(RuntimeError):
    """A destructive migration is pending while processes written for an older schema still run."""


@dataclass(frozen=True)
class DestructiveStep:
    revision: str
    doc: str


def _current_revision(database_url: str) -> str | None:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    return heads[0] if heads else None


def pending_destructive_steps(database_url: str, revision: str = "head", *,
                              script_location: Path | None = None) -> list[DestructiveStep]:
    """The migrations between the database's revision and `revision` that are marked
    `destructive = True` in their module: contract steps (dropping or renaming what older code still
    reads or writes), which only run once no older code is left (docs/operations.md)."""
    script = ScriptDirectory.from_config(alembic_config(database_url, script_location))
    current = _current_revision(database_url) or "base"
    steps = []
    for step in script.iterate_revisions(revision, current):
        if getattr(step.module, "destructive", False):
            steps.append(DestructiveStep(step.revision, (step.doc or "").strip()))
    return list(reversed(steps))


def knows_revision(schema_head: str | None, revision: str, *, database_url: str,
                   script_location: Path | None = None) -> bool:
    """Whether code written for `schema_head` already ships `revision` (so runs on the schema after it).
    An unknown head (not in this code's migrations) is not trusted to."""
    if schema_head is None:
        return False
    script = ScriptDirectory.from_config(alembic_config(database_url, script_location))
    try:
        return any(step.revision == revision for step in script.iterate_revisions(schema_head, "base"))
    except (CommandError, RevisionError):
        return False


def old_code_blocking(database_url: str, processes: list[RunningProcess], revision: str = "head", *,
                      script_location: Path | None = None) -> list[tuple[DestructiveStep, RunningProcess]]:
    """Each pending destructive step paired with each running process whose code does not know it."""
    return [(step, process)
            for step in pending_destructive_steps(database_url, revision, script_location=script_location)
            for process in processes
            if not knows_revision(process.schema_head, step.revision, database_url=database_url,
                                  script_location=script_location)]


def is_at_head(database_url: str) -> bool:
    """Whether the schema is at the newest migration (an empty database is not). Connection errors raise."""
    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads()) == heads
    finally:
        engine.dispose()


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def grant_app_role(database_url: str, role: str) -> None:
    """Create (if need be) the PostgreSQL role the application connects as, and give it ordinary
    reads and writes on every table but the audit trail, where it may only read and append, the
    audit checkpoints, which it may only read, the emergency access grants, which it may not
    delete, and the migrations' own table, where it has none. Run as the tables' owner, after `upgrade`; run again after each upgrade that adds tables.
    The role's password is set by the operator (ALTER ROLE)."""
    if not ROLE_NAME.fullmatch(role):
        raise ValueError(f"a role name is lower-case letters, digits and '_', got {role!r}")
    engine = create_engine(database_url, poolclass=NullPool)
    if engine.dialect.name != "postgresql":
        raise ValueError("database roles are PostgreSQL's; the embedded SQLite database has none")
    statements = [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
        f"THEN CREATE ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE; END IF; END $$",
        f'GRANT USAGE ON SCHEMA public TO "{role}"',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"',
        f'REVOKE UPDATE, DELETE, TRUNCATE ON audit_event FROM "{role}"',
        # Retention's checkpoints let the owner delete archived audit rows: the app may not write one.
        f'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_checkpoint FROM "{role}"',
        # An emergency access grant is reviewed (UPDATE), never removed: the break stays on record.
        f'REVOKE DELETE, TRUNCATE ON emergency_access FROM "{role}"',
        f'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM "{role}"',
        f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
    ]
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()
    logger.info("role %s may read and write the tables, and only read and append the audit trail", role)
