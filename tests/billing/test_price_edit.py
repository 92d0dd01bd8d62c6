"""An administrator changes a price in place on the price list, typing it as their locale writes
it ("165,00" or "165.00"); negatives and more decimals than the currency has are refused with a
clear message; every change is audited and starts a new price from a date (charges keep theirs)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import CatalogEntry
from billing.service import price_for, scan_code
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from tests.referrals.test_referral_pages import csrf_token_of, sign_in

GERMAN = {"Accept-Language": "de-DE,de;q=0.9,en;q=0.8"}


def riverside_ct(db_session: Session, demo: DemoSeed) -> CatalogEntry:
    entry = db_session.scalar(select(CatalogEntry).where(
        CatalogEntry.code == scan_code("CT"), CatalogEntry.organization_id == demo.imaging_centre.id))
    assert entry is not None
    return entry


def change(client: FlaskClient, entry_id: int, price: str, day: str, headers: dict[str, str] | None = None) -> Any:
    token = csrf_token_of(client.get("/admin/catalog").get_data(as_text=True))
    return client.post("/admin/catalog", headers=headers or {}, data={
        "csrf_token": token, "action": "change", "entry_id": str(entry_id), "price": price, "effective_from": day,
        "confirmed": "yes"})


@pytest.mark.parametrize("typed", ["165,00", "165.00", "165"])
def test_a_price_is_changed_in_place_as_the_locale_writes_it(
    client: FlaskClient, db_session: Session, demo: DemoSeed, typed: str
) -> None:
    sign_in(client, "admin")
    entry = riverside_ct(db_session, demo)
    page = client.get("/admin/catalog").get_data(as_text=True)
    assert f'id="change-{entry.id}"' in page  # the form sits on the entry's row
    response = change(client, entry.id, typed, "2030-03-01", GERMAN)
    assert response.status_code == 302
    assert price_for(db_session, scan_code("CT"), demo.imaging_centre.id, datetime(2030, 3, 2, tzinfo=UTC)).unit_price_minor == 16500
    assert price_for(db_session, scan_code("CT"), demo.imaging_centre.id, datetime(2030, 2, 28, tzinfo=UTC)).unit_price_minor == 15000
    audited = db_session.scalars(select(AuditEvent).where(AuditEvent.entity_type == "ChargeItemDefinition")).all()
    assert [e.description for e in audited][-1].startswith(f"{scan_code('CT')} 16500 EUR from 2030-03-01")
    shown = client.get("/admin/catalog").get_data(as_text=True)
    assert "€165.00" in shown


@pytest.mark.parametrize(("typed", "message"), [
    ("-5,00", "cannot be negative"),
    ("165,005", "EUR has 2 decimal places"),
    ("one hundred", "is not an amount"),
])
def test_a_bad_price_is_refused_clearly(
    client: FlaskClient, db_session: Session, demo: DemoSeed, typed: str, message: str
) -> None:
    sign_in(client, "admin")
    entry = riverside_ct(db_session, demo)
    response = change(client, entry.id, typed, "2030-03-01", GERMAN)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in html
    assert re.search(rf'id="price-{entry.id}"[^>]*value="{re.escape(typed)}"', html)  # kept as typed
    assert price_for(db_session, scan_code("CT"), demo.imaging_centre.id, datetime(2030, 3, 2, tzinfo=UTC)).unit_price_minor == 15000


def test_an_english_reader_writes_a_thousands_comma(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    sign_in(client, "admin")
    entry = riverside_ct(db_session, demo)
    assert change(client, entry.id, "1,650.00", "2030-03-01", {"Accept-Language": "en-GB"}).status_code == 302
    assert price_for(db_session, scan_code("CT"), demo.imaging_centre.id, datetime(2030, 3, 2, tzinfo=UTC)).unit_price_minor == 165000


def test_only_administrators_change_prices(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    assert client.get("/admin/catalog").status_code == 403
