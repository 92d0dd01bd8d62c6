"""Demo stock at the demo pharmacy."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.models import PharmacyStock
from hospital.seed import DemoSeed

logger = logging.getLogger(__name__)

DEMO_STOCK = {"J01CA04": 100, "R05DA01": 40}


def seed_pharmacy_stock(session: Session, seed: DemoSeed) -> None:
    for code, quantity in DEMO_STOCK.items():
        exists = session.scalar(select(PharmacyStock.id).where(
            PharmacyStock.pharmacy_organization_id == seed.pharmacy.id, PharmacyStock.medication_code == code))
        if exists is None:
            session.add(PharmacyStock(pharmacy_organization_id=seed.pharmacy.id, medication_code=code, quantity_on_hand=quantity))
