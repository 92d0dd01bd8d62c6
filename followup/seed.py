"""Demo formulary and stock: coded items (ATC and RxNorm) and lots with their expiry at the demo
pharmacy. Idempotent: an item is found by its code, a lot by its number."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from followup.formulary import ATC_SYSTEM, RXNORM_SYSTEM
from followup.models import FormularyItem, StockLot
from hospital.clock import utcnow
from hospital.seed import DemoSeed

logger = logging.getLogger(__name__)

# (system, code, display). ATC codes name the substance, so the display names the product stocked.
DEMO_FORMULARY = (
    (ATC_SYSTEM, "J01CA04", "Amoxicillin 500 mg capsules, pack of 21"),
    (ATC_SYSTEM, "R05DA01", "Ethylmorphine oral solution, 100 ml"),
    (ATC_SYSTEM, "R05DA09", "Dextromethorphan 15 mg/5 ml oral solution, 100 ml"),
    (ATC_SYSTEM, "N02BE01", "Paracetamol 500 mg tablets"),
    (RXNORM_SYSTEM, "313782", "Acetaminophen 325 MG Oral Tablet"),
    (RXNORM_SYSTEM, "310965", "Ibuprofen 200 MG Oral Tablet"),
)
# code -> (lot number, units, days until expiry) at the demo pharmacy.
DEMO_STOCK = {"J01CA04": ("AMX-2401", 100, 400), "R05DA01": ("EMO-2402", 40, 200)}


def seed_formulary(session: Session, seed: DemoSeed) -> None:
    for system, code, display in DEMO_FORMULARY:
        if session.scalar(select(FormularyItem.id).where(FormularyItem.code == code)) is None:
            session.add(FormularyItem(system=system, code=code, display=display))
    session.flush()


def seed_pharmacy_stock(session: Session, seed: DemoSeed) -> None:
    today = utcnow().date()
    for code, (lot_number, quantity, days) in DEMO_STOCK.items():
        exists = session.scalar(select(StockLot.id).where(
            StockLot.pharmacy_organization_id == seed.pharmacy.id, StockLot.medication_code == code,
            StockLot.lot_number == lot_number))
        if exists is None:
            session.add(StockLot(pharmacy_organization_id=seed.pharmacy.id, medication_code=code, lot_number=lot_number,
                                 expires_on=today + timedelta(days=days), quantity_on_hand=quantity))
