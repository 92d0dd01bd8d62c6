"""Demo schedule: one CT room at the demo imaging centre with half-hour slots for two weeks."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.clock import utcnow
from hospital.seed import DemoSeed
from imaging_orders.models import Schedule, Slot

logger = logging.getLogger(__name__)

SLOT_MINUTES = 30
DAYS_AHEAD = 14


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
