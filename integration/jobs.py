"""The integration stage's jobs: thin, ids in, the work in hl7_results."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy.orm import Session

from ai_services.events import ReportAmended, ReportSigned
from integration import hl7_results

logger = logging.getLogger(__name__)


def send_results_for_report(session: Session, event: ReportSigned) -> None:
    """ReportSigned: an ORU^R01 queued for every configured destination."""
    hl7_results.queue_results(session, current_app._get_current_object(), event)  # type: ignore[attr-defined]


def send_results_for_amendment(session: Session, event: ReportAmended) -> None:
    """ReportAmended: a corrected-result ORU^R01 (OBR-25 C) with the addendum, to every destination."""
    hl7_results.queue_results(session, current_app._get_current_object(), event)  # type: ignore[attr-defined]


def deliver_result(session: Session, outbound_id: int) -> None:
    hl7_results.deliver_result(session, current_app._get_current_object(), outbound_id)  # type: ignore[attr-defined]
