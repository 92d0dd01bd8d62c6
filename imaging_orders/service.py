"""The imaging centre's workflow: accept or reject referrals, offer slots, book appointments and
publish the day's worklist. Receiving images is in `imaging_orders.archive.ingest`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm.exc import StaleDataError

from hospital import clock
from hospital.access import ensure_patient_access
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.models import Role, User
from imaging_orders.archive.models import ImagingStudy
from imaging_orders.models import Appointment, AppointmentStatus, Schedule, Slot, SlotStatus
from referrals.models import Referral, ReferralStatus

logger = logging.getLogger(__name__)

BOOKABLE_REFERRAL_STATUSES = frozenset({ReferralStatus.ACCEPTED})


def _centre_staff_referral(session: Session, user: User, referral_id: int) -> Referral:
    referral = session.get(Referral, referral_id, with_for_update=True)
    if referral is None:
        raise NotFound(f"referral {referral_id} does not exist")
    if user.role is not Role.IMAGING_STAFF or user.organization_id != referral.performer_organization_id:
        raise Forbidden("only staff of the imaging centre this referral was sent to can do this")
    return referral


def accession_number_for(referral: Referral) -> str:
    # Unique because referral ids are; 13 characters, within DICOM's 16 for AccessionNumber (SH).
    return f"ACC{referral.id:010d}"


def accept_referral(session: Session, user: User, referral_id: int) -> Referral:
    referral = _centre_staff_referral(session, user, referral_id)
    if referral.status is ReferralStatus.ACCEPTED:
        return referral  # accepting twice is harmless
    if referral.status is not ReferralStatus.ACTIVE:
        raise Conflict(f"a referral that is {referral.status.value} cannot be accepted")
    referral.status = ReferralStatus.ACCEPTED
    referral.accession_number = accession_number_for(referral)
    record_access(session, user, "U", "ServiceRequest", referral.id, patient_id=referral.patient_id, description="accepted")
    return referral


def accept_follow_up_referral(session: Session, referral: Referral) -> Referral:
    """System acceptance of a repeat scan at the centre that did the first one: the centre
    already accepted this patient and examination, so no one needs to triage it again."""
    if referral.status is not ReferralStatus.ACTIVE:
        raise Conflict(f"a referral that is {referral.status.value} cannot be accepted")
    referral.status = ReferralStatus.ACCEPTED
    referral.accession_number = accession_number_for(referral)
    record_access(session, None, "U", "ServiceRequest", referral.id, patient_id=referral.patient_id,
                  description="accepted as a follow-up of an earlier examination", source="system")
    return referral


def reject_referral(session: Session, user: User, referral_id: int, reason: str) -> Referral:
    referral = _centre_staff_referral(session, user, referral_id)
    if referral.status is not ReferralStatus.ACTIVE:
        raise Conflict(f"a referral that is {referral.status.value} cannot be rejected")
    if not reason.strip():
        raise InvalidInput("a reason is required to reject a referral")
    referral.status = ReferralStatus.REJECTED
    referral.status_reason = reason.strip()
    record_access(session, user, "U", "ServiceRequest", referral.id, patient_id=referral.patient_id, description="rejected")
    return referral


def free_slots(
    session: Session, organization_id: int, modality: str | None, start: datetime, end: datetime, limit: int = 200
) -> list[Slot]:
    query = (
        select(Slot)
        .join(Schedule)
        .options(joinedload(Slot.schedule))
        .where(
            Schedule.organization_id == organization_id,
            Schedule.active.is_(True),
            Slot.status == SlotStatus.FREE,
            Slot.start >= max(start, utcnow()),
            Slot.start < end,
        )
        .order_by(Slot.start, Slot.id)
        .limit(limit)
    )
    if modality:
        query = query.where(Schedule.modality == modality.upper())
    return list(session.scalars(query))


def _ensure_may_book(session: Session, user: User, referral: Referral) -> None:
    ensure_patient_access(session, user, referral.patient_id, "ServiceRequest", referral.id, "U")
    allowed = (
        (user.role is Role.PATIENT and user.patient_id == referral.patient_id)
        or (user.role is Role.CLINICIAN and user.practitioner_id == referral.requester_id)
        or (user.role is Role.IMAGING_STAFF and user.organization_id == referral.performer_organization_id)
    )
    if not allowed:
        raise Forbidden("you may not book an appointment for this referral")


def _free_slot_for(session: Session, referral: Referral, slot_id: int) -> Slot:
    """The slot, checked to be free, in the future, at the referral's centre and modality."""
    slot = session.get(Slot, slot_id)
    if slot is None:
        raise NotFound(f"slot {slot_id} does not exist")
    if slot.schedule.organization_id != referral.performer_organization_id:
        raise InvalidInput("that slot belongs to another imaging centre")
    if slot.schedule.modality != referral.modality:
        raise InvalidInput(f"that slot is for {slot.schedule.modality}, the referral asks for {referral.modality}")
    # A shared lock, re-read: bookings do not wait for each other, but an administrator taking the
    # scanner out of service (`centres.set_scanner_active`, FOR UPDATE) sees this booking or is seen by it.
    schedule = session.get(Schedule, slot.schedule_id, with_for_update={"read": True}, populate_existing=True)
    if schedule is None or not schedule.active:
        raise Conflict("that scanner is out of service; choose another slot")
    if slot.status is not SlotStatus.FREE:
        raise Conflict("that slot is already taken; choose another")
    if slot.start <= utcnow():
        raise Conflict("that slot is in the past")
    return slot


def _flush_booking(session: Session) -> None:
    try:
        # The slot's version column and the unique slot_id make a concurrent booking fail here.
        session.flush()
    except (StaleDataError, IntegrityError) as exc:
        session.rollback()
        raise Conflict("that slot was just taken by someone else; choose another") from exc


def book_appointment(session: Session, user: User, referral_id: int, slot_id: int) -> Appointment:
    """Book `slot_id` for an accepted referral. The patient, the referring clinician or the
    centre's staff may book. Exactly one of two simultaneous bookings of a slot wins."""
    referral = session.get(Referral, referral_id)
    if referral is None:
        raise NotFound(f"referral {referral_id} does not exist")
    _ensure_may_book(session, user, referral)
    if referral.status not in BOOKABLE_REFERRAL_STATUSES:
        raise Conflict(f"a referral that is {referral.status.value} cannot be booked (it must be accepted first)")
    slot = _free_slot_for(session, referral, slot_id)
    slot.status = SlotStatus.BUSY
    appointment = Appointment(
        slot_id=slot.id,
        referral_id=referral.id,
        patient_id=referral.patient_id,
        start=slot.start,
        end=slot.end,
        description=referral.procedure_description,
        booked_by_user_id=user.id,
    )
    session.add(appointment)
    referral.status = ReferralStatus.SCHEDULED
    _flush_booking(session)
    record_access(session, user, "C", "Appointment", appointment.id, patient_id=referral.patient_id)
    return appointment


def _changeable_appointment(session: Session, user: User, appointment_id: int) -> tuple[Appointment, Referral]:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None or appointment.referral_id is None:
        raise NotFound(f"appointment {appointment_id} does not exist")
    referral = session.get(Referral, appointment.referral_id)
    assert referral is not None  # foreign key
    _ensure_may_book(session, user, referral)
    if appointment.status is not AppointmentStatus.BOOKED:
        raise Conflict(f"an appointment that is {appointment.status.value} cannot be changed")
    return appointment, referral


def move_appointment(session: Session, user: User, appointment_id: int, slot_id: int) -> Appointment:
    """Move a booked appointment to another open slot; the old slot opens again."""
    appointment, referral = _changeable_appointment(session, user, appointment_id)
    if appointment.slot_id == slot_id:
        return appointment
    new_slot = _free_slot_for(session, referral, slot_id)
    old_slot = session.get(Slot, appointment.slot_id) if appointment.slot_id else None
    if old_slot is not None:
        old_slot.status = SlotStatus.FREE
    new_slot.status = SlotStatus.BUSY
    appointment.slot_id, appointment.start, appointment.end = new_slot.id, new_slot.start, new_slot.end
    _flush_booking(session)
    record_access(session, user, "U", "Appointment", appointment.id, patient_id=appointment.patient_id,
                  description="moved")
    return appointment


def cancel_appointment(session: Session, user: User, appointment_id: int) -> Appointment:
    """Cancel a booked appointment: its slot opens again and the referral can be booked anew."""
    appointment, referral = _changeable_appointment(session, user, appointment_id)
    slot = session.get(Slot, appointment.slot_id) if appointment.slot_id else None
    if slot is not None:
        slot.status = SlotStatus.FREE
    # Releasing the slot id keeps the one-live-appointment-per-slot constraint for the next booking.
    appointment.slot_id = None
    appointment.status = AppointmentStatus.CANCELLED
    if referral.status is ReferralStatus.SCHEDULED:
        referral.status = ReferralStatus.ACCEPTED
    session.flush()
    record_access(session, user, "U", "Appointment", appointment.id, patient_id=appointment.patient_id,
                  description="cancelled")
    return appointment


@dataclass(frozen=True)
class WorklistEntry:
    appointment: Appointment
    referral: Referral
    schedule: Schedule

    @property
    def timezone(self) -> str:
        """The zone of the centre the examination happens at: its times are read on that clock."""
        return self.schedule.organization.timezone


def worklist_day_today(user: User) -> date:
    """Today on the wall clock of the user's centre (UTC for a user without one, e.g. an admin)."""
    return clock.local_date(utcnow(), user.organization.timezone if user.organization else None)


def worklist(
    session: Session, user: User, day: date, modality: str | None = None, room: str | None = None
) -> list[WorklistEntry]:
    """The examinations scheduled on `day`, earliest first. `day` is a day on each centre's own
    calendar (08:00 in Berlin on the 24th is on the 24th's list, whatever its UTC date)."""
    window_start, window_end = clock.utc_window_for_days(day, day)
    query = (
        select(Appointment, Referral, Schedule)
        .join(Referral, Appointment.referral_id == Referral.id)
        .join(Slot, Appointment.slot_id == Slot.id)
        .join(Schedule, Slot.schedule_id == Schedule.id)
        .options(joinedload(Appointment.patient), joinedload(Schedule.organization))
        .where(
            Appointment.start >= window_start,
            Appointment.start < window_end,
            Appointment.status.in_([AppointmentStatus.BOOKED, AppointmentStatus.ARRIVED, AppointmentStatus.FULFILLED]),
        )
        .order_by(Appointment.start, Appointment.id)
    )
    if user.role is not Role.ADMIN:
        query = query.where(Schedule.organization_id == user.organization_id)
    if modality:
        query = query.where(Schedule.modality == modality.upper())
    if room:
        query = query.where(Schedule.room == room)
    entries = [
        WorklistEntry(a, r, s) for a, r, s in session.execute(query)
        if clock.local_date(a.start, s.organization.timezone) == day
    ]
    record_access(session, user, "E", "Appointment", None, description=f"worklist {day.isoformat()} ({len(entries)})")
    return entries


def worklist_rooms(session: Session, user: User) -> list[tuple[str, str]]:
    """(modality, room) of the scanners whose worklist the user may filter on, for the page's choices."""
    query = select(Schedule.modality, Schedule.room).distinct().order_by(Schedule.modality, Schedule.room)
    if user.role is not Role.ADMIN:
        query = query.where(Schedule.organization_id == user.organization_id)
    return [(modality, room) for modality, room in session.execute(query)]


def pending_referrals(session: Session, user: User) -> list[Referral]:
    """Referrals sent to the user's centre and not yet accepted or rejected."""
    if user.role is not Role.IMAGING_STAFF:
        raise Forbidden("only imaging-centre staff triage referrals")
    return list(
        session.scalars(
            select(Referral)
            .where(Referral.performer_organization_id == user.organization_id, Referral.status == ReferralStatus.ACTIVE)
            .order_by(Referral.created_at)
        )
    )


def appointments_for(session: Session, user: User) -> list[Appointment]:
    """A patient's own appointments, or those of a clinician's referrals."""
    query = select(Appointment).join(Referral, Appointment.referral_id == Referral.id).order_by(Appointment.start)
    if user.role is Role.PATIENT:
        query = query.where(Appointment.patient_id == user.patient_id)
    elif user.role is Role.CLINICIAN:
        query = query.where(Referral.requester_id == user.practitioner_id)
    else:
        raise Forbidden("this list is for patients and clinicians")
    appointments = list(session.scalars(query))
    record_access(session, user, "E", "Appointment", None, description=f"appointments ({len(appointments)})")
    return appointments


def studies_by_referral(session: Session, referral_ids: list[int]) -> dict[int, ImagingStudy]:
    """The study received for each referral (the newest if several), for the worklist's arrival column."""
    if not referral_ids:
        return {}
    found: dict[int, ImagingStudy] = {}
    for study in session.scalars(
        select(ImagingStudy).where(ImagingStudy.referral_id.in_(referral_ids)).order_by(ImagingStudy.id)
    ):
        assert study.referral_id is not None  # filtered above
        found[study.referral_id] = study
    return found


def check_in_appointment(session: Session, user: User, appointment_id: int) -> Appointment:
    """Imaging staff record that the patient has arrived (booked -> arrived). Idempotent: checking
    in an arrived patient again changes nothing."""
    appointment = session.get(Appointment, appointment_id, with_for_update=True)
    if appointment is None:
        raise NotFound(f"appointment {appointment_id} does not exist")
    slot = session.get(Slot, appointment.slot_id) if appointment.slot_id else None
    schedule = session.get(Schedule, slot.schedule_id) if slot is not None else None
    if user.role is not Role.IMAGING_STAFF or schedule is None or schedule.organization_id != user.organization_id:
        raise Forbidden("only staff of the imaging centre holding this appointment can check the patient in")
    if appointment.status is AppointmentStatus.ARRIVED:
        return appointment
    if appointment.status is not AppointmentStatus.BOOKED:
        raise Conflict(f"an appointment that is {appointment.status.value} cannot be checked in")
    appointment.status = AppointmentStatus.ARRIVED
    session.flush()
    record_access(session, user, "U", "Appointment", appointment.id, patient_id=appointment.patient_id,
                  description="checked in")
    return appointment


def start_examination(session: Session, referral: Referral) -> None:
    """The patient is being examined (a modality reported the step in progress, or the first
    images arrived): the referral goes in progress and its booked appointments to arrived.

    Idempotent, and it never moves a referral or appointment backwards, so the MPPS SCP and image
    ingest may both call it in either order. No user: the caller audits with its own source.
    """
    if referral.status in (ReferralStatus.ACCEPTED, ReferralStatus.SCHEDULED):
        referral.status = ReferralStatus.IN_PROGRESS
    booked = session.scalars(
        select(Appointment).where(Appointment.referral_id == referral.id, Appointment.status == AppointmentStatus.BOOKED)
    )
    for appointment in list(booked):
        appointment.status = AppointmentStatus.ARRIVED
