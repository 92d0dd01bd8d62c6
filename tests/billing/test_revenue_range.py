"""Revenue for a date range on the administrator's own calendar, and its CSV in major units with
the currency (what a spreadsheet or an accountant reads), over the same range."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from billing.service import AI_ANALYSIS_CODE, BillableEvent, charge, scan_code
from hospital.seed import DemoSeed
from tests.referrals.test_referral_pages import sign_in


def charges_around_midnight(db_session: Session, demo: DemoSeed) -> None:
    """A CT at 23:30 UTC on 31 Jan 2030 (00:30 on 1 Feb in Berlin), and an AI analysis on 2 Feb."""
    centre = demo.imaging_centre.id
    for key, code, at, ai in [
        ("range:ct", scan_code("CT"), datetime(2030, 1, 31, 23, 30, tzinfo=UTC), False),
        ("range:ai", AI_ANALYSIS_CODE, datetime(2030, 2, 2, 12, 0, tzinfo=UTC), True),
    ]:
        charge(db_session, BillableEvent(key, demo.patient.id, code, centre if code != AI_ANALYSIS_CODE else None,
                                         f"ImagingStudy/{key}", at, ai_attributed=ai))
    db_session.commit()


def csv_rows(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 200 and response.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_the_range_is_days_on_the_admins_clock(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    charges_around_midnight(db_session, demo)
    admin = as_role("admin")
    in_utc = admin.get("/api/revenue?group_by=service_line&from=2030-02-01&to=2030-02-01").get_json()
    assert in_utc == []  # 23:30 UTC on 31 January is not 1 February in UTC
    demo.users["admin"].timezone = "Europe/Berlin"
    db_session.commit()
    in_berlin = admin.get("/api/revenue?group_by=service_line&from=2030-02-01&to=2030-02-01").get_json()
    assert [(line["group"], line["total_minor"]) for line in in_berlin] == [("scan", 15000)]
    everything = admin.get("/api/revenue?group_by=service_line&from=2030-01-01").get_json()
    assert {line["group"] for line in everything} == {"scan", "ai-analysis"}


def test_the_csv_is_in_major_units_with_the_currency_for_the_range(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    charges_around_midnight(db_session, demo)
    admin = as_role("admin")
    response = admin.get("/api/revenue?group_by=service_line&format=csv&from=2030-02-02&to=2030-02-28")
    rows = csv_rows(response)
    assert rows == [{"service_line": "ai-analysis", "currency": "EUR", "charges": "1", "total": "25.00",
                     "ai_enabled": "25.00"}]
    assert "2030-02-02-to-2030-02-28" in response.headers["Content-Disposition"]
    rows = csv_rows(admin.get("/api/revenue?group_by=service_line&format=csv"))
    assert {r["service_line"]: r["total"] for r in rows} == {"ai-analysis": "25.00", "scan": "150.00"}


def test_a_bad_range_is_refused_clearly(as_role: Any, client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    admin = as_role("admin")
    refused = admin.get("/api/revenue?from=2030-02-10&to=2030-02-01")
    assert refused.status_code == 400 and "before" in refused.get_json()["detail"]
    assert admin.get("/api/revenue?from=10/02/2030").status_code == 400
    sign_in(client, "admin")
    page = client.get("/admin/revenue?from=2030-02-10&to=2030-02-01")
    html = page.get_data(as_text=True)
    assert page.status_code == 422 and "The “to” date is before the “from” date." in html
    assert 'value="2030-02-10"' in html  # what was typed stays in the form


def test_the_page_filters_and_links_the_csv_of_the_same_range(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    charges_around_midnight(db_session, demo)
    sign_in(client, "admin")
    html = client.get("/admin/revenue?from=2030-02-02&to=2030-02-28").get_data(as_text=True)
    assert "€150.00" not in html and "€25.00" in html
    assert "/api/revenue?group_by=service_line&amp;format=csv&amp;from=2030-02-02&amp;to=2030-02-28" in html
    assert "AI-enabled" in html


def test_dates_at_the_ends_of_the_calendar_are_refused_not_a_crash(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    demo.users["admin"].timezone = "Asia/Tokyo"  # east of UTC: 0001-01-01 local is before year 1 in UTC
    db_session.commit()
    admin = as_role("admin")
    for args in ("to=9999-12-31", "from=0001-01-01"):
        response = admin.get(f"/api/revenue?{args}")
        assert response.status_code == 400, args
        assert "between" in response.get_json()["detail"]


def test_months_are_the_admins_months(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    charges_around_midnight(db_session, demo)  # the CT: 31 January in UTC, 1 February in Berlin
    admin = as_role("admin")
    assert [m["group"] for m in admin.get("/api/revenue?group_by=month").get_json()] == ["2030-01", "2030-02"]
    demo.users["admin"].timezone = "Europe/Berlin"
    db_session.commit()
    months = admin.get("/api/revenue?group_by=month").get_json()
    assert [(m["group"], m["charges"]) for m in months] == [("2030-02", 2)]
