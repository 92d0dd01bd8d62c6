"""An administrator adds a price to the catalog: validated, and the price it replaces ends where
the new one starts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import CatalogEntry, ServiceLine
from billing.service import add_catalog_entry, catalog_entries, price_for
from hospital.errors import Conflict, Forbidden, InvalidInput
from hospital.seed import DEMO_PASSWORD, DemoSeed

JAN = datetime(2030, 1, 1, tzinfo=UTC)
JUL = datetime(2030, 7, 1, tzinfo=UTC)


def new_price(session: Session, demo: DemoSeed, **overrides: object) -> CatalogEntry:
    values = dict(code="TEST-MRI-KNEE", display="MRI knee", service_line=ServiceLine.SCAN,
                  organization_id=demo.imaging_centre.id, unit_price_minor=25_000, currency="eur", effective_from=JAN)
    values.update(overrides)
    return add_catalog_entry(session, demo.users["admin"], **values)  # type: ignore[arg-type]


def test_a_new_price_closes_the_open_ended_one_at_its_start(db_session: Session, demo: DemoSeed) -> None:
    first = new_price(db_session, demo)
    assert first.currency == "EUR" and first.effective_to is None
    platform_wide = new_price(db_session, demo, organization_id=None, unit_price_minor=20_000)
    second = new_price(db_session, demo, unit_price_minor=27_500, effective_from=JUL)
    assert first.effective_to == JUL and second.effective_to is None
    assert platform_wide.effective_to is None  # another organisation's price line is left alone
    centre = demo.imaging_centre.id
    assert price_for(db_session, "TEST-MRI-KNEE", centre, JUL - timedelta(seconds=1)).unit_price_minor == 25_000
    assert price_for(db_session, "TEST-MRI-KNEE", centre, JUL).unit_price_minor == 27_500
    listed = [e.id for e in catalog_entries(db_session, demo.users["admin"]) if e.code == "TEST-MRI-KNEE"]
    assert listed == [platform_wide.id, first.id, second.id]
    with pytest.raises(Conflict):
        new_price(db_session, demo, effective_from=JUL)  # must start after the price in force


@pytest.mark.parametrize("overrides", [
    {"unit_price_minor": 12.5}, {"unit_price_minor": -1}, {"currency": "EURO"}, {"currency": "E1R"},
    {"effective_from": datetime(2030, 1, 1)}, {"code": " "},
])
def test_bad_prices_are_refused(db_session: Session, demo: DemoSeed, overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        new_price(db_session, demo, **overrides)
    assert db_session.scalars(select(CatalogEntry).where(CatalogEntry.code == "TEST-MRI-KNEE")).all() == []


def test_only_an_admin_changes_prices(db_session: Session, demo: DemoSeed) -> None:
    with pytest.raises(Forbidden):
        add_catalog_entry(db_session, demo.users["clinician"], code="X", display="X", service_line=ServiceLine.SCAN,
                          organization_id=None, unit_price_minor=1, currency="EUR", effective_from=JAN)


def test_admin_sets_a_new_price_on_the_catalog_page(client: Any, demo: DemoSeed, db_session: Session) -> None:
    token = client.get("/login").get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/login", data={"username": "admin", "password": DEMO_PASSWORD, "csrf_token": token})
    page = client.get("/admin/catalog").get_data(as_text=True)
    assert "Riverside Imaging Centre" in page and "€150.00" in page
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    form = {"csrf_token": token, "code": "IMG-CT", "display": "CT examination (2030 tariff)", "service_line": "scan",
            "organization_id": str(demo.imaging_centre.id), "price": "162.50", "currency": "eur",
            "effective_from": "2030-01-01", "confirmed": "yes"}
    saved = client.post("/admin/catalog", data=form, follow_redirects=True).get_data(as_text=True)
    assert "Price saved." in saved and "€162.50" in saved
    assert price_for(db_session, "IMG-CT", demo.imaging_centre.id, datetime(2030, 2, 1, tzinfo=UTC)).unit_price_minor == 16250
    bad = client.post("/admin/catalog", data={**form, "price": "1.999", "effective_from": "2031-01-01"})
    refused = bad.get_data(as_text=True)
    assert bad.status_code == 422 and "EUR has 2 decimal places" in refused
    # What was typed comes back in the form, and nothing was saved.
    assert 'value="1.999"' in refused and 'value="2031-01-01"' in refused and 'value="CT examination (2030 tariff)"' in refused
    assert f'<option value="{demo.imaging_centre.id}" selected>' in refused
    assert price_for(db_session, "IMG-CT", demo.imaging_centre.id, datetime(2031, 2, 1, tzinfo=UTC)).unit_price_minor == 16250
