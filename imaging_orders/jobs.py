"""RQ jobs of the imaging_orders stage (the archive's are `imaging_orders.archive.jobs`)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from imaging_orders.service import remind_upcoming_appointments

logger = logging.getLogger(__name__)


def remind_appointments(session: Session) -> None:
    """Periodic: patients whose scan starts within 24 hours are reminded (once per appointment)."""
    told = remind_upcoming_appointments(session)
    logger.info("appointment reminders: %d patient(s) reminded", told)
