"""FHIR mappings of billing: the price catalog as ChargeItemDefinition, ChargeItem and Invoice.

Amounts are stored as integer minor units; `money` is the one place they become a FHIR Money,
a decimal with the currency's ISO 4217 exponent (12345 EUR -> 123.45, 500 JPY -> 500), built
with `Decimal`, never a float.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from flask import Flask
from sqlalchemy import ColumnElement, false

from billing.models import CatalogEntry, ChargeItem, ChargeStatus, Invoice, InvoiceStatus, ServiceLine
from hospital.clock import utcnow
from hospital.fhir.registry import (
    CANONICAL_BASE,
    IDENTIFIER_SYSTEM_BASE,
    ResourceMapping,
    SearchParam,
    date_param,
    fhir_instant,
    id_param,
    identifier_param,
    patient_reference_param,
    reference,
    reference_param,
    register_resource,
    token_param,
)

logger = logging.getLogger(__name__)

CHARGE_ITEM_DEFINITION_BASE = f"{CANONICAL_BASE}/ChargeItemDefinition"
SERVICE_CATALOG_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/service-catalog"
CHARGE_EVENT_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/charge-event"
AI_ATTRIBUTED_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/ai-attributed"

# ISO 4217 minor-unit exponents that are not 2.
CURRENCY_EXPONENTS = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF",
         "XOF", "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
# Resource types ChargeItem.service may point at (R4); a charge for anything else (a consultation,
# an Encounter) names it as context or supporting information instead.
SERVICE_TYPES = {
    "DiagnosticReport",
    "ImagingStudy",
    "Immunization",
    "MedicationAdministration",
    "MedicationDispense",
    "Observation",
    "Procedure",
    "SupplyDelivery",
}


def currency_exponent(currency: str) -> int:
    return CURRENCY_EXPONENTS.get(currency.upper(), 2)


def money(minor: int, currency: str) -> dict[str, Any]:
    """Integer minor units as FHIR Money: {'value': Decimal('123.45'), 'currency': 'EUR'}."""
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"money amounts are integer minor units, got {minor!r}")
    return {"value": Decimal(minor).scaleb(-currency_exponent(currency)), "currency": currency.upper()}


def catalog_url(code: str) -> str:
    return f"{CHARGE_ITEM_DEFINITION_BASE}/{code}"


def catalog_canonical(entry: CatalogEntry) -> str:
    """The versioned canonical of one catalog row: a code may have several prices (per
    organisation, per period), each its own version."""
    return f"{catalog_url(entry.code)}|{entry.id}"


def service_concept(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": SERVICE_CATALOG_SYSTEM, "code": code, "display": display}], "text": display}


def charge_item_definition_to_fhir(entry: CatalogEntry) -> dict[str, Any]:
    retired = entry.effective_to is not None and entry.effective_to <= utcnow()
    applicability = None
    if entry.organization_id is not None:
        applicability = [{"description": f"Price of Organization/{entry.organization_id}, overriding the platform price"}]
    return {
        "resourceType": "ChargeItemDefinition",
        "id": str(entry.id),
        "url": catalog_url(entry.code),
        "version": str(entry.id),
        "title": entry.display,
        "status": "retired" if retired else "active",
        "publisher": "closed-loop-hospital",
        "description": f"{ServiceLine(entry.service_line).value} price for {entry.display}",
        "code": service_concept(entry.code, entry.display),
        "effectivePeriod": {"start": fhir_instant(entry.effective_from), "end": fhir_instant(entry.effective_to)},
        "applicability": applicability,
        "propertyGroup": [{"priceComponent": [{"type": "base", "amount": money(entry.unit_price_minor, entry.currency)}]}],
    }


def charge_item_to_fhir(item: ChargeItem) -> dict[str, Any]:
    service_type = item.service_reference.split("/", 1)[0]
    service_ref = {"reference": item.service_reference}
    definition = catalog_canonical(item.catalog_entry) if item.catalog_entry is not None else catalog_url(item.code)
    return {
        "resourceType": "ChargeItem",
        "id": str(item.id),
        "extension": [{"url": AI_ATTRIBUTED_EXTENSION, "valueBoolean": bool(item.ai_attributed)}],
        "identifier": [{"system": CHARGE_EVENT_SYSTEM, "value": item.event_key}],
        "definitionCanonical": [definition],
        "status": ChargeStatus(item.status).value,
        "code": service_concept(item.code, item.display),
        "subject": reference("Patient", item.patient_id),
        "context": service_ref if service_type == "Encounter" else None,
        "occurrenceDateTime": fhir_instant(item.occurred_at),
        "performingOrganization": reference("Organization", item.organization_id),
        "quantity": {"value": item.quantity},
        # The charge's total (unit price x quantity), fixed when the charge was made.
        "priceOverride": money(item.total_minor, item.currency),
        "enteredDate": fhir_instant(item.created_at),
        "service": [service_ref] if service_type in SERVICE_TYPES else None,
        "supportingInformation": [service_ref] if service_type not in SERVICE_TYPES | {"Encounter"} else None,
        "note": [{"text": "AI-attributed: this charge follows from an AI finding"}] if item.ai_attributed else None,
    }


def invoice_to_fhir(invoice: Invoice) -> dict[str, Any]:
    notes = []
    if invoice.period_start is not None or invoice.period_end is not None:
        start, end = fhir_instant(invoice.period_start) or "-", fhir_instant(invoice.period_end) or "-"
        notes.append({"text": f"Charges from {start} to {end}"})
    if invoice.paid_minor:
        paid = money(invoice.paid_minor, invoice.currency)
        notes.append({"text": f"Paid {paid['value']} {paid['currency']}"})
    total = money(invoice.total_minor, invoice.currency)
    return {
        "resourceType": "Invoice",
        "id": str(invoice.id),
        "status": InvoiceStatus(invoice.status).value,
        "subject": reference("Patient", invoice.patient_id),
        "recipient": reference("Patient", invoice.patient_id),
        "date": fhir_instant(invoice.issued_at),
        "lineItem": [
            {
                "sequence": number,
                "chargeItemReference": reference("ChargeItem", item.id),
                "priceComponent": [{"type": "base", "amount": money(item.total_minor, item.currency)}],
            }
            for number, item in enumerate(invoice.items, start=1)
        ]
        or None,
        "totalNet": total,
        "totalGross": total,
        "note": notes or None,
    }


def charge_item_definition_url_param() -> SearchParam:
    def clause(value: str) -> ColumnElement[bool]:
        url, _, version = value.partition("|")
        if not url.startswith(f"{CHARGE_ITEM_DEFINITION_BASE}/"):
            return false()
        code_clause = CatalogEntry.code == url.removeprefix(f"{CHARGE_ITEM_DEFINITION_BASE}/")
        if version:
            if not version.isdigit():
                return false()
            return code_clause & (CatalogEntry.id == int(version))
        return code_clause

    return SearchParam("uri", clause, "Canonical URL, optionally |version")


def register_fhir(app: Flask) -> None:
    register_resource(
        app,
        ResourceMapping(
            "ChargeItemDefinition",
            CatalogEntry,
            charge_item_definition_to_fhir,
            None,
            {
                "_id": id_param(CatalogEntry.id),
                "url": charge_item_definition_url_param(),
                "effective": date_param(CatalogEntry.effective_from, "When the price takes effect"),
            },
        ),
    )
    charge_patient = patient_reference_param(ChargeItem.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "ChargeItem",
            ChargeItem,
            charge_item_to_fhir,
            ChargeItem.patient_id,
            {
                "_id": id_param(ChargeItem.id),
                "patient": charge_patient,
                "subject": charge_patient,
                "status": token_param(ChargeItem.status, "billable | billed | not-billable"),
                "code": token_param(ChargeItem.code, f"Service code ({SERVICE_CATALOG_SYSTEM})"),
                "identifier": identifier_param(ChargeItem.event_key, CHARGE_EVENT_SYSTEM, "The billable event's key"),
                "occurrence": date_param(ChargeItem.occurred_at, "When the charged service happened"),
                "performing-organization": reference_param(
                    ChargeItem.organization_id, "Organization", "The organisation that performed it"
                ),
            },
        ),
    )
    invoice_patient = patient_reference_param(Invoice.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "Invoice",
            Invoice,
            invoice_to_fhir,
            Invoice.patient_id,
            {
                "_id": id_param(Invoice.id),
                "patient": invoice_patient,
                "subject": invoice_patient,
                "status": token_param(Invoice.status, "issued | balanced | cancelled"),
                "date": date_param(Invoice.issued_at, "When it was issued"),
            },
        ),
    )
