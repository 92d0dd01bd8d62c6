"""Demo price catalog in EUR: platform-wide prices plus the demo centre's own CT price."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import CatalogEntry, ServiceLine
from billing.service import AI_ANALYSIS_CODE, CONSULTATION_CODE, medication_code, scan_code
from hospital.seed import DemoSeed

logger = logging.getLogger(__name__)

CATALOG_START = datetime(2025, 1, 1, tzinfo=UTC)
DEMO_MEDICATION = ("J01CA04", "Amoxicillin 500 mg capsules, pack of 21")


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
        exists = session.scalar(
            select(CatalogEntry.id).where(CatalogEntry.code == code, CatalogEntry.organization_id.is_(None) if org_id is None else CatalogEntry.organization_id == org_id)
        )
        if exists is None:
            session.add(CatalogEntry(
                code=code, display=display, service_line=line, organization_id=org_id, unit_price_minor=price,
                currency="EUR", effective_from=CATALOG_START,
            ))
