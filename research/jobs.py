"""The research stage's jobs: thin, ids in, the work in research.service."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from ai_services.events import ReportSigned
from research import service

logger = logging.getLogger(__name__)


def record_contribution_for_report(session: Session, event: ReportSigned) -> None:
    """ReportSigned: remember the study and its reviewed findings as a research contribution."""
    service.record_contribution(session, event.report_id)
