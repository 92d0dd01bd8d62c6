"""Schema migrations through Alembic, for the CLI and the tests."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config

from hospital.config import PROJECT_ROOT

logger = logging.getLogger(__name__)


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    # Alembic's config is an INI file: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)
