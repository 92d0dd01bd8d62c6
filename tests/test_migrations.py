"""Alembic: the single migration builds the schema from empty and takes it down again, on
PostgreSQL and on the embedded SQLite default, and matches the models."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

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


@pytest.mark.parametrize("engine_kind", ["postgresql", "sqlite"])
def test_0042_fills_resource_last_updated_from_the_versions_there(
    engine_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Each record's latest version becomes its resource_last_updated row; versions written after
    it (by any code: a trigger) move it on."""
    url = request.getfixturevalue("empty_postgres_url") if engine_kind == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, "0040")
    engine = create_engine(url)
    insert_version = text(
        "INSERT INTO resource_version (resource_type, resource_id, version_id, last_updated, method) "
        "VALUES (:type, :id, :version, :at, 'PUT')")
    try:
        with engine.begin() as conn:
            for type_name, row_id, version, day in [("Patient", 1, 1, 1), ("Patient", 1, 2, 3), ("Patient", 2, 1, 2),
                                                    ("Task", 1, 1, 4)]:
                conn.execute(insert_version, {"type": type_name, "id": row_id, "version": version,
                                              "at": datetime(2026, 1, day, tzinfo=UTC)})
        upgrade(url)
        with engine.begin() as conn:
            conn.execute(insert_version, {"type": "Task", "id": 1, "version": 2, "at": datetime(2026, 1, 9, tzinfo=UTC)})
            rows = conn.execute(text(
                "SELECT resource_type, resource_id, version_id FROM resource_last_updated "
                "ORDER BY resource_type, resource_id")).all()
        assert [tuple(r) for r in rows] == [("Patient", 1, 2), ("Patient", 2, 1), ("Task", 1, 2)]
    finally:
        engine.dispose()
