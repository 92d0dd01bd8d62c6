"""Imaging centres as an administrator sets them up: the centre (name, AE title, time zone), its
scanners (one `Schedule` each: a modality in a room, with the station AE title its modality
queries the worklist with) and the scanners' opening slots.

Opening hours are given on the centre's own wall clock and every slot is stored in UTC, computed
with zoneinfo so a daylight-saving change moves the UTC hour, not the local one. Opening slots is
idempotent: a slot that would overlap any slot the scanner already has (free, booked or blocked)
is skipped, so opening the same range twice creates nothing the second time. Blocking and
releasing touch only free (or blocked) slots; a booked slot is never changed here.
"""

from __future__ import annotations

import bisect
import functools
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hospital import clock
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.i18n import ngettext
from hospital.models import Organization, OrganizationKind, Role, User
from imaging_orders.models import Appointment, AppointmentStatus, Schedule, Slot, SlotStatus
from referrals.public import MODALITIES

logger = logging.getLogger(__name__)

AE_TITLE_MAX = 16  # DICOM PS3.5, VR AE
CENTRE_NAME_MAX = 200
SCANNER_NAME_MAX = 120
ROOM_MAX = 60
MAX_RANGE_DAYS = 90
MIN_SLOT_MINUTES = 5
MAX_SLOT_MINUTES = 480
SUMMARY_DAYS = 14
# Appointments that still hold a scanner: booked, or the patient is already there.
LIVE_APPOINTMENT_STATUSES = (AppointmentStatus.BOOKED, AppointmentStatus.ARRIVED)
WEEKDAY_NAMES = (_l("Monday"), _l("Tuesday"), _l("Wednesday"), _l("Thursday"), _l("Friday"), _l("Saturday"),
                 _l("Sunday"))


@dataclass(frozen=True)
class CentreDetails:
    name: str
    ae_title: str
    timezone: str


@dataclass(frozen=True)
class ScannerDetails:
    name: str
    modality: str
    room: str
    station_ae_title: str


@dataclass(frozen=True)
class SlotOpening:
    """Slots of `slot_minutes` from `opens` to `closes` (centre local time) on each of `weekdays`
    (0 Monday .. 6 Sunday, as `date.weekday()`) from `first_day` to `last_day` inclusive."""

    first_day: date
    last_day: date
    weekdays: frozenset[int]
    opens: time
    closes: time
    slot_minutes: int


@dataclass(frozen=True)
class SlotWindow:
    """From `first_day` at `from_time` to `last_day` at `until_time`, centre local time; no time
    means the whole day (from midnight, until the next midnight)."""

    first_day: date
    last_day: date
    from_time: time | None = None
    until_time: time | None = None


@dataclass(frozen=True)
class OpeningResult:
    created: int
    skipped_overlapping: int  # the scanner already has a slot at that time
    skipped_past: int  # would have started before now


@dataclass(frozen=True)
class BlockingResult:
    changed: int
    booked_untouched: int


@dataclass(frozen=True)
class CentreSummary:
    centre: Organization
    active_scanners: int
    free_slots: int  # in the next SUMMARY_DAYS days, on active scanners


@dataclass(frozen=True)
class ScannerSummary:
    schedule: Schedule
    free_slots: int  # next SUMMARY_DAYS days
    blocked_slots: int  # next SUMMARY_DAYS days
    upcoming_appointments: int  # booked or arrived, not yet over


@dataclass(frozen=True)
class CalendarDay:
    """One scanner's slots on one local day: when the first starts and the last ends, by status."""

    day: date
    schedule: Schedule
    first_start: datetime  # centre local time
    last_end: datetime  # centre local time
    free: int
    booked: int
    blocked: int


# ---------------------------------------------------------------------------------------------
# Validation of the values an administrator types
# ---------------------------------------------------------------------------------------------


def valid_ae_title(value: str, label: str | None = None) -> str:
    """`value` as a DICOM AE title: 1 to 16 characters of the default repertoire (printable
    ASCII) without a backslash, not only spaces. Leading and trailing spaces are not significant
    in an AE (PS3.5) and are dropped; case is kept, because the modality sends the title exactly
    as it is configured there (the worklist matches it case-insensitively anyway)."""
    label = label or _("AE title")
    stripped = value.strip(" ")
    if not stripped:
        raise InvalidInput(_("the %(field)s is required: 1 to %(limit)d characters, not only spaces", field=label,
                             limit=AE_TITLE_MAX))
    if len(stripped) > AE_TITLE_MAX:
        raise InvalidInput(_("the %(field)s %(value)s is %(length)d characters; DICOM allows at most %(limit)d",
                             field=label, value=repr(stripped), length=len(stripped), limit=AE_TITLE_MAX))
    if "\\" in stripped:
        raise InvalidInput(_("the %(field)s %(value)s contains a backslash, which DICOM does not allow in an AE title",
                             field=label, value=repr(stripped)))
    if any(not " " <= c <= "~" for c in stripped):
        raise InvalidInput(_("the %(field)s %(value)s contains a control or non-ASCII character; use letters, digits "
                             "and punctuation", field=label, value=repr(stripped)))
    return stripped


@functools.cache
def centre_zone(centre: Organization) -> ZoneInfo:
    return clock.zone(centre.timezone)


def _required_text(value: str, label: str, limit: int) -> str:
    text = value.strip()
    if not text:
        raise InvalidInput(_("the %(field)s is required", field=label))
    if len(text) > limit:
        raise InvalidInput(_("the %(field)s is %(length)d characters; at most %(limit)d fit", field=label,
                             length=len(text), limit=limit))
    return text


def _ensure_admin(user: User) -> None:
    # The routes check the role too; the service checks again so no other caller can skip it.
    if user.role is not Role.ADMIN:
        raise Forbidden(_("imaging centres are set up by administrators"))


# ---------------------------------------------------------------------------------------------
# Centres
# ---------------------------------------------------------------------------------------------


def _centre(session: Session, centre_id: int, *, lock: bool = False) -> Organization:
    # A locked read is also a fresh one: the row as it is now, not as this session first saw it.
    centre = session.get(Organization, centre_id, with_for_update=lock or None, populate_existing=lock)
    if centre is None or centre.kind is not OrganizationKind.IMAGING_CENTRE:
        raise NotFound(_("imaging centre %(id)s does not exist", id=centre_id))
    return centre


def get_centre(session: Session, admin: User, centre_id: int) -> Organization:
    _ensure_admin(admin)
    return _centre(session, centre_id)


def list_centres(session: Session, admin: User) -> list[CentreSummary]:
    """Every imaging centre with its active scanners and free slots in the next 14 days."""
    _ensure_admin(admin)
    now = utcnow()
    scanners = (
        select(func.count(Schedule.id))
        .where(Schedule.organization_id == Organization.id, Schedule.active.is_(True))
        .correlate(Organization)
        .scalar_subquery()
    )
    free = (
        select(func.count(Slot.id))
        .join(Schedule, Slot.schedule_id == Schedule.id)
        .where(
            Schedule.organization_id == Organization.id, Schedule.active.is_(True), Slot.status == SlotStatus.FREE,
            Slot.start >= now, Slot.start < now + timedelta(days=SUMMARY_DAYS),
        )
        .correlate(Organization)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Organization, scanners, free)
        .where(Organization.kind == OrganizationKind.IMAGING_CENTRE)
        .order_by(Organization.name, Organization.id)
    )
    return [CentreSummary(centre, active or 0, free_count or 0) for centre, active, free_count in rows]


def _ensure_centre_ae_title_free(session: Session, ae_title: str, centre_id: int | None) -> None:
    # Case-insensitive, as the worklist matches AE titles: 'ct1' and 'CT1' are the same station.
    query = select(Organization).where(func.upper(Organization.ae_title) == ae_title.upper())
    if centre_id is not None:
        query = query.where(Organization.id != centre_id)
    holder = session.scalars(query.limit(1)).first()
    if holder is not None:
        raise Conflict(_("the AE title %(value)s is already used by %(name)s; choose another", value=repr(ae_title),
                         name=holder.name))


def _flush_unique(session: Session, message: str) -> None:
    try:
        # The unique constraint is the last word when two administrators save at the same moment.
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(message) from exc


def _clean_centre(details: CentreDetails) -> CentreDetails:
    return CentreDetails(
        name=_required_text(details.name, _("centre name"), CENTRE_NAME_MAX),
        ae_title=valid_ae_title(details.ae_title, _("centre AE title")),
        timezone=clock.valid_zone_name(details.timezone),
    )


def create_centre(session: Session, admin: User, details: CentreDetails) -> Organization:
    _ensure_admin(admin)
    clean = _clean_centre(details)
    _ensure_centre_ae_title_free(session, clean.ae_title, None)
    centre = Organization(
        name=clean.name, kind=OrganizationKind.IMAGING_CENTRE, ae_title=clean.ae_title, timezone=clean.timezone
    )
    session.add(centre)
    _flush_unique(session, _("the AE title %(value)s was just taken; choose another", value=repr(clean.ae_title)))
    record_access(session, admin, "C", "Organization", centre.id, description=f"imaging centre {clean.name!r} created")
    logger.info("imaging centre %s created by user %s", centre.id, admin.id)
    return centre


def update_centre(session: Session, admin: User, centre_id: int, details: CentreDetails) -> Organization:
    """Change a centre's name, AE title or time zone. Slots already opened keep their instants
    (they are stored in UTC); only slots opened from now on follow a new time zone."""
    _ensure_admin(admin)
    centre = _centre(session, centre_id, lock=True)
    clean = _clean_centre(details)
    _ensure_centre_ae_title_free(session, clean.ae_title, centre.id)
    changed = [
        field for field in ("name", "ae_title", "timezone") if getattr(centre, field) != getattr(clean, field)
    ]
    if not changed:
        return centre
    centre.name, centre.ae_title, centre.timezone = clean.name, clean.ae_title, clean.timezone
    _flush_unique(session, _("the AE title %(value)s was just taken; choose another", value=repr(clean.ae_title)))
    record_access(session, admin, "U", "Organization", centre.id, description=f"changed {', '.join(changed)}")
    return centre


# ---------------------------------------------------------------------------------------------
# Scanners
# ---------------------------------------------------------------------------------------------


def _scanner(session: Session, centre_id: int, schedule_id: int, *, lock: bool = False) -> Schedule:
    schedule = session.get(Schedule, schedule_id, with_for_update=lock or None, populate_existing=lock)
    if schedule is None or schedule.organization_id != centre_id:
        raise NotFound(_("scanner %(scanner)s does not exist at imaging centre %(centre)s", scanner=schedule_id,
                         centre=centre_id))
    return schedule


def _ensure_station_ae_title_free(session: Session, ae_title: str, schedule_id: int | None) -> None:
    # Across every centre: a worklist C-FIND names only the station, not the centre, so two
    # active scanners with one station AE title would each be handed the other's patients.
    query = select(Schedule).where(Schedule.active.is_(True), func.upper(Schedule.station_ae_title) == ae_title.upper())
    if schedule_id is not None:
        query = query.where(Schedule.id != schedule_id)
    holder = session.scalars(query.limit(1)).first()
    if holder is not None:
        raise Conflict(_(
            "the station AE title %(value)s is already used by the active scanner %(scanner)s (%(centre)s); choose "
            "another or deactivate that scanner first", value=repr(ae_title), scanner=repr(holder.name),
            centre=holder.organization.name,
        ))


def centre_scanners(session: Session, admin: User, centre_id: int) -> list[ScannerSummary]:
    """The centre's scanners, active first, with their slot counts."""
    _ensure_admin(admin)
    _centre(session, centre_id)
    now = utcnow()
    schedules = list(session.scalars(
        select(Schedule).where(Schedule.organization_id == centre_id)
        .order_by(Schedule.active.desc(), Schedule.name, Schedule.id)
    ))
    ids = [s.id for s in schedules]
    slot_counts: dict[tuple[int, SlotStatus], int] = {}
    appointments: dict[int, int] = {}
    if ids:
        for schedule_id, status, count in session.execute(
            select(Slot.schedule_id, Slot.status, func.count(Slot.id))
            .where(Slot.schedule_id.in_(ids), Slot.start >= now, Slot.start < now + timedelta(days=SUMMARY_DAYS))
            .group_by(Slot.schedule_id, Slot.status)
        ):
            slot_counts[(schedule_id, status)] = count
        appointments = dict(session.execute(
            select(Slot.schedule_id, func.count(Appointment.id))
            .join(Slot, Appointment.slot_id == Slot.id)
            .where(Slot.schedule_id.in_(ids), Appointment.status.in_(LIVE_APPOINTMENT_STATUSES), Appointment.end > now)
            .group_by(Slot.schedule_id)
        ).all())
    return [
        ScannerSummary(
            s, slot_counts.get((s.id, SlotStatus.FREE), 0), slot_counts.get((s.id, SlotStatus.BLOCKED), 0),
            appointments.get(s.id, 0),
        )
        for s in schedules
    ]


def slot_calendar(session: Session, admin: User, centre_id: int, days: int = SUMMARY_DAYS) -> list[CalendarDay]:
    """The centre's slots from today to `days` days ahead, grouped by local day and scanner, so
    an administrator sees the opening hours as the centre's staff live them."""
    _ensure_admin(admin)
    centre = _centre(session, centre_id)
    zone = centre_zone(centre)
    now = utcnow()
    slots = session.execute(
        select(Slot, Schedule)
        .join(Schedule, Slot.schedule_id == Schedule.id)
        .where(Schedule.organization_id == centre.id, Slot.end > now, Slot.start < now + timedelta(days=days))
        .order_by(Slot.start, Schedule.name, Slot.id)
    ).all()
    grouped: dict[tuple[date, int], list[Slot]] = {}
    schedules: dict[int, Schedule] = {}
    for slot, schedule in slots:
        schedules[schedule.id] = schedule
        grouped.setdefault((slot.start.astimezone(zone).date(), schedule.id), []).append(slot)
    calendar = []
    for (day, schedule_id), day_slots in grouped.items():
        statuses = [s.status for s in day_slots]
        calendar.append(CalendarDay(
            day, schedules[schedule_id], day_slots[0].start.astimezone(zone),
            max(s.end for s in day_slots).astimezone(zone), statuses.count(SlotStatus.FREE),
            statuses.count(SlotStatus.BUSY), statuses.count(SlotStatus.BLOCKED),
        ))
    return sorted(calendar, key=lambda c: (c.day, c.schedule.name, c.schedule.id))


def _clean_scanner(details: ScannerDetails) -> ScannerDetails:
    modality = details.modality.strip().upper()
    if modality not in MODALITIES:
        raise InvalidInput(_("modality %(value)s is not one of %(known)s", value=repr(details.modality),
                             known=", ".join(sorted(MODALITIES))))
    return ScannerDetails(
        name=_required_text(details.name, _("scanner name"), SCANNER_NAME_MAX), modality=modality,
        room=_required_text(details.room, _("room"), ROOM_MAX),
        station_ae_title=valid_ae_title(details.station_ae_title, _("station AE title")),
    )


def add_scanner(session: Session, admin: User, centre_id: int, details: ScannerDetails) -> Schedule:
    _ensure_admin(admin)
    centre = _centre(session, centre_id)
    clean = _clean_scanner(details)
    _ensure_station_ae_title_free(session, clean.station_ae_title, None)
    schedule = Schedule(
        organization_id=centre.id, name=clean.name, modality=clean.modality, room=clean.room,
        station_ae_title=clean.station_ae_title, active=True,
    )
    session.add(schedule)
    session.flush()
    record_access(session, admin, "C", "Schedule", schedule.id,
                  description=f"scanner {clean.name!r} ({clean.modality}, station {clean.station_ae_title}) "
                              f"at centre {centre.id}")
    logger.info("scanner %s added to centre %s by user %s", schedule.id, centre.id, admin.id)
    return schedule


def update_scanner(
    session: Session, admin: User, centre_id: int, schedule_id: int, details: ScannerDetails
) -> Schedule:
    """Correct a scanner's name, room, station AE title or modality. The modality does not change
    while appointments are booked on the scanner: they were booked for what it examines. A new
    station AE title takes effect at the modality's next worklist query."""
    _ensure_admin(admin)
    schedule = _scanner(session, centre_id, schedule_id, lock=True)
    clean = _clean_scanner(details)
    if clean.modality != schedule.modality:
        upcoming = _upcoming_appointments(session, schedule.id)
        if upcoming:
            raise Conflict(ngettext(
                "%(name)s has %(num)d upcoming appointment booked as %(modality)s; its modality cannot change "
                "until it is moved or cancelled",
                "%(name)s has %(num)d upcoming appointments booked as %(modality)s; its modality cannot change "
                "until they are moved or cancelled", upcoming, name=schedule.name, modality=schedule.modality))
    if schedule.active:
        _ensure_station_ae_title_free(session, clean.station_ae_title, schedule.id)
    changed = [f for f in ("name", "modality", "room", "station_ae_title") if getattr(schedule, f) != getattr(clean, f)]
    if not changed:
        return schedule
    schedule.name, schedule.modality = clean.name, clean.modality
    schedule.room, schedule.station_ae_title = clean.room, clean.station_ae_title
    session.flush()
    record_access(session, admin, "U", "Schedule", schedule.id, description=f"changed {', '.join(changed)}")
    logger.info("scanner %s changed (%s) by user %s", schedule.id, ", ".join(changed), admin.id)
    return schedule


def _upcoming_appointments(session: Session, schedule_id: int) -> int:
    return session.scalar(
        select(func.count(Appointment.id))
        .join(Slot, Appointment.slot_id == Slot.id)
        .where(Slot.schedule_id == schedule_id, Appointment.status.in_(LIVE_APPOINTMENT_STATUSES),
               Appointment.end > utcnow())
    ) or 0


def set_scanner_active(session: Session, admin: User, centre_id: int, schedule_id: int, active: bool) -> Schedule:
    """Take a scanner out of service or put it back. A scanner with upcoming appointments is not
    deactivated: its patients would silently lose their examination. Those appointments must be
    moved or cancelled first (which tells the patient), then the scanner can go.

    The scanner row is locked, and booking takes a shared lock on it (`service._free_slot_for`),
    so a booking that commits while this runs is counted rather than stranded."""
    _ensure_admin(admin)
    schedule = _scanner(session, centre_id, schedule_id, lock=True)
    if schedule.active == active:
        return schedule
    if active:
        _ensure_station_ae_title_free(session, schedule.station_ae_title, schedule.id)
    else:
        upcoming = _upcoming_appointments(session, schedule.id)
        if upcoming:
            raise Conflict(ngettext(
                "%(name)s has %(num)d upcoming appointment; move or cancel it first, or block its free slots instead",
                "%(name)s has %(num)d upcoming appointments; move or cancel them first, or block its free slots "
                "instead", upcoming, name=schedule.name))
    schedule.active = active
    session.flush()
    record_access(session, admin, "U", "Schedule", schedule.id, description="reactivated" if active else "deactivated")
    return schedule


# ---------------------------------------------------------------------------------------------
# Slots
# ---------------------------------------------------------------------------------------------


def _check_range(first_day: date, last_day: date) -> None:
    if last_day < first_day:
        raise InvalidInput(_("the range ends (%(last)s) before it starts (%(first)s)", last=last_day.isoformat(),
                             first=first_day.isoformat()))
    days = (last_day - first_day).days + 1
    if days > MAX_RANGE_DAYS:
        raise InvalidInput(_("the range is %(days)d days; at most %(limit)d days at a time", days=days,
                             limit=MAX_RANGE_DAYS))


def planned_slots(opening: SlotOpening, zone: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """The UTC (start, end) of every slot `opening` describes, in order.

    Each day's opening and closing are local wall-clock times turned into instants with `zone`;
    slots are then laid end to end in real time, so every slot lasts `slot_minutes` even on a
    daylight-saving day. A local time that does not exist or occurs twice that day is read with
    the offset in force before the change (PEP 495, fold=0).
    """
    length = timedelta(minutes=opening.slot_minutes)
    slots: list[tuple[datetime, datetime]] = []
    day = opening.first_day
    while day <= opening.last_day:
        if day.weekday() in opening.weekdays:
            start = datetime.combine(day, opening.opens, tzinfo=zone).astimezone(UTC)
            # Closing at 00:00 means midnight at the end of the day (a time field cannot say 24:00).
            closing_day = day + timedelta(days=1) if opening.closes == time.min else day
            closing = datetime.combine(closing_day, opening.closes, tzinfo=zone).astimezone(UTC)
            while start + length <= closing:
                slots.append((start, start + length))
                start += length
        day += timedelta(days=1)
    return slots


def _validate_opening(opening: SlotOpening) -> None:
    _check_range(opening.first_day, opening.last_day)
    if not opening.weekdays:
        raise InvalidInput(_("choose at least one day of the week"))
    if not opening.weekdays <= set(range(7)):
        raise InvalidInput(_("days of the week are 0 (Monday) to 6 (Sunday), got %(value)s",
                             value=sorted(opening.weekdays)))
    if opening.closes <= opening.opens and opening.closes != time.min:
        closes, opens = opening.closes.strftime("%H:%M"), opening.opens.strftime("%H:%M")
        raise InvalidInput(_(
            "closing time %(closes)s must be after opening time %(opens)s (00:00 means midnight; hours across "
            "midnight are opened as two ranges)", closes=closes, opens=opens,
        ))
    if not MIN_SLOT_MINUTES <= opening.slot_minutes <= MAX_SLOT_MINUTES:
        raise InvalidInput(_("a slot lasts %(low)d to %(high)d minutes, not %(value)d", low=MIN_SLOT_MINUTES,
                             high=MAX_SLOT_MINUTES, value=opening.slot_minutes))


def open_slots(
    session: Session, admin: User, centre_id: int, schedule_id: int, opening: SlotOpening
) -> OpeningResult:
    """Create the free slots `opening` describes on an active scanner, skipping any that would
    overlap a slot the scanner already has (whatever its status) and any that would start in the
    past. Running it twice creates nothing the second time."""
    _ensure_admin(admin)
    _validate_opening(opening)
    # Locked so two administrators opening the same range at once cannot both pass the overlap check.
    schedule = _scanner(session, centre_id, schedule_id, lock=True)
    if not schedule.active:
        raise Conflict(_("%(name)s is deactivated; reactivate it before opening slots", name=schedule.name))
    planned = planned_slots(opening, centre_zone(schedule.organization))
    if not planned:
        raise InvalidInput(_("those days and hours hold no slot; check the days of the week and the slot length"))
    existing = session.execute(
        select(Slot.start, Slot.end)
        .where(Slot.schedule_id == schedule.id, Slot.end > planned[0][0], Slot.start < planned[-1][1])
        .order_by(Slot.start)
    ).all()
    starts = [start for start, _end in existing]
    # Largest end among the existing slots up to each index: one bisect answers "any overlap?".
    latest_end: list[datetime] = []
    for _start, end in existing:
        latest_end.append(max(end, latest_end[-1]) if latest_end else end)
    now = utcnow()
    rows: list[dict[str, object]] = []
    overlapping = past = 0
    for start, end in planned:
        if start < now:
            past += 1
            continue
        before = bisect.bisect_left(starts, end)  # existing slots starting before this one ends
        if before and latest_end[before - 1] > start:
            overlapping += 1
            continue
        rows.append({"schedule_id": schedule.id, "start": start, "end": end, "status": SlotStatus.FREE, "version": 1})
    if rows:
        session.execute(insert(Slot), rows)
    record_access(
        session, admin, "C", "Slot", None,
        description=(f"scanner {schedule.id}: opened {len(rows)} slots {opening.first_day.isoformat()}.."
                     f"{opening.last_day.isoformat()} {opening.opens:%H:%M}-{opening.closes:%H:%M} "
                     f"every {opening.slot_minutes} min ({overlapping} overlapping and {past} past skipped)"),
    )
    logger.info("scanner %s: %d slots opened, %d overlapping, %d past", schedule.id, len(rows), overlapping, past)
    return OpeningResult(created=len(rows), skipped_overlapping=overlapping, skipped_past=past)


def _window_instants(window: SlotWindow, zone: ZoneInfo) -> tuple[datetime, datetime]:
    _check_range(window.first_day, window.last_day)
    start_local = datetime.combine(window.first_day, window.from_time or time.min, tzinfo=zone)
    if window.until_time is None:
        end_local = datetime.combine(window.last_day + timedelta(days=1), time.min, tzinfo=zone)
    else:
        end_local = datetime.combine(window.last_day, window.until_time, tzinfo=zone)
    start, end = start_local.astimezone(UTC), end_local.astimezone(UTC)
    if end <= start:
        raise InvalidInput(_("the window ends before it starts"))
    return start, end


def set_slots_blocked(
    session: Session, admin: User, centre_id: int, schedule_id: int, window: SlotWindow, *, blocked: bool = True
) -> BlockingResult:
    """Block the scanner's free slots overlapping `window` (maintenance, a closed day), or with
    `blocked=False` make its blocked slots there free again. Booked slots are never touched, and
    nothing that has already started is changed."""
    _ensure_admin(admin)
    schedule = _scanner(session, centre_id, schedule_id)
    start, end = _window_instants(window, centre_zone(schedule.organization))
    in_window = (Slot.schedule_id == schedule.id, Slot.start < end, Slot.end > start, Slot.start >= utcnow())
    before, after = (SlotStatus.FREE, SlotStatus.BLOCKED) if blocked else (SlotStatus.BLOCKED, SlotStatus.FREE)
    # One guarded UPDATE that bumps the version: a booking racing with it either committed first
    # (the slot is no longer free and is left alone) or fails on the version and is told to retry.
    changed = session.execute(
        update(Slot).where(*in_window, Slot.status == before).values(status=after, version=Slot.version + 1),
        execution_options={"synchronize_session": "fetch"},
    ).rowcount
    booked = session.scalar(select(func.count(Slot.id)).where(*in_window, Slot.status == SlotStatus.BUSY)) or 0
    verb = "blocked" if blocked else "released"
    record_access(session, admin, "U", "Slot", None,
                  description=f"scanner {schedule.id}: {verb} {changed} slots {start.isoformat()}..{end.isoformat()}")
    return BlockingResult(changed=changed, booked_untouched=booked)
