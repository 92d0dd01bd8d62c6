"""The administrator's audit page pages through the trail newest first (keyset by id, so a page
stays right while rows are added), and exports the rows of a search as CSV."""

from __future__ import annotations

import csv
import io
import re

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from tests.referrals.test_referral_pages import sign_in


def seed_reads(db_session: Session, demo: DemoSeed, count: int) -> list[int]:
    radiologist = demo.users["radiologist"]
    events = [record_access(db_session, radiologist, "R", "DiagnosticReport", 100 + i, patient_id=demo.patient.id,
                            description="=HYPERLINK(\"http://evil.example\")" if i == 0 else None)
              for i in range(count)]
    db_session.commit()
    return [e.id for e in events]


def entity_ids(page: str) -> list[str]:
    return re.findall(r"DiagnosticReport/(\d+)", page)


def test_the_audit_page_pages_by_id(
    client: FlaskClient, db_session: Session, demo: DemoSeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hospital.admin_pages.MAX_ROWS", 2)
    seed_reads(db_session, demo, 5)
    sign_in(client, "admin")
    seen: list[str] = []
    url = "/admin/audit?user=radiologist"
    for _ in range(5):
        page = client.get(url).get_data(as_text=True)
        seen += entity_ids(page)
        older = re.search(r'href="(/admin/audit\?[^"]*before=\d+[^"]*)"[^>]*>Older', page)
        if older is None:
            break
        url = older.group(1).replace("&amp;", "&")
        assert "user=radiologist" in url  # the filters carry over
    assert seen == ["104", "103", "102", "101", "100"]


def test_the_audit_search_exports_as_csv(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    ids = seed_reads(db_session, demo, 3)
    sign_in(client, "admin")
    page = client.get("/admin/audit?user=radiologist").get_data(as_text=True)
    assert 'href="/admin/audit.csv?user=radiologist"' in page
    response = client.get("/admin/audit.csv?user=radiologist")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(r["id"]) for r in rows] == sorted(ids, reverse=True)
    assert {r["user"] for r in rows} == {"radiologist"} and {r["patient_mrn"] for r in rows} == {demo.patient.mrn}
    assert all(len(r["row_hash"]) == 64 for r in rows)
    first = next(r for r in rows if int(r["id"]) == ids[0])
    assert first["description"].startswith("'=")  # a spreadsheet must not run it as a formula
    exports = db_session.scalars(select(AuditEvent).where(
        AuditEvent.entity_type == "AuditEvent", AuditEvent.description.like("audit export%"))).all()
    assert len(exports) == 1


def test_only_administrators_export(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    assert client.get("/admin/audit.csv").status_code == 403


def test_a_date_at_the_end_of_the_calendar_is_refused_not_a_crash(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "admin")
    assert client.get("/admin/audit?to=9999-12-31").status_code == 400
    assert client.get("/admin/audit.csv?to=9999-12-31").status_code == 400
