"""The integration stage's jobs: thin, ids in, the work in hl7_results and subscriptions."""

from __future__ import annotations

import logging

from flask import Flask, current_app
from sqlalchemy.orm import Session

from ai_services.events import ReportAmended, ReportSigned
from imaging_orders.events import AppointmentBooked, AppointmentCancelled
from integration import hl7_results, subscriptions

logger = logging.getLogger(__name__)


def _app() -> Flask:
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


def send_results_for_report(session: Session, event: ReportSigned) -> None:
    """ReportSigned: an ORU^R01 queued for every configured destination."""
    hl7_results.queue_results(session, _app(), event)


def send_results_for_amendment(session: Session, event: ReportAmended) -> None:
    """ReportAmended: a corrected-result ORU^R01 (OBR-25 C) with the addendum, to every destination."""
    hl7_results.queue_results(session, _app(), event)


def deliver_result(session: Session, outbound_id: int) -> None:
    hl7_results.deliver_result(session, _app(), outbound_id)


def notify_report_signed(session: Session, event: ReportSigned) -> None:
    """ReportSigned: a numbered notification for each subscription to signed reports that may see it."""
    subscriptions.record_event(session, "report-signed", "DiagnosticReport", event.report_id, event.patient_id,
                               occasion_key=f"report-signed:{event.report_id}")


def notify_report_amended(session: Session, event: ReportAmended) -> None:
    subscriptions.record_event(session, "report-amended", "DiagnosticReport", event.report_id, event.patient_id,
                               occasion_key=f"report-amended:{event.addendum_id}")


def notify_appointment_booked(session: Session, event: AppointmentBooked) -> None:
    subscriptions.record_event(session, "appointment-booked", "Appointment", event.appointment_id, event.patient_id,
                               event.organization_id, occasion_key=f"appointment-booked:{event.appointment_id}")


def notify_appointment_cancelled(session: Session, event: AppointmentCancelled) -> None:
    subscriptions.record_event(session, "appointment-cancelled", "Appointment", event.appointment_id,
                               event.patient_id, event.organization_id,
                               occasion_key=f"appointment-cancelled:{event.appointment_id}")


def deliver_subscription_notification(session: Session, notification_id: int) -> None:
    subscriptions.deliver_notification(session, _app(), notification_id)


def handshake_subscription(session: Session, subscription_id: int) -> None:
    subscriptions.handshake(session, _app(), subscription_id)


def check_subscriptions(session: Session) -> None:
    """Periodic: notifications due a retry are scheduled again; idle subscriptions get a heartbeat."""
    subscriptions.deliver_due_notifications(session, _app())
    subscriptions.send_heartbeats(session, _app())
