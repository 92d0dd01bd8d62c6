"""Demo price catalog: platform-wide prices in EUR plus the demo centre's own CT price, and a second
imaging centre in Shanghai priced in yuan (CNY), so that the demo and the tests show both
currencies on invoices, payments and receipts."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import CatalogEntry, ServiceLine
from billing.service import AI_ANALYSIS_CODE, CONSULTATION_CODE, medication_code, scan_code
from hospital.models import Organization, OrganizationKind
from hospital.seed import DemoSeed

logger = logging.getLogger(__name__)

CATALOG_START = datetime(2025, 1, 1, tzinfo=UTC)
DEMO_MEDICATION = ("J01CA04", "Amoxicillin 500 mg capsules, pack of 21")
# A centre whose every service is priced in yuan: what a scan and its AI reading cost there never
# falls back to the platform's EUR prices (an invoice holds one currency). Its name sorts after
# Riverside's, which stays the first centre a referral form offers (the one with scanners).
CNY_CENTRE = {"name": "Shanghai Pudong Imaging Centre", "ae_title": "PUDONG", "timezone": "Asia/Shanghai"}
CNY_PRICES = [
    (scan_code("CT"), "CT 检查", ServiceLine.SCAN, 68000),
    (scan_code("MR"), "磁共振检查", ServiceLine.SCAN, 128000),
    (AI_ANALYSIS_CODE, "AI 病灶分析", ServiceLine.AI_ANALYSIS, 15000),
]


def seed_catalog(session: Session, seed: DemoSeed) -> None:
    entries = [
        (scan_code("CT"), "CT examination", ServiceLine.SCAN, None, 18000),
        (scan_code("CT"), "CT examination (Riverside tariff)", ServiceLine.SCAN, seed.imaging_centre.id, 15000),
        (scan_code("MR"), "MR examination", ServiceLine.SCAN, None, 32000),
        (AI_ANALYSIS_CODE, "AI lesion-agnostic analysis", ServiceLine.AI_ANALYSIS, None, 2500),
        (CONSULTATION_CODE, "Virtual consultation", ServiceLine.CONSULTATION, None, 6000),
        (medication_code(DEMO_MEDICATION[0]), DEMO_MEDICATION[1], ServiceLine.MEDICATION, None, 850),
    ]
    for code, display, line, org_id, price in entries:
        _add_price(session, code, display, line, org_id, price, "EUR")
    seed.extra["cny_centre"] = seed_cny_centre(session)


def seed_cny_centre(session: Session) -> Organization:
    """The Shanghai demo centre with its yuan prices (once; a second run changes nothing)."""
    centre = session.scalar(select(Organization).where(Organization.ae_title == CNY_CENTRE["ae_title"]))
    if centre is None:
        centre = Organization(kind=OrganizationKind.IMAGING_CENTRE, **CNY_CENTRE)
        session.add(centre)
        session.flush()
    for code, display, line, price in CNY_PRICES:
        _add_price(session, code, display, line, centre.id, price, "CNY")
    return centre


def _add_price(session: Session, code: str, display: str, line: ServiceLine, org_id: int | None, price: int,
               currency: str) -> None:
    exists = session.scalar(
        select(CatalogEntry.id).where(CatalogEntry.code == code, CatalogEntry.organization_id.is_(None) if org_id is None else CatalogEntry.organization_id == org_id)
    )
    if exists is None:
        session.add(CatalogEntry(
            code=code, display=display, service_line=line, organization_id=org_id, unit_price_minor=price,
            currency=currency, effective_from=CATALOG_START,
        ))
