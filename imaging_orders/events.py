"""Events the ordering side of the imaging stage publishes (see hospital.events; the archive has its
own, `imaging_orders.archive.events`)."""

from __future__ import annotations

from dataclasses import dataclass

from hospital.events import DomainEvent


@dataclass(frozen=True)
class AppointmentBooked(DomainEvent):
    """A slot at an imaging centre was booked for a referral (published in the booking's
    transaction, so a rolled-back booking tells no one)."""

    name = "imaging_orders.appointment_booked"

    appointment_id: int
    patient_id: int
    organization_id: int
    referral_id: int | None


@dataclass(frozen=True)
class AppointmentCancelled(DomainEvent):
    """A booked appointment was cancelled: its slot is open again."""

    name = "imaging_orders.appointment_cancelled"

    appointment_id: int
    patient_id: int
    organization_id: int
    referral_id: int | None
