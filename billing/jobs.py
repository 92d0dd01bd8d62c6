"""RQ jobs: one per billable event kind. Each creates at most one ChargeItem, however often it runs."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from billing import service

logger = logging.getLogger(__name__)


def charge_scan(session: Session, study_id: int) -> None:
    service.charge_scan(session, study_id)


def charge_ai_analysis(session: Session, report_id: int) -> None:
    service.charge_ai_analysis(session, report_id)


def charge_consultation(session: Session, consultation_id: int) -> None:
    service.charge_consultation(session, consultation_id)


def charge_dispense(session: Session, dispense_id: int) -> None:
    service.charge_dispense(session, dispense_id)
