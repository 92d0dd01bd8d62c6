"""Small row factories for the imaging_orders tests: a centre with one modality room, and orders
(patient, referral with an accession number, slot, appointment) booked on it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session

from hospital.models import Organization, OrganizationKind, Patient, Practitioner, Role, User
from imaging_orders.models import Appointment, AppointmentStatus, Schedule, Slot, SlotStatus
from referrals.models import Referral, ReferralStatus

_counter = itertools.count(1)


@dataclass
class Centre:
    organization: Organization
    requester: Practitioner
    user: User
    schedule: Schedule


@dataclass
class Order:
    patient: Patient
    referral: Referral
    appointment: Appointment | None


def make_centre(
    session: Session, *, station_ae_title: str = "CT1", modality: str = "CT", room: str = "Room 1",
    timezone: str = "UTC",
) -> Centre:
    n = next(_counter)
    organization = Organization(name=f"Centre {n}", kind=OrganizationKind.IMAGING_CENTRE, ae_title=f"CENTRE{n}",
                                timezone=timezone)
    session.add(organization)
    session.flush()
    requester = Practitioner(family_name="Lovelace", given_name="Ada", organization_id=organization.id)
    user = User(username=f"staff{n}", password_hash="x", role=Role.IMAGING_STAFF, organization_id=organization.id)
    schedule = Schedule(
        organization_id=organization.id, name=f"{modality} scanner {n}", modality=modality, room=room,
        station_ae_title=station_ae_title,
    )
    session.add_all([requester, user, schedule])
    session.flush()
    return Centre(organization, requester, user, schedule)


def make_order(
    session: Session,
    centre: Centre,
    *,
    family_name: str = "Rivera",
    given_name: str = "Alex",
    mrn: str | None = None,
    accession_number: str | None = None,
    start: datetime | None = None,
    status: ReferralStatus = ReferralStatus.SCHEDULED,
    book: bool = True,
    appointment_status: AppointmentStatus = AppointmentStatus.BOOKED,
) -> Order:
    n = next(_counter)
    patient = Patient(
        mrn=mrn or f"MRN-T{n:05d}", family_name=family_name, given_name=given_name,
        birth_date=date(1968, 4, 12), gender="female",
    )
    session.add(patient)
    session.flush()
    referral = Referral(
        patient_id=patient.id,
        requester_id=centre.requester.id,
        created_by_user_id=centre.user.id,
        performer_organization_id=centre.organization.id,
        status=status,
        modality=centre.schedule.modality,
        body_part="CHEST",
        procedure_description="CT chest without contrast",
        reason="persistent cough",
        accession_number=accession_number if accession_number is not None else f"ACCT{n:06d}",
    )
    session.add(referral)
    session.flush()
    appointment = None
    if book:
        begin = start or datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        slot = Slot(
            schedule_id=centre.schedule.id, start=begin, end=begin + timedelta(minutes=30), status=SlotStatus.BUSY
        )
        session.add(slot)
        session.flush()
        appointment = Appointment(
            slot_id=slot.id, referral_id=referral.id, patient_id=patient.id, start=begin,
            end=begin + timedelta(minutes=30), status=appointment_status,
            description=referral.procedure_description, booked_by_user_id=centre.user.id,
        )
        session.add(appointment)
        session.flush()
    return Order(patient, referral, appointment)
