"""Billing -> FHIR ChargeItemDefinition, ChargeItem and Invoice; Money from integer minor units."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.fhir import (
    AI_ATTRIBUTED_EXTENSION,
    SERVICE_CATALOG_SYSTEM,
    charge_item_definition_to_fhir,
    charge_item_to_fhir,
    invoice_to_fhir,
    money,
)
from billing.models import CatalogEntry, ChargeItem, ChargeStatus, Invoice, InvoiceStatus, ServiceLine
from hospital.clock import utcnow
from hospital.fhir.registry import validate_resource
from hospital.seed import DemoSeed

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
CATALOG_START = datetime(2025, 1, 1, tzinfo=UTC)
URL = "https://closed-loop-hospital.example/fhir/ChargeItemDefinition/SCAN-CT"


@pytest.mark.parametrize(
    ("minor", "currency", "expected"),
    [
        (12345, "EUR", Decimal("123.45")),
        (100, "EUR", Decimal("1.00")),
        (5, "usd", Decimal("0.05")),
        (0, "EUR", Decimal("0.00")),
        (-250, "GBP", Decimal("-2.50")),
        (500, "JPY", Decimal("500")),
        (1000, "KRW", Decimal("1000")),
        (1234, "KWD", Decimal("1.234")),
        (1, "BHD", Decimal("0.001")),
        (10**15 + 1, "EUR", Decimal("10000000000000.01")),
    ],
)
def test_money_uses_the_currency_exponent(minor: int, currency: str, expected: Decimal) -> None:
    amount = money(minor, currency)

    assert amount == {"value": expected, "currency": currency.upper()}
    assert str(amount["value"]) == str(expected)  # same digits, not just an equal number


def test_money_refuses_floats() -> None:
    with pytest.raises(TypeError):
        money(123.45, "EUR")  # type: ignore[arg-type]


def test_money_survives_fhir_validation_exactly() -> None:
    resource = validate_resource(
        {"resourceType": "Invoice", "status": "issued", "totalNet": money(12345, "EUR"), "totalGross": money(500, "JPY")}
    )

    assert resource["totalNet"] == {"value": 123.45, "currency": "EUR"}
    assert resource["totalGross"] == {"value": 500, "currency": "JPY"}


def make_entry(**overrides: object) -> CatalogEntry:
    values: dict[str, object] = dict(
        id=3, code="SCAN-CT", display="CT examination", service_line=ServiceLine.SCAN, organization_id=None,
        unit_price_minor=18000, currency="EUR", effective_from=CATALOG_START, effective_to=None,
    )
    values.update(overrides)
    return CatalogEntry(**values)


def make_charge(**overrides: object) -> ChargeItem:
    values: dict[str, object] = dict(
        id=90, event_key="scan:ImagingStudy/21", patient_id=7, catalog_entry_id=3, catalog_entry=make_entry(),
        organization_id=2, service_line=ServiceLine.SCAN, code="SCAN-CT", display="CT examination", quantity=1,
        unit_price_minor=18000, total_minor=18000, currency="EUR", service_reference="ImagingStudy/21",
        ai_attributed=False, status=ChargeStatus.BILLABLE, occurred_at=NOW, created_at=NOW,
    )
    values.update(overrides)
    return ChargeItem(**values)


def test_charge_item_definition_prices_a_code() -> None:
    resource = validate_resource(charge_item_definition_to_fhir(make_entry()))

    assert resource["url"] == URL
    assert resource["status"] == "active"
    assert resource["code"]["coding"][0] == {"system": SERVICE_CATALOG_SYSTEM, "code": "SCAN-CT", "display": "CT examination"}
    assert resource["effectivePeriod"] == {"start": "2025-01-01T00:00:00Z"}
    assert resource["propertyGroup"][0]["priceComponent"] == [{"type": "base", "amount": {"value": 180.0, "currency": "EUR"}}]
    assert "applicability" not in resource


def test_ended_price_is_retired_and_organisation_price_says_so() -> None:
    resource = validate_resource(
        charge_item_definition_to_fhir(make_entry(organization_id=2, effective_to=utcnow() - timedelta(days=1)))
    )

    assert resource["status"] == "retired"
    assert "Organization/2" in resource["applicability"][0]["description"]
    future_end = validate_resource(charge_item_definition_to_fhir(make_entry(effective_to=utcnow() + timedelta(days=30))))
    assert future_end["status"] == "active"


@pytest.mark.parametrize("status", list(ChargeStatus))
def test_charge_item_maps_service_price_and_definition(status: ChargeStatus) -> None:
    resource = validate_resource(charge_item_to_fhir(make_charge(status=status)))

    assert resource["status"] == status.value
    assert resource["code"]["coding"][0]["code"] == "SCAN-CT"
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["occurrenceDateTime"] == "2025-03-14T09:30:00Z"
    assert resource["performingOrganization"] == {"reference": "Organization/2"}
    assert resource["quantity"] == {"value": 1}
    assert resource["priceOverride"] == {"value": 180.0, "currency": "EUR"}
    assert resource["service"] == [{"reference": "ImagingStudy/21"}]
    assert resource["definitionCanonical"] == [f"{URL}|3"]
    assert resource["extension"] == [{"url": AI_ATTRIBUTED_EXTENSION, "valueBoolean": False}]
    assert "note" not in resource


def test_ai_attributed_consultation_charge() -> None:
    charge = make_charge(service_reference="Encounter/50", ai_attributed=True, code="CONSULT-VIRTUAL", quantity=2,
                         unit_price_minor=6000, total_minor=12000)

    resource = validate_resource(charge_item_to_fhir(charge))

    assert resource["extension"] == [{"url": AI_ATTRIBUTED_EXTENSION, "valueBoolean": True}]
    assert "AI" in resource["note"][0]["text"]
    assert resource["context"] == {"reference": "Encounter/50"}  # an Encounter is not a ChargeItem.service
    assert "service" not in resource
    assert resource["priceOverride"] == {"value": 120.0, "currency": "EUR"}


@pytest.mark.parametrize("status", list(InvoiceStatus))
def test_invoice_totals_and_line_items(status: InvoiceStatus) -> None:
    invoice = Invoice(id=95, patient_id=7, status=status, currency="EUR", total_minor=20505, paid_minor=0, issued_at=NOW,
                      period_start=CATALOG_START, period_end=NOW)
    make_charge(id=90, invoice=invoice, status=ChargeStatus.BILLED)
    make_charge(id=91, invoice=invoice, status=ChargeStatus.BILLED, code="AI-LESION-DETECT", unit_price_minor=2505,
                total_minor=2505, service_reference="DiagnosticReport/40", ai_attributed=True)

    resource = validate_resource(invoice_to_fhir(invoice))

    assert resource["status"] == status.value
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["date"] == "2025-03-14T09:30:00Z"
    assert resource["totalNet"] == {"value": 205.05, "currency": "EUR"}
    assert resource["totalGross"] == {"value": 205.05, "currency": "EUR"}
    assert [line["chargeItemReference"] for line in resource["lineItem"]] == [
        {"reference": "ChargeItem/90"}, {"reference": "ChargeItem/91"},
    ]
    amounts = [line["priceComponent"][0]["amount"]["value"] for line in resource["lineItem"]]
    assert amounts == [180.0, 25.05]
    assert [line["sequence"] for line in resource["lineItem"]] == [1, 2]
    assert resource["note"] == [{"text": "Charges from 2025-01-01T00:00:00+00:00 to 2025-03-14T09:30:00+00:00"}]


def test_yen_invoice_keeps_whole_units() -> None:
    invoice = Invoice(id=96, patient_id=7, status=InvoiceStatus.BALANCED, currency="JPY", total_minor=500, paid_minor=500, issued_at=NOW)

    resource = validate_resource(invoice_to_fhir(invoice))

    assert resource["totalNet"] == {"value": 500, "currency": "JPY"}
    assert resource["note"] == [{"text": "Paid 500 JPY"}]
    assert "lineItem" not in resource


# --- through the app -----------------------------------------------------------------------------


def insert_invoice(db_session: Session, demo: DemoSeed) -> tuple[CatalogEntry, ChargeItem, Invoice]:
    entry = db_session.scalars(select(CatalogEntry).order_by(CatalogEntry.id)).first()
    assert entry is not None, "the demo seed has a price catalog"
    invoice = Invoice(patient_id=demo.patient.id, currency=entry.currency, total_minor=entry.unit_price_minor)
    db_session.add(invoice)
    db_session.flush()
    charge = ChargeItem(
        event_key="fhir-test:1", patient_id=demo.patient.id, catalog_entry_id=entry.id, organization_id=demo.imaging_centre.id,
        service_line=entry.service_line, code=entry.code, display=entry.display, unit_price_minor=entry.unit_price_minor,
        total_minor=entry.unit_price_minor, currency=entry.currency, service_reference="ImagingStudy/1",
        status=ChargeStatus.BILLED, occurred_at=NOW, invoice_id=invoice.id,
    )
    db_session.add(charge)
    db_session.commit()
    return entry, charge, invoice


def test_read_and_search_billing_resources(as_role, demo, db_session) -> None:
    entry, charge, invoice = insert_invoice(db_session, demo)
    patient = as_role("patient")

    definition = patient.get(f"/fhir/ChargeItemDefinition/{entry.id}")
    assert definition.status_code == 200, definition.get_data(as_text=True)
    url = validate_resource(definition.get_json())["url"]
    found = validate_resource(patient.get(f"/fhir/ChargeItemDefinition?url={url}|{entry.id}").get_json())
    assert [e["resource"]["id"] for e in found["entry"]] == [str(entry.id)]

    read = patient.get(f"/fhir/Invoice/{invoice.id}")
    assert read.status_code == 200, read.get_data(as_text=True)
    body = validate_resource(read.get_json())
    assert body["lineItem"][0]["chargeItemReference"] == {"reference": f"ChargeItem/{charge.id}"}

    for type_name, row_id in (("ChargeItem", charge.id), ("Invoice", invoice.id)):
        response = patient.get(f"/fhir/{type_name}?patient=Patient/{demo.patient.id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        bundle = validate_resource(response.get_json())
        assert str(row_id) in {e["resource"]["id"] for e in bundle["entry"]}
    billed = validate_resource(patient.get(f"/fhir/ChargeItem?patient={demo.patient.id}&status=billed&occurrence=2025-03").get_json())
    assert billed["total"] == 1


def test_a_patient_cannot_read_another_patients_invoice(as_role, demo, db_session) -> None:
    _, charge, invoice = insert_invoice(db_session, demo)

    for url in (f"/fhir/Invoice/{invoice.id}", f"/fhir/ChargeItem/{charge.id}"):
        denied = as_role("patient2").get(url)
        assert denied.status_code == 403
        assert denied.get_json()["resourceType"] == "OperationOutcome"
    listed = validate_resource(as_role("patient2").get(f"/fhir/Invoice?patient={demo.patient.id}").get_json())
    assert listed["total"] == 0
