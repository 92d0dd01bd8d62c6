"""The ordering side of the imaging stage, as later stages may use it (the archive has its own
public face, `imaging_orders.archive.public`)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from hospital.errors import NotFound
from imaging_orders import service
from referrals.models import Referral

logger = logging.getLogger(__name__)

__all__ = ["accept_follow_up_referral"]


def accept_follow_up_referral(session: Session, referral_id: int) -> str:
    """The centre that did the first examination accepts its repeat (no triage needed); returns the
    AccessionNumber assigned."""
    referral = session.get(Referral, referral_id, with_for_update=True)
    if referral is None:
        raise NotFound(f"referral {referral_id} does not exist")
    accepted = service.accept_follow_up_referral(session, referral)
    assert accepted.accession_number is not None
    return accepted.accession_number
