"""RQ jobs of the image archive. Thin: load ids, call the archive's own functions."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy.orm import Session

from hospital.jobs import enqueue
from imaging_orders.archive.availability import Subscriber, ian_subscribers, notify_subscriber
from imaging_orders.archive.events import StudyCompleted
from imaging_orders.archive.storage_commitment import deliver_on_new_association

logger = logging.getLogger(__name__)


def send_commitment_report(session: Session, commitment_id: int) -> None:
    """Send a Storage Commitment report on a new association to its requester (retried by the bus)."""
    deliver_on_new_association(session, current_app._get_current_object(), commitment_id)  # type: ignore[attr-defined]


def notify_instance_availability(session: Session, event: StudyCompleted) -> None:
    """A study completed: one IAN job per configured subscriber, so each is retried on its own."""
    for subscriber in ian_subscribers(current_app._get_current_object()):  # type: ignore[attr-defined]
        enqueue(session, "imaging_orders.archive.jobs.send_instance_availability", study_id=event.study_id,
                ae_title=subscriber.ae_title, host=subscriber.host, port=subscriber.port)


def send_instance_availability(session: Session, study_id: int, ae_title: str, host: str, port: int) -> None:
    """Send a study's IAN to one subscriber (raises, and the bus retries, while it is unreachable)."""
    notify_subscriber(session, current_app._get_current_object(), study_id,  # type: ignore[attr-defined]
                      Subscriber(ae_title, host, port))
