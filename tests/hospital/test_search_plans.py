"""The hot searches stay index lookups as the tables grow: with tens of thousands of patients and
studies loaded (and ANALYZEd), PostgreSQL's plan for each SQL statement the FHIR and QIDO code
itself sends for a name or PatientID search reads no big table sequentially.

bench/growth.py measured what this guards: before the lower(...) indexes, `Patient?family=` went
from 4 ms at 1k records to 67 ms at 100k, and QIDO by PatientID from 6 to 43 ms.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.seed import DemoSeed
from tests.plans import scan_problems, statements_sent

ROWS = 30_000
BIG_TABLES = {"patient", "imaging_study"}


def load(session: Session, demo: DemoSeed) -> None:
    session.execute(text(
        "INSERT INTO patient (mrn, family_name, given_name, gender, timezone, created_at, updated_at) "
        "SELECT 'P-' || n, 'Fam' || n, 'Given' || n, 'unknown', 'UTC', now(), now() "
        "FROM generate_series(1, :rows) AS n"), {"rows": ROWS})
    session.execute(text(
        "INSERT INTO imaging_study (study_instance_uid, accession_number, organization_id, status, dicom_patient_id, "
        "dicom_patient_name, received_at, last_instance_at) "
        "SELECT '2.25.' || (7000000 + n), 'A' || n, :centre, 'available', 'P-' || n, 'Fam' || n || '^Given' || n, "
        "now(), now() FROM generate_series(1, :rows) AS n"), {"rows": ROWS, "centre": demo.imaging_centre.id})
    session.execute(text("ANALYZE patient"))
    session.execute(text("ANALYZE imaging_study"))
    session.commit()


@pytest.mark.parametrize("path", [
    "/fhir/Patient?family=Fam2345",
    "/fhir/Patient?name=given2345",
    "/fhir/Patient?family=fam23456&_count=5",
    "/dicomweb/studies?PatientID=P-2345",
    "/dicomweb/studies?PatientID=p-234*",
    "/dicomweb/studies?AccessionNumber=A2345",
])
def test_name_and_patient_id_searches_use_an_index_on_big_tables(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, path: str
) -> None:
    if db_session.bind is None or db_session.bind.dialect.name != "postgresql":
        pytest.skip("plans are PostgreSQL's")
    load(db_session, demo)
    admin = as_role("admin")
    with statements_sent(get_db(app).engine, BIG_TABLES) as sent:
        response = admin.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    body = response.get_json()
    found = len(body.get("entry", [])) if isinstance(body, dict) else len(body)
    assert found >= 1, f"{path} found nothing: the search itself must work"
    assert sent, "no SQL on the big tables was captured"
    problems = scan_problems(db_session.connection(), sent, BIG_TABLES)
    assert not problems, "\n".join(problems)
