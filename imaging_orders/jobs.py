"""RQ jobs of the imaging_orders stage (thin: load ids, call the service; the archive's are
`imaging_orders.archive.jobs`)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from imaging_orders.service import remind_upcoming_appointments
from imaging_orders.withdrawn_orders import release_withdrawn_order
from referrals.events import ReferralCancelled

logger = logging.getLogger(__name__)


def release_appointments_of_cancelled_referral(session: Session, event: ReferralCancelled) -> None:
    release_withdrawn_order(session, event.referral_id)


def remind_appointments(session: Session) -> None:
    """Periodic: patients whose scan starts within 24 hours are reminded (once per appointment)."""
    told = remind_upcoming_appointments(session)
    logger.info("appointment reminders: %d patient(s) reminded", told)
