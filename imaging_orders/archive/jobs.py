"""RQ jobs of the image archive. Thin: load ids, call the archive's own functions."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy.orm import Session

from imaging_orders.archive.storage_commitment import deliver_on_new_association

logger = logging.getLogger(__name__)


def send_commitment_report(session: Session, commitment_id: int) -> None:
    """Send a Storage Commitment report on a new association to its requester (retried by the bus)."""
    deliver_on_new_association(session, current_app._get_current_object(), commitment_id)  # type: ignore[attr-defined]
