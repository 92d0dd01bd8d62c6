"""The ordering side of the imaging stage, as later stages may use it (the archive has its own
public face, `imaging_orders.archive.public`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from hospital.clock import utcnow
from hospital.errors import NotFound
from hospital.i18n import gettext as _
from hospital.models import User
from imaging_orders import service
from imaging_orders.models import Appointment, Schedule, Slot
from referrals.public import referral_summary

logger = logging.getLogger(__name__)

__all__ = ["AppointmentSummary", "SlotOffer", "accept_follow_up_referral", "appointments_of_referral",
           "book_referral_slot", "free_slots_for_referral"]


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


@dataclass(frozen=True)
class SlotOffer:
    """A free slot a referral could be booked into, with the zone its times are read in."""

    slot_id: int
    start: datetime
    end: datetime
    room: str | None
    centre_timezone: str


def _appointment_summary(a: Appointment, referral_id: int) -> AppointmentSummary:
    return AppointmentSummary(
        appointment_id=a.id, referral_id=referral_id, start=a.start, end=a.end, status=a.status.value,
        room=a.slot.schedule.room if a.slot else None,
        centre_timezone=a.slot.schedule.organization.timezone if a.slot else None,
    )


def appointments_of_referral(session: Session, referral_id: int) -> tuple[AppointmentSummary, ...]:
    """Every appointment booked for the referral, earliest first (cancelled ones included)."""
    appointments = session.scalars(
        select(Appointment).where(Appointment.referral_id == referral_id)
        .options(joinedload(Appointment.slot).joinedload(Slot.schedule).joinedload(Schedule.organization))
        .order_by(Appointment.start, Appointment.id)
    ).all()
    return tuple(_appointment_summary(a, referral_id) for a in appointments)


def free_slots_for_referral(session: Session, referral_id: int) -> tuple[SlotOffer, ...]:
    """Free slots at the referral's centre for its modality, soonest first, within the booking
    window. Offering is not booking: `book_referral_slot` checks who books."""
    referral = referral_summary(session, referral_id)
    if referral is None:
        raise NotFound(_("referral %(id)s does not exist", id=referral_id))
    now = utcnow()
    slots = service.free_slots(session, referral.performer_organization_id, referral.modality, now,
                               now + timedelta(days=service.BOOKING_DAYS_AHEAD), limit=service.OFFERED_SLOTS)
    return tuple(SlotOffer(slot_id=s.id, start=s.start, end=s.end, room=s.schedule.room,
                           centre_timezone=s.schedule.organization.timezone) for s in slots)


def book_referral_slot(session: Session, user: User, referral_id: int, slot_id: int) -> AppointmentSummary:
    """Book `slot_id` for the referral as `user` (the patient, the referring clinician or the
    centre's staff), through the one booking service: same checks, same race handling."""
    return _appointment_summary(service.book_appointment(session, user, referral_id, slot_id), referral_id)


def accept_follow_up_referral(session: Session, referral_id: int) -> str:
    """The centre that did the first examination accepts its repeat (no triage needed); returns the
    AccessionNumber assigned."""
    accepted = service.accept_follow_up_referral(session, referral_id)
    assert accepted.accession_number is not None
    return accepted.accession_number
