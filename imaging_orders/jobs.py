"""RQ jobs of the imaging_orders stage (thin: load ids, call the service)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from imaging_orders.withdrawn_orders import release_withdrawn_order
from referrals.events import ReferralCancelled


def release_appointments_of_cancelled_referral(session: Session, event: ReferralCancelled) -> None:
    release_withdrawn_order(session, event.referral_id)
