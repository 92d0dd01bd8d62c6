"""Demo schedule: one CT room at the demo imaging centre with half-hour slots for two weeks, and
what its patients are told: the centre's address and map link, and how to prepare for a CT or MR."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.clock import utcnow
from hospital.seed import DemoSeed
from imaging_orders.models import CentreDirections, ExaminationPreparation, Schedule, Slot

logger = logging.getLogger(__name__)

SLOT_MINUTES = 30
DAYS_AHEAD = 14

DEMO_ADDRESS_EN = "12 Riverside Road, Riverside, entrance B (ground floor)"
DEMO_ADDRESS_ZH = "滨江路12号，B入口（一楼）"
DEMO_MAP_URL = "https://www.openstreetmap.org/?mlat=31.2304&mlon=121.4737#map=17/31.2304/121.4737"
DEMO_PREPARATION = {
    "CT": ("If your CT is with contrast: do not eat for 4 hours before it (water is fine) and bring your "
           "latest kidney blood test. Arrive 15 minutes early.",
           "如为增强CT：检查前4小时禁食（可以喝水），请携带最近一次肾功能化验单。请提前15分钟到达。"),
    "MR": ("Remove all metal (jewellery, hairpins, watches, cards with magnetic strips). Tell us about a "
           "pacemaker, implant or metal fragments before the scan. Arrive 15 minutes early.",
           "请取下所有金属物品（首饰、发夹、手表、磁卡）。如体内有心脏起搏器、植入物或金属碎片，请在检查前告知我们。"
           "请提前15分钟到达。"),
}


def seed_schedules(session: Session, seed: DemoSeed) -> None:
    schedule = session.scalar(select(Schedule).where(Schedule.organization_id == seed.imaging_centre.id))
    if schedule is None:
        schedule = Schedule(
            organization_id=seed.imaging_centre.id, name="CT scanner 1", modality="CT", room="Room 1",
            station_ae_title="CT1",
        )
        session.add(schedule)
        session.flush()
        today = utcnow().date()
        slots = []
        for day in range(DAYS_AHEAD + 1):
            opening = datetime.combine(today + timedelta(days=day), time(7, 0), tzinfo=UTC)
            for n in range(24):  # 07:00 to 19:00 UTC
                start = opening + timedelta(minutes=SLOT_MINUTES * n)
                slots.append(Slot(schedule_id=schedule.id, start=start, end=start + timedelta(minutes=SLOT_MINUTES)))
        session.add_all(slots)
    seed.extra["schedule"] = schedule
    _seed_visit_guide(session, seed.imaging_centre.id)


def _seed_visit_guide(session: Session, centre_id: int) -> None:
    if session.get(CentreDirections, centre_id) is None:
        session.add(CentreDirections(organization_id=centre_id, address_en=DEMO_ADDRESS_EN,
                                     address_zh=DEMO_ADDRESS_ZH, map_url=DEMO_MAP_URL))
    written = set(session.scalars(
        select(ExaminationPreparation.modality).where(ExaminationPreparation.organization_id == centre_id)))
    for modality, (english, chinese) in DEMO_PREPARATION.items():
        if modality not in written:
            session.add(ExaminationPreparation(organization_id=centre_id, modality=modality,
                                               instructions_en=english, instructions_zh=chinese))
