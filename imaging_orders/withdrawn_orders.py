"""What the centre holds for an order its requester withdrew: the booked appointment is cancelled
and its slot opens again, so the examination leaves the worklist page and the DICOM Modality
Worklist and nobody is scanned (or billed) for an order that no longer exists."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.jobs import publish
from imaging_orders.centres import LIVE_APPOINTMENT_STATUSES
from imaging_orders.events import AppointmentCancelled
from imaging_orders.models import Appointment, AppointmentStatus, Slot, SlotStatus

logger = logging.getLogger(__name__)


def release_withdrawn_order(session: Session, referral_id: int) -> list[int]:
    """Cancel every live appointment of the withdrawn referral; answer their ids (none when the job
    runs again: it is idempotent)."""
    appointments = session.scalars(
        select(Appointment).where(Appointment.referral_id == referral_id,
                                  Appointment.status.in_(LIVE_APPOINTMENT_STATUSES))
        .with_for_update()
    ).all()
    for appointment in appointments:
        slot = session.get(Slot, appointment.slot_id, with_for_update=True) if appointment.slot_id else None
        if slot is not None:
            slot.status = SlotStatus.FREE
        appointment.slot_id = None  # the slot's one-live-appointment constraint is free for the next booking
        appointment.status = AppointmentStatus.CANCELLED
        session.flush()
        record_access(session, None, "U", "Appointment", appointment.id, patient_id=appointment.patient_id,
                      description=f"cancelled: referral {referral_id} was withdrawn by its requester")
        if slot is not None:
            publish(session, AppointmentCancelled(appointment_id=appointment.id, patient_id=appointment.patient_id,
                                                  organization_id=slot.schedule.organization_id,
                                                  referral_id=referral_id))
    if appointments:
        logger.info("referral %s withdrawn: %d appointment(s) cancelled", referral_id, len(appointments))
    return [appointment.id for appointment in appointments]
