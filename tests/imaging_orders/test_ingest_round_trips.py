"""The hot path of ingest: a further instance of a series already indexed (every instance of a
study but its first) is stored with few statements, and the study row is locked only after the
file is on disk, so associations sending one study do not queue on it while each file is fsynced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Connection, event, select, update
from sqlalchemy.orm import Session

import imaging_orders.archive.ingest as ingest
from hospital.db import get_db
from imaging_orders.archive.ingest import store_instance
from imaging_orders.archive.models import ImagingInstance, ImagingStudy, StudyStatus
from tests.imaging_orders.test_ingest import ct_study


@pytest.fixture()
def statements(app: Flask, db_session: Session, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL statements (first words and table) and file writes of the code under test, in order."""
    log: list[str] = []
    engine = get_db(app).engine

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        words = statement.split()
        if words[0] in ("SAVEPOINT", "RELEASE", "ROLLBACK"):
            return  # the test fixture's per-session savepoints, not the code's own work
        # The table a statement writes: after INTO or UPDATE (a lookup may read several).
        after = {"SELECT": "FROM", "INSERT": "INTO", "UPDATE": "UPDATE"}.get(words[0])
        table = words[words.index(after) + 1] if after in words else ""
        log.append(f"{words[0]} {table}".strip() if words[0] != "SELECT" else "SELECT")

    real_write = ingest.write_file_durably

    def write(target: Path, data: bytes) -> None:
        real_write(target, data)
        log.append("WRITE")

    monkeypatch.setattr(ingest, "write_file_durably", write)
    event.listen(engine, "before_cursor_execute", record)
    yield log
    event.remove(engine, "before_cursor_execute", record)


def test_a_further_instance_of_a_known_series_takes_three_statements(
    app: Flask, db_session: Session, statements: list[str]
) -> None:
    first, second = ct_study("MRN-RT", "ACC-RT", slices=2)
    store_instance(app, first, transfer_syntax_uid=None, calling_ae="TESTSCU")
    statements.clear()

    result = store_instance(app, second, transfer_syntax_uid=None, calling_ae="TESTSCU")

    # One lookup (series, study, a stored instance of the same UID), the insert holding the UID,
    # the file, and only then the study's row.
    assert statements == ["SELECT", "INSERT imaging_instance", "WRITE", "UPDATE imaging_study"]
    stored = db_session.get(ImagingInstance, result.instance_id)
    assert stored is not None and stored.sop_instance_uid == second.SOPInstanceUID and stored.series_id == result.series_id
    study = db_session.get(ImagingStudy, result.study_id, populate_existing=True)
    assert study is not None and study.last_instance_at == stored.received_at


def test_a_study_completed_while_the_file_was_written_keeps_the_instance_and_says_so(
    app: Flask, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = ct_study("MRN-RACE", "ACC-RACE", slices=2)
    store_instance(app, first, transfer_syntax_uid=None, calling_ae="TESTSCU")
    real_write = ingest.write_file_durably
    # The test's one connection, outside the store's savepoint: as another transaction would.
    connection = db_session.get_bind()
    assert isinstance(connection, Connection)

    def write_while_completed(target: Path, data: bytes) -> None:
        real_write(target, data)
        # The completion loop wins the study between our lookup and our touch of it.
        connection.execute(update(ImagingStudy).where(ImagingStudy.study_instance_uid == second.StudyInstanceUID)
                           .values(status=StudyStatus.AVAILABLE))

    monkeypatch.setattr(ingest, "write_file_durably", write_while_completed)
    result = store_instance(app, second, transfer_syntax_uid=None, calling_ae="TESTSCU")

    assert not result.duplicate
    assert any("being marked complete" in w for w in result.warnings)
    stored = db_session.scalar(select(ImagingInstance).where(ImagingInstance.sop_instance_uid == second.SOPInstanceUID))
    assert stored is not None and any("being marked complete" in w for w in stored.warnings)
