"""The ordering side of the imaging stage, as later stages may use it (the archive has its own
public face, `imaging_orders.archive.public`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from imaging_orders import service
from imaging_orders.models import Appointment, Schedule, Slot

logger = logging.getLogger(__name__)

__all__ = ["AppointmentSummary", "accept_follow_up_referral", "appointments_of_referral"]


@dataclass(frozen=True)
class AppointmentSummary:
    """An appointment for a referral, as later stages see it: when, where, and its status
    (FHIR Appointment.status: booked, arrived, fulfilled, cancelled...)."""

    appointment_id: int
    referral_id: int
    start: datetime
    end: datetime
    status: str
    room: str | None
    centre_timezone: str | None  # the IANA zone its times are read in

    @property
    def live(self) -> bool:
        return self.status in ("booked", "arrived", "fulfilled")


def appointments_of_referral(session: Session, referral_id: int) -> tuple[AppointmentSummary, ...]:
    """Every appointment booked for the referral, earliest first (cancelled ones included)."""
    appointments = session.scalars(
        select(Appointment).where(Appointment.referral_id == referral_id)
        .options(joinedload(Appointment.slot).joinedload(Slot.schedule).joinedload(Schedule.organization))
        .order_by(Appointment.start, Appointment.id)
    ).all()
    return tuple(
        AppointmentSummary(
            appointment_id=a.id, referral_id=referral_id, start=a.start, end=a.end, status=a.status.value,
            room=a.slot.schedule.room if a.slot else None,
            centre_timezone=a.slot.schedule.organization.timezone if a.slot else None,
        )
        for a in appointments
    )


def accept_follow_up_referral(session: Session, referral_id: int) -> str:
    """The centre that did the first examination accepts its repeat (no triage needed); returns the
    AccessionNumber assigned."""
    accepted = service.accept_follow_up_referral(session, referral_id)
    assert accepted.accession_number is not None
    return accepted.accession_number
