"""RQ jobs: one per billable event kind. Each creates at most one ChargeItem, however often it runs;
the price is set by what the event says, never by reading the earlier stages' tables."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from ai_services.events import AnalysisCompleted, PackageAnalysisCompleted
from billing import service
from followup.events import ConsultationFinished, MedicationDispensed
from imaging_orders.archive.events import StudyCompleted

logger = logging.getLogger(__name__)


def charge_scan(session: Session, event: StudyCompleted) -> None:
    service.charge_scan(session, event)


def charge_ai_analysis(session: Session, event: AnalysisCompleted) -> None:
    service.charge_ai_analysis(session, event)


def charge_consultation(session: Session, event: ConsultationFinished) -> None:
    service.charge_consultation(session, event)


def charge_dispense(session: Session, event: MedicationDispensed) -> None:
    service.charge_dispense(session, event)


def charge_package_analysis(session: Session, event: PackageAnalysisCompleted) -> None:
    service.charge_package_analysis(session, event)
