"""Alembic: the single migration builds the schema from empty and takes it down again, on
PostgreSQL and on the embedded SQLite default, and matches the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import ai_services.models  # noqa: F401,E402 - every table on the metadata
import billing.models  # noqa: F401,E402
import followup.models  # noqa: F401,E402
from hospital.db import Base
from hospital.migrate import downgrade, upgrade


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


@pytest.mark.parametrize("engine_kind", ["postgresql", "sqlite"])
def test_upgrade_from_empty_then_downgrade_to_base(
    engine_kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = request.getfixturevalue("empty_postgres_url") if engine_kind == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)
    assert _diff(url) == [], "the migration and the models disagree"
    monkeypatch.delenv("HOSPITAL_ALLOW_AUDIT_DOWNGRADE", raising=False)
    with pytest.raises(RuntimeError, match="HOSPITAL_ALLOW_AUDIT_DOWNGRADE"):
        downgrade(url)  # taking the audit trail's protections down must be deliberate
    assert "audit_event" in _tables(url)
    monkeypatch.setenv("HOSPITAL_ALLOW_AUDIT_DOWNGRADE", "1")
    downgrade(url)
    assert _tables(url) == set()
