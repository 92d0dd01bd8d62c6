"""Alembic environment: the database URL comes from the app config (DATABASE_URL), the metadata
from every stage's models."""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import engine_from_config, pool

import ai_services.models  # noqa: F401 - registers tables on Base.metadata
import billing.models  # noqa: F401
import followup.models  # noqa: F401
import hospital.models  # noqa: F401
import imaging_orders.archive.models  # noqa: F401
import imaging_orders.models  # noqa: F401
import referrals.models  # noqa: F401
import research.models  # noqa: F401
from hospital.config import load_config
from hospital.db import Base

logger = logging.getLogger("alembic.env")

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or load_config()["DATABASE_URL"]


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = engine_from_config({"sqlalchemy.url": database_url()}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection: object) -> None:
    # Batch mode lets later migrations alter tables on SQLite (the embedded default) too.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
