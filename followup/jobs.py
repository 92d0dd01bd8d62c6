"""RQ job: open the consultation of a signed report (idempotent: one per report)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from ai_services.events import ReportSigned
from followup.planning import open_due_repeat_scans, send_due_reminders
from followup.service import open_consultation

logger = logging.getLogger(__name__)


def open_consultation_for_report(session: Session, event: ReportSigned) -> None:
    open_consultation(session, event.report_id)


def process_due_followups(session: Session) -> None:
    """Periodic: repeat scans that fell due become referrals; patients are reminded of due tasks."""
    referrals = open_due_repeat_scans(session)
    reminders = send_due_reminders(session)
    logger.info("follow-ups: %d repeat-scan referral(s) opened, %d reminder(s) sent", len(referrals), reminders)
