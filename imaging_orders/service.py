"""The imaging centre's workflow: accept or reject referrals, offer slots, book appointments and
publish the day's worklist. Receiving images is in `imaging_orders.archive.ingest`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm.exc import StaleDataError

from hospital import clock
from hospital.access import ensure_patient_access, patient_filter
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.i18n import status_word
from hospital.jobs import publish
from hospital.models import Organization, Patient, Practitioner, Role, User
from hospital.notifications import notify_patient
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from imaging_orders.events import AppointmentBooked, AppointmentCancelled
from imaging_orders.models import Appointment, AppointmentStatus, Schedule, Slot, SlotStatus
from referrals import public as referrals
from referrals.public import ORDERS, ReferralStatus, ReferralSummary, summary_from_row

logger = logging.getLogger(__name__)

BOOKABLE_REFERRAL_STATUSES = frozenset({ReferralStatus.ACCEPTED})
# What a patient choosing a time is offered: the next free slots over four weeks, grouped by day.
BOOKING_DAYS_AHEAD = 28
OFFERED_SLOTS = 120


def _centre_staff_referral(session: Session, user: User, referral_id: int) -> ReferralSummary:
    referral = referrals.lock_referral(session, referral_id)
    if referral is None:
        raise NotFound(_("referral %(id)s does not exist", id=referral_id))
    if user.role is not Role.IMAGING_STAFF or user.organization_id != referral.performer_organization_id:
        raise Forbidden(_("only staff of the imaging centre this referral was sent to can do this"))
    return referral


def accession_number_for(referral_id: int) -> str:
    # Unique because referral ids are; 13 characters, within DICOM's 16 for AccessionNumber (SH).
    return f"ACC{referral_id:010d}"


def accept_referral(session: Session, user: User, referral_id: int) -> ReferralSummary:
    referral = _centre_staff_referral(session, user, referral_id)
    if referral.status is ReferralStatus.ACCEPTED:
        return referral  # accepting twice is harmless
    accepted = referrals.accept(session, referral_id, accession_number_for(referral_id))
    record_access(session, user, "U", "ServiceRequest", referral_id, patient_id=referral.patient_id, description="accepted")
    return accepted


def accept_follow_up_referral(session: Session, referral_id: int) -> ReferralSummary:
    """System acceptance of a repeat scan at the centre that did the first one: the centre
    already accepted this patient and examination, so no one needs to triage it again."""
    referral = referrals.lock_referral(session, referral_id)
    if referral is None:
        raise NotFound(_("referral %(id)s does not exist", id=referral_id))
    if referral.status is not ReferralStatus.ACTIVE:
        raise Conflict(_("a referral that is %(status)s cannot be accepted", status=status_word(referral.status).lower()))
    accepted = referrals.accept(session, referral_id, accession_number_for(referral_id))
    record_access(session, None, "U", "ServiceRequest", referral_id, patient_id=referral.patient_id,
                  description="accepted as a follow-up of an earlier examination", source="system")
    return accepted


def reject_referral(session: Session, user: User, referral_id: int, reason: str) -> ReferralSummary:
    referral = _centre_staff_referral(session, user, referral_id)
    rejected = referrals.reject(session, referral_id, reason)
    record_access(session, user, "U", "ServiceRequest", referral_id, patient_id=referral.patient_id, description="rejected")
    return rejected


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


def _ensure_may_book(session: Session, user: User, referral: ReferralSummary) -> None:
    ensure_patient_access(session, user, referral.patient_id, "ServiceRequest", referral.referral_id, "U")
    allowed = (
        (user.role is Role.PATIENT and user.patient_id == referral.patient_id)
        or (user.role is Role.CLINICIAN and user.practitioner_id == referral.requester_id)
        or (user.role is Role.IMAGING_STAFF and user.organization_id == referral.performer_organization_id)
    )
    if not allowed:
        raise Forbidden(_("you may not book an appointment for this referral"))


def _free_slot_for(session: Session, referral: ReferralSummary, slot_id: int) -> Slot:
    """The slot, checked to be free, in the future, at the referral's centre and modality."""
    slot = session.get(Slot, slot_id)
    if slot is None:
        raise NotFound(_("that time (slot %(id)s) does not exist; choose another", id=slot_id))
    if slot.schedule.organization_id != referral.performer_organization_id:
        raise InvalidInput(_("that time belongs to another imaging centre; choose another"))
    if slot.schedule.modality != referral.modality:
        raise InvalidInput(_("that time is for %(slot_modality)s, the referral asks for %(modality)s",
                                   slot_modality=slot.schedule.modality, modality=referral.modality))
    # A shared lock, re-read: bookings do not wait for each other, but an administrator taking the
    # scanner out of service (`centres.set_scanner_active`, FOR UPDATE) sees this booking or is seen by it.
    schedule = session.get(Schedule, slot.schedule_id, with_for_update={"read": True}, populate_existing=True)
    if schedule is None or not schedule.active:
        raise Conflict(_("that scanner is out of service; choose another time"))
    if slot.status is not SlotStatus.FREE:
        raise Conflict(_("that time is already taken; choose another"))
    if slot.start <= utcnow():
        raise Conflict(_("that time is in the past; choose another"))
    return slot


def _flush_booking(session: Session) -> None:
    try:
        # The slot's version column and the unique slot_id make a concurrent booking fail here.
        session.flush()
    except (StaleDataError, IntegrityError) as exc:
        session.rollback()
        raise Conflict(_("that time was just taken by someone else; choose another")) from exc


def book_appointment(session: Session, user: User, referral_id: int, slot_id: int) -> Appointment:
    """Book `slot_id` for an accepted referral. The patient, the referring clinician or the
    centre's staff may book. Exactly one of two simultaneous bookings of a slot wins."""
    referral = referrals.lock_referral(session, referral_id)
    if referral is None:
        raise NotFound(_("referral %(id)s does not exist", id=referral_id))
    _ensure_may_book(session, user, referral)
    if referral.status not in BOOKABLE_REFERRAL_STATUSES:
        raise Conflict(_("a referral that is %(status)s cannot be booked (it must be accepted first)",
                         status=status_word(referral.status).lower()))
    slot = _free_slot_for(session, referral, slot_id)
    slot.status = SlotStatus.BUSY
    appointment = Appointment(
        slot_id=slot.id,
        referral_id=referral.referral_id,
        patient_id=referral.patient_id,
        start=slot.start,
        end=slot.end,
        description=referral.procedure_description,
        booked_by_user_id=user.id,
    )
    session.add(appointment)
    _flush_booking(session)
    referrals.mark_scheduled(session, referral.referral_id)  # its row is locked since the check above
    record_access(session, user, "C", "Appointment", appointment.id, patient_id=referral.patient_id)
    publish(session, AppointmentBooked(appointment_id=appointment.id, patient_id=appointment.patient_id,
                                       organization_id=slot.schedule.organization_id,
                                       referral_id=appointment.referral_id))
    return appointment


def _changeable_appointment(
    session: Session, user: User, appointment_id: int
) -> tuple[Appointment, ReferralSummary]:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None or appointment.referral_id is None:
        raise NotFound(_("appointment %(id)s does not exist", id=appointment_id))
    referral = referrals.referral_summary(session, appointment.referral_id)
    assert referral is not None  # foreign key
    _ensure_may_book(session, user, referral)
    if appointment.status is not AppointmentStatus.BOOKED:
        raise Conflict(_("an appointment that is %(status)s cannot be changed", status=status_word(appointment.status).lower()))
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
    referrals.mark_unscheduled(session, referral.referral_id)
    session.flush()
    record_access(session, user, "U", "Appointment", appointment.id, patient_id=appointment.patient_id,
                  description="cancelled")
    if slot is not None:
        publish(session, AppointmentCancelled(appointment_id=appointment.id, patient_id=appointment.patient_id,
                                              organization_id=slot.schedule.organization_id,
                                              referral_id=appointment.referral_id))
    return appointment


@dataclass(frozen=True)
class WorklistEntry:
    appointment: Appointment
    referral: ReferralSummary
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
        select(Appointment, Schedule, *ORDERS.c)
        .join(ORDERS, Appointment.referral_id == ORDERS.c.referral_id)
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
        WorklistEntry(row[0], summary_from_row(row), row[1]) for row in session.execute(query)
        if clock.local_date(row[0].start, row[1].organization.timezone) == day
    ]
    record_access(session, user, "E", "Appointment", None, description=f"worklist {day.isoformat()} ({len(entries)})",
                  at_response=True)
    return entries


def worklist_rooms(session: Session, user: User) -> list[tuple[str, str]]:
    """(modality, room) of the scanners whose worklist the user may filter on, for the page's choices."""
    query = select(Schedule.modality, Schedule.room).distinct().order_by(Schedule.modality, Schedule.room)
    if user.role is not Role.ADMIN:
        query = query.where(Schedule.organization_id == user.organization_id)
    return [(modality, room) for modality, room in session.execute(query)]


@dataclass(frozen=True)
class PendingReferral:
    """A referral waiting for the centre's decision, with who it is for and who sent it."""

    referral: ReferralSummary
    patient: Patient
    requester: Practitioner


def pending_referrals(session: Session, user: User) -> list[PendingReferral]:
    """Referrals sent to the user's centre and not yet accepted or rejected, oldest first."""
    if user.role is not Role.IMAGING_STAFF:
        raise Forbidden(_("only imaging-centre staff triage referrals"))
    query = (
        select(Patient, Practitioner, *ORDERS.c)
        .join(Patient, ORDERS.c.patient_id == Patient.id)
        .join(Practitioner, ORDERS.c.requester_id == Practitioner.id)
        .where(ORDERS.c.performer_organization_id == user.organization_id, ORDERS.c.status == ReferralStatus.ACTIVE)
        .order_by(ORDERS.c.created_at, ORDERS.c.referral_id)
    )
    return [PendingReferral(summary_from_row(row), row[0], row[1]) for row in session.execute(query)]


@dataclass(frozen=True)
class BookedAppointment:
    appointment: Appointment
    referral: ReferralSummary


def appointments_for(session: Session, user: User) -> list[BookedAppointment]:
    """A patient's own appointments, or those of a clinician's referrals, with their referral."""
    query = (
        select(Appointment, *ORDERS.c)
        .join(ORDERS, Appointment.referral_id == ORDERS.c.referral_id)
        .order_by(Appointment.start, Appointment.id)
    )
    if user.role is Role.PATIENT:
        query = query.where(Appointment.patient_id == user.patient_id)
    elif user.role is Role.CLINICIAN:
        query = query.where(ORDERS.c.requester_id == user.practitioner_id)
    else:
        raise Forbidden(_("this list is for patients and clinicians"))
    appointments = [BookedAppointment(row[0], summary_from_row(row)) for row in session.execute(query)]
    record_access(session, user, "E", "Appointment", None, description=f"appointments ({len(appointments)})",
                  at_response=True)
    return appointments


@dataclass(frozen=True)
class ReferralToBook:
    """An accepted referral waiting for its appointment, with its patient and centre."""

    referral: ReferralSummary
    patient: Patient
    centre: Organization


def referrals_to_book(session: Session, user: User) -> list[ReferralToBook]:
    """Accepted referrals that still need an appointment: a patient's own, a clinician's, or those
    sent to a staff member's centre (staff book for patients who call or come to the desk)."""
    if user.role is Role.PATIENT:
        mine = ORDERS.c.patient_id == user.patient_id
    elif user.role is Role.CLINICIAN:
        mine = ORDERS.c.requester_id == user.practitioner_id
    elif user.role is Role.IMAGING_STAFF:
        mine = ORDERS.c.performer_organization_id == user.organization_id
    else:
        raise Forbidden(_("this list is for patients, clinicians and imaging-centre staff"))
    query = (
        select(Patient, Organization, *ORDERS.c)
        .join(Patient, ORDERS.c.patient_id == Patient.id)
        .join(Organization, ORDERS.c.performer_organization_id == Organization.id)
        .where(mine, patient_filter(user, ORDERS.c.patient_id, "ServiceRequest"),
               ORDERS.c.status.in_(list(BOOKABLE_REFERRAL_STATUSES)))
        .order_by(ORDERS.c.created_at, ORDERS.c.referral_id)
    )
    return [ReferralToBook(summary_from_row(row), row[0], row[1]) for row in session.execute(query)]


@dataclass(frozen=True)
class Arrival:
    """What has arrived for an order, as the worklist shows it: its study (the newest if several
    wait in reconciliation), whether it is complete, and how many images in how many series."""

    study_id: int
    status: str  # registered (images arriving), available (complete), cancelled
    images: int  # the modality's own images, in `series` series
    series: int
    derived: int = 0  # objects the platform made from the study (the AI's SR and key images)

    @property
    def complete(self) -> bool:
        return self.status == "available"


def arrivals(session: Session, referral_ids: list[int]) -> dict[int, Arrival]:
    """The arrival of each referral's images, by referral id, in one query."""
    if not referral_ids:
        return {}
    query = (
        select(ImagingStudy.referral_id, ImagingStudy.id, ImagingStudy.status,
               func.count(ImagingInstance.id).filter(ImagingSeries.derived.is_(False)),
               func.count(func.distinct(ImagingSeries.id)).filter(ImagingSeries.derived.is_(False)),
               func.count(ImagingInstance.id).filter(ImagingSeries.derived.is_(True)))
        .outerjoin(ImagingSeries, ImagingSeries.study_id == ImagingStudy.id)
        .outerjoin(ImagingInstance, ImagingInstance.series_id == ImagingSeries.id)
        .where(ImagingStudy.referral_id.in_(referral_ids))
        .group_by(ImagingStudy.referral_id, ImagingStudy.id, ImagingStudy.status)
        .order_by(ImagingStudy.id)
    )
    found: dict[int, Arrival] = {}
    for referral_id, study_id, status, images, series, derived in session.execute(query):
        found[referral_id] = Arrival(study_id, status.value, images, series, derived)
    return found


def check_in_appointment(session: Session, user: User, appointment_id: int) -> Appointment:
    """Imaging staff record that the patient has arrived (booked -> arrived). Idempotent: checking
    in an arrived patient again changes nothing."""
    appointment = session.get(Appointment, appointment_id, with_for_update=True)
    if appointment is None:
        raise NotFound(_("appointment %(id)s does not exist", id=appointment_id))
    slot = session.get(Slot, appointment.slot_id) if appointment.slot_id else None
    schedule = session.get(Schedule, slot.schedule_id) if slot is not None else None
    if user.role is not Role.IMAGING_STAFF or schedule is None or schedule.organization_id != user.organization_id:
        raise Forbidden(_("only staff of the imaging centre holding this appointment can check the patient in"))
    if appointment.status is AppointmentStatus.ARRIVED:
        return appointment
    if appointment.status is not AppointmentStatus.BOOKED:
        raise Conflict(_("an appointment that is %(status)s cannot be checked in", status=status_word(appointment.status).lower()))
    appointment.status = AppointmentStatus.ARRIVED
    session.flush()
    record_access(session, user, "U", "Appointment", appointment.id, patient_id=appointment.patient_id,
                  description="checked in")
    return appointment


def start_examination(session: Session, referral_id: int) -> None:
    """The patient is being examined (a modality reported the step in progress, or the first
    images arrived): the referral goes in progress and its booked appointments to arrived.

    Idempotent, and it never moves a referral or appointment backwards, so the MPPS SCP and image
    ingest may both call it in either order. No user: the caller audits with its own source.
    """
    referrals.mark_in_progress(session, referral_id)
    booked = session.scalars(
        select(Appointment).where(Appointment.referral_id == referral_id, Appointment.status == AppointmentStatus.BOOKED)
    )
    for appointment in list(booked):
        appointment.status = AppointmentStatus.ARRIVED


# A patient is reminded of an appointment once it starts within this long.
REMINDER_HORIZON = timedelta(hours=24)


def remind_upcoming_appointments(session: Session, now: datetime | None = None) -> int:
    """Remind each patient of their booked appointments that start within the next 24 hours: once
    per appointment and start time (a moved appointment is reminded of again, at its new time).
    The time is written on the centre's clock, where it happens. Returns how many were reminded now."""
    now = now or utcnow()
    upcoming = session.scalars(
        select(Appointment)
        .options(joinedload(Appointment.slot).joinedload(Slot.schedule).joinedload(Schedule.organization))
        .where(Appointment.status == AppointmentStatus.BOOKED, Appointment.start > now,
               Appointment.start <= now + REMINDER_HORIZON)
        .order_by(Appointment.start, Appointment.id)
    ).all()
    told = 0
    for appointment in upcoming:
        centre = appointment.slot.schedule.organization if appointment.slot is not None else None
        told += len(notify_patient(
            session, appointment.patient_id, "appointment_reminder",
            f"appointment-reminder:{appointment.id}:{appointment.start.isoformat()}",
            appointment_id=appointment.id, start=appointment.start.isoformat(),
            timezone=centre.timezone if centre is not None else None,
            centre=centre.name if centre is not None else None,
        ))
    return told
