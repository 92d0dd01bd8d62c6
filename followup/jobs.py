"""RQ job: open the consultation of a signed report (idempotent: one per report)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from followup.service import open_consultation

logger = logging.getLogger(__name__)


def open_consultation_for_report(session: Session, report_id: int) -> None:
    open_consultation(session, report_id)
