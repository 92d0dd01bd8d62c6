"""Imaging-centre API and pages: triage referrals, slots and booking, the worklist, studies."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital import clock
from hospital.access import patient_filter
from hospital.api import json_body, required
from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.clock import utcnow
from hospital.db import request_session
from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.i18n import local_datetime, ngettext
from hospital.models import Organization, Role
from hospital.records import load_record
from hospital.web import ask_first, form_action
from imaging_orders.archive.models import ImagingStudy
from imaging_orders.centres import (
    MAX_RANGE_DAYS,
    SUMMARY_DAYS,
    WEEKDAY_NAMES,
    CentreDetails,
    ScannerDetails,
    SlotOpening,
    SlotWindow,
    add_scanner,
    centre_scanners,
    centre_zone,
    create_centre,
    get_centre,
    list_centres,
    open_slots,
    set_scanner_active,
    set_slots_blocked,
    slot_calendar,
    update_centre,
    update_scanner,
)
from imaging_orders.models import Appointment, AppointmentStatus, Slot
from imaging_orders.service import (
    BOOKING_DAYS_AHEAD,
    OFFERED_SLOTS,
    Arrival,
    WorklistEntry,
    accept_referral,
    appointments_for,
    arrivals,
    book_appointment,
    cancel_appointment,
    check_in_appointment,
    free_slots,
    move_appointment,
    pending_referrals,
    referrals_to_book,
    reject_referral,
    worklist,
    worklist_day_today,
    worklist_rooms,
)
from imaging_orders.visit_guide import (
    EXAMINATION_KINDS,
    examination_kind,
    guide_centre,
    set_directions,
    set_preparation,
    visit_guide,
    visit_guides,
)
from referrals.public import MODALITIES, referral_summary

logger = logging.getLogger(__name__)

bp = Blueprint("imaging_orders", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static/imaging-orders")

# A referral's priority as staff read it on this stage's pages ("routine" is shown plainly).
PRIORITY_WORDS = {"urgent": _l("urgent"), "asap": _l("as soon as possible"), "stat": _l("immediately (stat)")}


@bp.context_processor
def _page_words() -> dict[str, object]:
    return {"priority_words": {code: str(word) for code, word in PRIORITY_WORDS.items()},
            "examination_kind": examination_kind}


def slot_json(slot: Slot) -> dict[str, Any]:
    return {
        "id": slot.id, "start": slot.start.isoformat(), "end": slot.end.isoformat(), "status": slot.status.value,
        "schedule": slot.schedule.name, "modality": slot.schedule.modality, "room": slot.schedule.room,
    }


def appointment_json(appointment: Appointment) -> dict[str, Any]:
    return {
        "id": appointment.id, "referral_id": appointment.referral_id, "patient_id": appointment.patient_id,
        "slot_id": appointment.slot_id, "start": appointment.start.isoformat(), "end": appointment.end.isoformat(),
        "status": appointment.status.value, "description": appointment.description,
        "fhir": f"Appointment/{appointment.id}",
    }


def arrival_json(arrival: Arrival | None) -> dict[str, Any] | None:
    if arrival is None:
        return None
    return {
        "study_id": arrival.study_id, "status": arrival.status, "complete": arrival.complete,
        "images": arrival.images, "series": arrival.series, "derived": arrival.derived,
        "analysis_url": url_for("ai_services.analysis", study_id=arrival.study_id),
        "retry_url": url_for("ai_services.retry_analysis_page", study_id=arrival.study_id),
    }


def worklist_json(entry: WorklistEntry, arrival: Arrival | None = None) -> dict[str, Any]:
    patient = entry.appointment.patient
    return {
        "appointment": appointment_json(entry.appointment),
        "accession_number": entry.referral.accession_number,
        "referral_id": entry.referral.referral_id,
        "priority": entry.referral.priority.value,
        "procedure": entry.referral.procedure_description,
        "modality": entry.schedule.modality,
        "room": entry.schedule.room,
        "station_ae_title": entry.schedule.station_ae_title,
        "timezone": entry.timezone,
        "local_start": entry.appointment.start.astimezone(clock.zone(entry.timezone)).isoformat(),
        "patient": {"id": patient.id, "mrn": patient.mrn, "name": patient.display_name},
        "arrival": arrival_json(arrival),
    }


def study_json(study: ImagingStudy) -> dict[str, Any]:
    return {
        "id": study.id, "study_instance_uid": study.study_instance_uid, "accession_number": study.accession_number,
        "referral_id": study.referral_id, "patient_id": study.patient_id, "status": study.status.value,
        "series": [
            {"uid": s.series_instance_uid, "number": s.number, "modality": s.modality, "instances": len(s.instances)}
            for s in study.series
        ],
        "fhir": f"ImagingStudy/{study.id}",
    }


def _parse_date(value: str | None, default: date) -> date:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(_("dates are YYYY-MM-DD, got %(value)s", value=repr(value))) from exc


def _parse_instant(value: str | None, default: datetime) -> datetime:
    if not value:
        return default
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"times are ISO 8601 with a zone, got {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidInput(f"time {value!r} needs a zone offset, e.g. 2026-01-01T09:00:00+00:00")
    return parsed


@bp.post("/api/referrals/<int:referral_id>/accept")
@require_roles(Role.IMAGING_STAFF)
def accept(referral_id: int) -> ResponseReturnValue:
    session = request_session()
    referral = accept_referral(session, current_user(), referral_id)
    return jsonify(id=referral.referral_id, status=referral.status.value, accession_number=referral.accession_number)


@bp.post("/api/referrals/<int:referral_id>/reject")
@require_roles(Role.IMAGING_STAFF)
def reject(referral_id: int) -> ResponseReturnValue:
    reason = required(json_body(), "reason")
    session = request_session()
    referral = reject_referral(session, current_user(), referral_id, reason)
    return jsonify(id=referral.referral_id, status=referral.status.value)


@bp.get("/api/slots")
@require_roles()
def slots() -> ResponseReturnValue:
    organization_id = request.args.get("organization_id", type=int)
    if organization_id is None:
        raise InvalidInput("organization_id is required")
    now = utcnow()
    start = _parse_instant(request.args.get("from"), now)
    end = _parse_instant(request.args.get("to"), start + timedelta(days=14))
    found = free_slots(request_session(), organization_id, request.args.get("modality"), start, end)
    return jsonify([slot_json(s) for s in found])


@bp.post("/api/appointments")
@require_roles(Role.PATIENT, Role.CLINICIAN, Role.IMAGING_STAFF)
def book() -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    appointment = book_appointment(session, current_user(), required(data, "referral_id", int), required(data, "slot_id", int))
    return jsonify(appointment_json(appointment)), 201


@bp.post("/api/appointments/<int:appointment_id>/move")
@require_roles(Role.PATIENT, Role.CLINICIAN, Role.IMAGING_STAFF)
def move(appointment_id: int) -> ResponseReturnValue:
    slot_id = required(json_body(), "slot_id", int)
    session = request_session()
    appointment = move_appointment(session, current_user(), appointment_id, slot_id)
    payload = appointment_json(appointment)
    return jsonify(payload)


@bp.post("/api/appointments/<int:appointment_id>/cancel")
@require_roles(Role.PATIENT, Role.CLINICIAN, Role.IMAGING_STAFF)
def cancel(appointment_id: int) -> ResponseReturnValue:
    session = request_session()
    appointment = cancel_appointment(session, current_user(), appointment_id)
    payload = appointment_json(appointment)
    return jsonify(payload)


@bp.get("/api/appointments")
@require_roles(Role.PATIENT, Role.CLINICIAN)
def my_appointments() -> ResponseReturnValue:
    session = request_session()
    appointments = appointments_for(session, current_user())
    return jsonify([appointment_json(a.appointment) for a in appointments])


@bp.get("/api/worklist")
@require_roles(Role.IMAGING_STAFF, Role.RADIOLOGIST, Role.ADMIN)
def worklist_api() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    day = _parse_date(request.args.get("date"), worklist_day_today(user))
    entries = worklist(session, user, day, request.args.get("modality"), request.args.get("room"))
    arrived = arrivals(session, [e.referral.referral_id for e in entries])
    return jsonify(date=day.isoformat(), entries=[worklist_json(e, arrived.get(e.referral.referral_id)) for e in entries])


@bp.get("/api/studies")
@require_roles()
def studies() -> ResponseReturnValue:
    user = current_user()
    session = request_session()
    query = select(ImagingStudy).where(patient_filter(user, ImagingStudy.patient_id, "ImagingStudy")).order_by(ImagingStudy.id.desc())
    if accession := request.args.get("accession"):
        query = query.where(ImagingStudy.accession_number == accession)
    if referral_id := request.args.get("referral_id", type=int):
        query = query.where(ImagingStudy.referral_id == referral_id)
    found = list(session.scalars(query.limit(200)))
    record_access(session, user, "E", "ImagingStudy", None, description=f"list studies ({len(found)})",
                  at_response=True)
    return jsonify([study_json(s) for s in found])


@bp.get("/api/studies/<int:study_id>")
@require_roles()
def study(study_id: int) -> ResponseReturnValue:
    user = current_user()
    session = request_session()
    found = load_record(session, user, ImagingStudy, study_id, entity_type="ImagingStudy", noun="study",
                        matched_or_not=True)
    return jsonify(study_json(found))


@bp.get("/worklist")
@require_roles(Role.IMAGING_STAFF, Role.RADIOLOGIST, Role.ADMIN)
def worklist_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    today = worklist_day_today(user)
    day = _parse_date(request.args.get("date"), today)
    modality, room = request.args.get("modality") or None, request.args.get("room") or None
    entries = worklist(session, user, day, modality, room)
    arrived = arrivals(session, [e.referral.referral_id for e in entries])
    rooms = worklist_rooms(session, user)
    page = render_template(
        "imaging_orders/worklist.html", entries=entries, day=day, arrivals=arrived, today=today,
        previous_day=day - timedelta(days=1), next_day=day + timedelta(days=1),
        modalities=sorted({m for m, _room in rooms}), rooms=sorted({r for _modality, r in rooms}), modality=modality, room=room,
    )
    return page


@bp.post("/worklist/appointments/<int:appointment_id>/check-in")
@require_roles(Role.IMAGING_STAFF)
def check_in_page(appointment_id: int) -> ResponseReturnValue:
    session = request_session()

    def check_in() -> str:
        appointment = check_in_appointment(session, current_user(), appointment_id)
        return _("%(name)s checked in.", name=appointment.patient.display_name)

    form_action(session, check_in)
    # Back to the list the staff member was looking at: the same day, modality and room.
    form = request.form
    return redirect(url_for("imaging_orders.worklist_page", date=form.get("date") or None,
                            modality=form.get("modality") or None, room=form.get("room") or None))


@bp.route("/incoming", methods=["GET", "POST"])
@require_roles(Role.IMAGING_STAFF)
def incoming_page() -> ResponseReturnValue:
    """Triage (accept or reject what clinicians sent) and booking for accepted referrals: staff book
    a slot for a patient who calls or comes to the desk."""
    session = request_session()
    user = current_user()
    if request.method == "POST":
        referral_id = request.form.get("referral_id", type=int) or 0

        def decide() -> str:
            action = request.form.get("action")
            if action == "reject":
                reject_referral(session, user, referral_id, request.form.get("reason", ""))
                return _("Referral %(id)s rejected; the referring clinician can see the reason.", id=referral_id)
            if action == "book":
                appointment = book_appointment(session, user, referral_id, request.form.get("slot_id", type=int) or 0)
                return _("Referral %(id)s booked for %(name)s.", id=referral_id, name=appointment.patient.display_name)
            referral = accept_referral(session, user, referral_id)
            return _("Referral %(id)s accepted: accession %(accession)s. The patient can now book a time, or you "
                     "can book one below.", id=referral_id, accession=referral.accession_number)

        form_action(session, decide)
        return redirect(url_for("imaging_orders.incoming_page"))
    referrals = pending_referrals(session, user)
    to_book = referrals_to_book(session, user)
    window = (utcnow(), utcnow() + timedelta(days=BOOKING_DAYS_AHEAD))
    offers = {
        b.referral.referral_id: _by_local_day(free_slots(
            session, b.referral.performer_organization_id, b.referral.modality, *window, limit=OFFERED_SLOTS))
        for b in to_book
    }
    return render_template("imaging_orders/incoming.html", referrals=referrals, to_book=to_book, offers=offers,
                           centre_timezone=user.organization.timezone if user.organization else None)


@dataclass(frozen=True)
class SlotDay:
    """The free slots of one day on the centre's own calendar, for a day heading and its times."""

    day: date
    timezone: str
    slots: list[Slot]


def _by_local_day(slots: list[Slot]) -> list[SlotDay]:
    """Free slots grouped under the day they fall on at their centre (a slot at 00:30 in Shanghai
    is on that Shanghai day, whatever its UTC date)."""
    days: dict[tuple[date, str], list[Slot]] = {}
    for slot in slots:
        zone = slot.schedule.organization.timezone
        days.setdefault((clock.local_date(slot.start, zone), zone), []).append(slot)
    return [SlotDay(day, zone, day_slots) for (day, zone), day_slots in days.items()]


def _centre_timezone(session: Session, appointment: Appointment) -> str | None:
    """The zone of the centre an appointment is at: its times are read on that clock."""
    if appointment.referral_id is None:
        return None
    referral = referral_summary(session, appointment.referral_id)
    centre = session.get(Organization, referral.performer_organization_id) if referral else None
    return centre.timezone if centre is not None else None


def _chosen_slot() -> int:
    slot_id = request.form.get("slot_id", type=int)
    if slot_id is None:
        raise InvalidInput(_("Choose a time first."))
    return slot_id


@bp.route("/appointments", methods=["GET", "POST"])
@require_roles(Role.PATIENT, Role.CLINICIAN)
def appointments_page() -> ResponseReturnValue:
    """A patient's (or their clinician's) appointments: book a time for an accepted referral, move
    or cancel one, and what to know before coming (where, how to get there, how to prepare).
    Moving and cancelling ask first: in a dialog where scripts run (`data-confirm`), else on a page
    of their own (`ask_first`), so one mistaken tap gives nobody's time away."""
    session = request_session()
    user = current_user()
    if request.method == "POST":
        action = request.form.get("action", "book")
        appointment_id = request.form.get("appointment_id", type=int) or 0
        done: list[int] = []

        def change() -> str:
            if action == "cancel":
                appointment = cancel_appointment(session, user, appointment_id)
                when = local_datetime(appointment.start, _centre_timezone(session, appointment))
                ask_first(_("Cancel your %(examination)s on %(when)s? The time is given to someone else; you can "
                            "book a new time afterwards.", examination=appointment.description, when=when),
                          _("Yes, cancel the appointment"))
                return _("Appointment cancelled. You can book a new time below.")
            if action == "move":
                appointment = move_appointment(session, user, appointment_id, _chosen_slot())
                when = local_datetime(appointment.start, _centre_timezone(session, appointment))
                ask_first(_("Move your %(examination)s to %(when)s? Your old time is given to someone else.",
                            examination=appointment.description, when=when), _("Yes, move it"))
                done.append(appointment.id)
                return _("Appointment moved to %(when)s.", when=when)
            appointment = book_appointment(session, user, request.form.get("referral_id", type=int) or 0,
                                           _chosen_slot())
            done.append(appointment.id)
            when = local_datetime(appointment.start, _centre_timezone(session, appointment))
            return _("Appointment booked for %(when)s.", when=when)

        if form_action(session, change) and done:
            return redirect(url_for("imaging_orders.appointments_page", done=done[0]) + "#done")
        return redirect(url_for("imaging_orders.appointments_page"))
    appointments = appointments_for(session, user)
    to_book = referrals_to_book(session, user)
    window = (utcnow(), utcnow() + timedelta(days=BOOKING_DAYS_AHEAD))
    offers = {
        b.referral.referral_id: _by_local_day(free_slots(
            session, b.referral.performer_organization_id, b.referral.modality, *window, limit=OFFERED_SLOTS))
        for b in to_book
    }
    movable = {
        b.appointment.id: _by_local_day(free_slots(
            session, b.referral.performer_organization_id, b.referral.modality, *window, limit=OFFERED_SLOTS))
        for b in appointments if b.appointment.status is AppointmentStatus.BOOKED
    }
    centre_ids = [b.referral.performer_organization_id for b in appointments] + [b.centre.id for b in to_book]
    centres = {c.id: c for c in session.scalars(select(Organization).where(Organization.id.in_(centre_ids)))}
    done_id = request.args.get("done", type=int)
    done = next((b for b in appointments if b.appointment.id == done_id
                 and b.appointment.status is AppointmentStatus.BOOKED), None)
    return render_template("imaging_orders/appointments.html", appointments=appointments, to_book=to_book,
                           offers=offers, movable=movable, centres=centres, guides=visit_guides(session, centres),
                           done=done)


@bp.route("/centres/<int:centre_id>/visit-guide", methods=["GET", "POST"])
@require_roles(Role.ADMIN, Role.IMAGING_STAFF)
def visit_guide_page(centre_id: int) -> ResponseReturnValue:
    """The centre's address, map link and preparation per modality, written in both languages by
    its own staff or an administrator; patients see them when they book and on their appointments."""
    session = request_session()
    user = current_user()
    centre = guide_centre(session, user, centre_id)
    if request.method == "POST":
        form = request.form

        def save() -> str:
            if form.get("part") == "preparation":
                modality = form.get("modality", "")
                set_preparation(session, user, centre.id, modality, form.get("instructions_en", ""),
                                form.get("instructions_zh", ""))
                return _("Preparation for %(kind)s saved.", kind=examination_kind(modality))
            set_directions(session, user, centre.id, form.get("address_en", ""), form.get("address_zh", ""),
                           form.get("map_url", ""))
            return _("Directions saved.")

        if form_action(session, save):
            return redirect(url_for("imaging_orders.visit_guide_page", centre_id=centre.id))
    guide = visit_guide(session, centre.id)
    page = render_template("imaging_orders/visit_guide.html", centre=centre, guide=guide,
                           kinds=EXAMINATION_KINDS, form=request.form, posted=request.form.get("part"))
    return page, 422 if request.method == "POST" else 200


@bp.get("/my-centre/visit-guide")
@require_roles(Role.IMAGING_STAFF)
def own_visit_guide_page() -> ResponseReturnValue:
    """The menu's way to a staff member's own centre's guide."""
    user = current_user()
    if user.organization_id is None:
        raise InvalidInput(_("Your account belongs to no imaging centre."))
    return redirect(url_for("imaging_orders.visit_guide_page", centre_id=user.organization_id))


# ---------------------------------------------------------------------------------------------
# Administrators: imaging centres, their scanners and opening slots (service: imaging_orders.centres)
# ---------------------------------------------------------------------------------------------


def _form_day(name: str, label: str) -> date:
    value = request.form.get(name, "").strip()
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(_("%(field)s is a date YYYY-MM-DD, not %(value)s", field=label, value=repr(value))) from exc


def _form_optional_time(name: str, label: str) -> time | None:
    return _form_time(name, label) if request.form.get(name, "").strip() else None


def _form_time(name: str, label: str) -> time:
    value = request.form.get(name, "").strip()
    try:
        # Browsers send HH:MM; seconds would only make slots start at odd moments.
        return time.fromisoformat(value).replace(second=0, microsecond=0, tzinfo=None)
    except ValueError as exc:
        raise InvalidInput(_("%(field)s is a time HH:MM, not %(value)s", field=label, value=repr(value))) from exc


def _form_int(name: str, label: str) -> int:
    value = request.form.get(name, "").strip()
    if not value.isdigit():
        raise InvalidInput(_("%(field)s is a whole number, not %(value)s", field=label, value=repr(value)))
    return int(value)


def _form_weekdays() -> frozenset[int]:
    values = request.form.getlist("weekday")
    if not all(v.isdigit() and int(v) < 7 for v in values):
        raise InvalidInput(_("days of the week are 0 (Monday) to 6 (Sunday), not %(value)s", value=repr(values)))
    return frozenset(int(v) for v in values)


def _centre_details() -> CentreDetails:
    form = request.form
    return CentreDetails(name=form.get("name", ""), ae_title=form.get("ae_title", ""),
                         timezone=form.get("timezone", ""))


@bp.route("/admin/centres", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def centres_page() -> ResponseReturnValue:
    session = request_session()
    admin = current_user()
    if request.method == "POST":
        created: list[int] = []

        def create() -> str:
            centre = create_centre(session, admin, _centre_details())
            created.append(centre.id)
            return _("Imaging centre %(name)s created. Add its scanners, then open their slots.", name=centre.name)

        if form_action(session, create):
            return redirect(url_for("imaging_orders.centre_page", centre_id=created[0]))
    # A refused centre is shown again as typed (422), so the administrator corrects, not retypes.
    summaries = list_centres(session, admin)
    page = render_template("imaging_orders/centres.html", summaries=summaries, zones=clock.zone_names(),
                           summary_days=SUMMARY_DAYS, form=request.form)
    return page, 422 if request.method == "POST" else 200


@bp.route("/admin/centres/<int:centre_id>", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def centre_page(centre_id: int) -> ResponseReturnValue:
    session = request_session()
    admin = current_user()
    if request.method == "POST":

        def save() -> str:
            centre = update_centre(session, admin, centre_id, _centre_details())
            return _("%(name)s saved.", name=centre.name)

        if form_action(session, save):
            return redirect(url_for("imaging_orders.centre_page", centre_id=centre_id))
        return _centre_page_refused(centre_id, "details")
    return _render_centre_page(centre_id)


def _render_centre_page(centre_id: int, posted: str | None = None) -> str:
    """The centre page. `posted` names the form a refusal sends back ("details", "scanner",
    "slots", "block", or "scanner-<id>" for a scanner's own form): only that form shows what was
    typed, the others keep their defaults."""
    session = request_session()
    admin = current_user()
    centre = get_centre(session, admin, centre_id)
    zone = centre_zone(centre)
    today = utcnow().astimezone(zone).date()
    page = render_template(
        "imaging_orders/centre.html", centre=centre, scanners=centre_scanners(session, admin, centre_id),
        calendar=slot_calendar(session, admin, centre_id), zones=clock.zone_names(), modalities=sorted(MODALITIES),
        weekdays=list(enumerate(WEEKDAY_NAMES)), today=today, default_last_day=today + timedelta(days=27),
        summary_days=SUMMARY_DAYS, max_range_days=MAX_RANGE_DAYS, posted=posted, form=request.form,
    )
    return page


def _centre_page_refused(centre_id: int, posted: str) -> ResponseReturnValue:
    """The centre page again after `form_action` refused the form `posted` (its error is flashed):
    422 with what was typed in that form, so nothing has to be typed twice."""
    return _render_centre_page(centre_id, posted), 422


@bp.post("/admin/centres/<int:centre_id>/scanners")
@require_roles(Role.ADMIN)
def add_scanner_page(centre_id: int) -> ResponseReturnValue:
    session = request_session()
    form = request.form

    def add() -> str:
        schedule = add_scanner(session, current_user(), centre_id, ScannerDetails(
            name=form.get("name", ""), modality=form.get("modality", ""), room=form.get("room", ""),
            station_ae_title=form.get("station_ae_title", ""),
        ))
        return _("%(name)s added (%(modality)s, station AE title %(ae)s). Open its slots to make it bookable.",
                 name=schedule.name, modality=schedule.modality, ae=schedule.station_ae_title)

    if form_action(session, add):
        return redirect(url_for("imaging_orders.centre_page", centre_id=centre_id))
    return _centre_page_refused(centre_id, "scanner")


@bp.post("/admin/centres/<int:centre_id>/scanners/<int:schedule_id>")
@require_roles(Role.ADMIN)
def edit_scanner_page(centre_id: int, schedule_id: int) -> ResponseReturnValue:
    session = request_session()
    form = request.form

    def save() -> str:
        schedule = update_scanner(session, current_user(), centre_id, schedule_id, ScannerDetails(
            name=form.get("name", ""), modality=form.get("modality", ""), room=form.get("room", ""),
            station_ae_title=form.get("station_ae_title", ""),
        ))
        return _("%(name)s saved (%(modality)s, %(room)s, station AE title %(ae)s).", name=schedule.name,
                 modality=schedule.modality, room=schedule.room, ae=schedule.station_ae_title)

    if form_action(session, save):
        return redirect(url_for("imaging_orders.centre_page", centre_id=centre_id))
    return _centre_page_refused(centre_id, f"scanner-{schedule_id}")


@bp.post("/admin/centres/<int:centre_id>/scanners/<int:schedule_id>/active")
@require_roles(Role.ADMIN)
def scanner_active_page(centre_id: int, schedule_id: int) -> ResponseReturnValue:
    session = request_session()
    active = request.form.get("active") == "1"

    def change() -> str:
        schedule = set_scanner_active(session, current_user(), centre_id, schedule_id, active)
        if active:
            return _("%(name)s is in service again; its free slots can be booked.", name=schedule.name)
        return _("%(name)s is out of service; its slots are no longer offered.", name=schedule.name)

    # Nothing is typed into this one-button form, so a refusal (upcoming appointments) loses
    # nothing: back to the page with the reason flashed, and a reload does not post again.
    form_action(session, change)
    return redirect(url_for("imaging_orders.centre_page", centre_id=centre_id))


@bp.post("/admin/centres/<int:centre_id>/slots")
@require_roles(Role.ADMIN)
def open_slots_page(centre_id: int) -> ResponseReturnValue:
    session = request_session()

    def open_range() -> str:
        opening = SlotOpening(
            first_day=_form_day("first_day", _("the first day")), last_day=_form_day("last_day", _("the last day")),
            weekdays=_form_weekdays(), opens=_form_time("opens", _("the opening time")),
            closes=_form_time("closes", _("the closing time")),
            slot_minutes=_form_int("slot_minutes", _("the slot length")),
        )
        result = open_slots(session, current_user(), centre_id, _form_int("schedule_id", _("the scanner")), opening)
        message = [ngettext("%(num)d slot opened.", "%(num)d slots opened.", result.created)]
        if result.skipped_overlapping:
            message.append(ngettext("%(num)d skipped because the scanner already has a slot then.",
                                    "%(num)d skipped because the scanner already has a slot then.",
                                    result.skipped_overlapping))
        if result.skipped_past:
            message.append(ngettext("%(num)d skipped because it would start in the past.",
                                    "%(num)d skipped because they would start in the past.", result.skipped_past))
        return " ".join(message)

    if form_action(session, open_range):
        return redirect(url_for("imaging_orders.centre_page", centre_id=centre_id))
    return _centre_page_refused(centre_id, "slots")


@bp.post("/admin/centres/<int:centre_id>/slots/block")
@require_roles(Role.ADMIN)
def block_slots_page(centre_id: int) -> ResponseReturnValue:
    session = request_session()
    blocking = request.form.get("action", "block") != "release"

    def block() -> str:
        window = SlotWindow(
            first_day=_form_day("first_day", _("the first day")), last_day=_form_day("last_day", _("the last day")),
            from_time=_form_optional_time("from_time", _("the start time")),
            until_time=_form_optional_time("until_time", _("the end time")),
        )
        result = set_slots_blocked(session, current_user(), centre_id, _form_int("schedule_id", _("the scanner")),
                                   window, blocked=blocking)
        if blocking:
            message = [ngettext("%(num)d slot blocked.", "%(num)d slots blocked.", result.changed)]
        else:
            message = [ngettext("%(num)d slot released.", "%(num)d slots released.", result.changed)]
        if result.booked_untouched:
            message.append(ngettext(
                "%(num)d booked slot in that window kept (move or cancel its appointment to free it).",
                "%(num)d booked slots in that window kept (move or cancel those appointments to free them).",
                result.booked_untouched))
        return " ".join(message)

    if form_action(session, block):
        return redirect(url_for("imaging_orders.centre_page", centre_id=centre_id))
    return _centre_page_refused(centre_id, "block")
