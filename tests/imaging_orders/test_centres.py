"""Administrators set up imaging centres, their scanners and opening slots: pages and service.

Slots are laid out on the centre's local calendar and stored in UTC (a daylight-saving change
moves the UTC hour), opening a range twice creates nothing new, blocking never touches a booked
slot, invalid AE titles and time zones are refused with nothing written (the refused form comes
back as typed, with status 422), and a centre created here works downstream: referrals name it,
patients book its slots, its station gets its worklist.
"""

from __future__ import annotations

import calendar
import html
import itertools
import re
import threading
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.auth import hash_password
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.errors import Conflict, DomainError, Forbidden, InvalidInput
from hospital.models import AuditEvent, Organization, OrganizationKind, Role, User
from hospital.seed import DEMO_PASSWORD, DemoSeed, seed_demo
from imaging_orders.centres import (
    CentreDetails,
    ScannerDetails,
    SlotOpening,
    SlotWindow,
    add_scanner,
    create_centre,
    open_slots,
    set_scanner_active,
    set_slots_blocked,
    update_centre,
    update_scanner,
    valid_ae_title,
)
from imaging_orders.models import Appointment, AppointmentStatus, Schedule, Slot, SlotStatus
from imaging_orders.service import accept_referral, book_appointment, cancel_appointment, free_slots
from imaging_orders.worklist import find_worklist_items
from referrals.models import ReferralStatus
from referrals.public import referral_summary
from referrals.service import ReferralRequest, create_referral
from tests.conftest import make_test_app
from tests.factories import make_referral
from tests.imaging_orders.test_worklist import query
from tests.referrals.test_referral_pages import csrf_token_of, sign_in

EVERY_DAY = frozenset(range(7))


def last_sunday(year: int, month: int) -> date:
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - 6) % 7)


def next_change_sunday(month: int) -> date:
    """The next last-Sunday-of-`month` (EU daylight-saving change) at least a few days ahead."""
    today = utcnow().date()
    year = today.year
    while last_sunday(year, month) - timedelta(days=3) <= today:
        year += 1
    return last_sunday(year, month)


def berlin_centre(db_session: Session, admin: User, ae_title: str = "BERLINIMG") -> Organization:
    return create_centre(db_session, admin, CentreDetails("Berlin Imaging", ae_title, "Europe/Berlin"))


def ct_scanner(db_session: Session, admin: User, centre: Organization, station: str = "BERLINCT1") -> Schedule:
    return add_scanner(db_session, admin, centre.id, ScannerDetails("CT scanner A", "CT", "Room 1", station))


def tomorrow_opening(zone_today: date | None = None, **changes: Any) -> SlotOpening:
    day = (zone_today or utcnow().date()) + timedelta(days=2)
    values: dict[str, Any] = dict(first_day=day, last_day=day, weekdays=EVERY_DAY, opens=time(9, 0),
                                  closes=time(12, 0), slot_minutes=30)
    values.update(changes)
    return SlotOpening(**values)


def slot_starts(db_session: Session, schedule: Schedule) -> list[datetime]:
    return list(db_session.scalars(select(Slot.start).where(Slot.schedule_id == schedule.id).order_by(Slot.start)))


def count(db_session: Session, model: type[Any], *where: Any) -> int:
    return db_session.scalar(select(func.count()).select_from(model).where(*where)) or 0


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------


def test_admin_creates_a_centre_adds_a_scanner_and_opens_slots_in_pages(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    sign_in(client, "admin")
    listing = client.get("/admin/centres").get_data(as_text=True)
    assert "Riverside Imaging Centre" in listing and 'href="/admin/centres"' in listing  # the nav link
    token = csrf_token_of(listing)
    form = {"csrf_token": token, "name": "Lakeside Imaging", "ae_title": "  LAKESIDE ", "timezone": "europe/berlin"}
    assert client.post("/admin/centres", data={**form, "csrf_token": ""}).status_code == 403
    created = client.post("/admin/centres", data=form)
    assert created.status_code == 302
    centre = db_session.scalars(select(Organization).where(Organization.name == "Lakeside Imaging")).one()
    assert created.headers["Location"].endswith(f"/admin/centres/{centre.id}")
    assert (centre.kind, centre.ae_title, centre.timezone) == (OrganizationKind.IMAGING_CENTRE, "LAKESIDE", "Europe/Berlin")

    page = client.get(f"/admin/centres/{centre.id}").get_data(as_text=True)
    assert "Imaging centre Lakeside Imaging created" in page and "No scanners yet" in page
    for field in re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', page):
        assert f'for="{field}"' in page, f"input {field} has no label"
    scanner = client.post(f"/admin/centres/{centre.id}/scanners", data={
        "csrf_token": token, "name": "MR scanner 1", "modality": "MR", "room": "Room 4", "station_ae_title": "LAKEMR1"})
    assert scanner.status_code == 302
    schedule = db_session.scalars(select(Schedule).where(Schedule.organization_id == centre.id)).one()
    assert (schedule.modality, schedule.station_ae_title, schedule.active) == ("MR", "LAKEMR1", True)

    day = utcnow().date() + timedelta(days=3)
    opening = {"csrf_token": token, "schedule_id": str(schedule.id), "first_day": day.isoformat(),
               "last_day": day.isoformat(), "weekday": [str(day.weekday())], "opens": "08:00", "closes": "10:00",
               "slot_minutes": "30"}
    done = client.post(f"/admin/centres/{centre.id}/slots", data=opening, follow_redirects=True)
    assert "4 slots opened." in done.get_data(as_text=True)
    again = client.post(f"/admin/centres/{centre.id}/slots", data=opening, follow_redirects=True).get_data(as_text=True)
    assert "0 slots opened. 4 skipped because the scanner already has a slot then." in again
    assert "08:00–10:00" in again  # the calendar shows local hours

    listing = client.get("/admin/centres").get_data(as_text=True)
    row = listing.split(f'data-centre-id="{centre.id}"')[1].split("</tr>")[0]
    assert "LAKESIDE" in row and "Europe/Berlin" in row and re.findall(r'class="num">(\d+)<', row) == ["1", "4"]

    duplicate = client.post("/admin/centres", data={**form, "name": "Copy", "ae_title": "lakeside"}, follow_redirects=True)
    assert "already used by Lakeside Imaging" in duplicate.get_data(as_text=True)
    assert count(db_session, Organization, Organization.name == "Copy") == 0
    bad_range = client.post(f"/admin/centres/{centre.id}/slots", data={**opening, "opens": "25:00"},
                            follow_redirects=True)
    assert "the opening time is a time HH:MM" in bad_range.get_data(as_text=True)


def test_the_list_has_an_empty_state(client: FlaskClient, db_session: Session) -> None:
    db_session.add(User(username="lone-admin", password_hash=hash_password(DEMO_PASSWORD), role=Role.ADMIN))
    db_session.commit()
    sign_in(client, "lone-admin")
    page = client.get("/admin/centres").get_data(as_text=True)
    assert "No imaging centres yet" in page and 'name="csrf_token"' in page


def field_value(page: str, field_id: str) -> str:
    tag = re.search(rf'<input id="{field_id}"[^>]*>', page)
    assert tag is not None, f"no input {field_id}"
    value = re.search(r'value="([^"]*)"', tag.group(0))
    return html.unescape(value.group(1)) if value else ""


def selected_options(page: str, select_id: str) -> list[str]:
    options = page.split(f'<select id="{select_id}"')[1].split("</select>")[0]
    return re.findall(r'<option value="([^"]*)" selected>', options)


def checked_weekdays(page: str) -> list[str]:
    return re.findall(r'name="weekday" value="(\d)" checked', page)


def test_a_refused_centre_comes_back_as_typed(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    sign_in(client, "admin")
    token = csrf_token_of(client.get("/admin/centres").get_data(as_text=True))
    before = count(db_session, Organization)
    refused = client.post("/admin/centres", data={
        "csrf_token": token, "name": "Harbour & Sons Imaging", "ae_title": "HARBOUR\\1", "timezone": "Europe/Lisbon"})
    assert refused.status_code == 422
    page = refused.get_data(as_text=True)
    assert "backslash" in page  # the service's reason, flashed on the same page
    assert (field_value(page, "name"), field_value(page, "ae_title"), field_value(page, "timezone")) == (
        "Harbour & Sons Imaging", "HARBOUR\\1", "Europe/Lisbon")
    assert 'name="csrf_token"' in page and 'for="name"' in page
    assert count(db_session, Organization) == before
    # A plain visit afterwards is the empty form again.
    fresh = client.get("/admin/centres").get_data(as_text=True)
    assert (field_value(fresh, "name"), field_value(fresh, "timezone")) == ("", "UTC")


def test_refused_centre_page_forms_keep_what_was_typed_in_that_form_only(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    admin = demo.users["admin"]
    centre = berlin_centre(db_session, admin)
    ct = ct_scanner(db_session, admin, centre)
    mr = add_scanner(db_session, admin, centre.id, ScannerDetails("MR scanner B", "MR", "Room 2", "BERLINMR1"))
    db_session.commit()
    sign_in(client, "admin")
    url = f"/admin/centres/{centre.id}"
    token = csrf_token_of(client.get(url).get_data(as_text=True))
    schedules = count(db_session, Schedule, Schedule.organization_id == centre.id)

    duplicate = client.post(f"{url}/scanners", data={
        "csrf_token": token, "name": "US scanner C", "modality": "US", "room": "Room 9", "station_ae_title": "berlinct1"})
    assert duplicate.status_code == 422
    page = duplicate.get_data(as_text=True)
    assert "already used by the active scanner" in page
    assert (field_value(page, "scanner-name"), field_value(page, "scanner-room"),
            field_value(page, "scanner-ae")) == ("US scanner C", "Room 9", "berlinct1")
    assert selected_options(page, "scanner-modality") == ["US"]
    # The other forms are untouched: the centre as stored, the opening form's defaults.
    assert (field_value(page, "centre-name"), field_value(page, "centre-tz")) == ("Berlin Imaging", "Europe/Berlin")
    assert checked_weekdays(page) == ["0", "1", "2", "3", "4"] and field_value(page, "open-length") == "30"
    assert count(db_session, Schedule, Schedule.organization_id == centre.id) == schedules

    day = utcnow().date() + timedelta(days=3)
    opening = {"csrf_token": token, "schedule_id": str(mr.id), "first_day": day.isoformat(),
               "last_day": (day + timedelta(days=6)).isoformat(), "weekday": ["1", "5"], "opens": "07:30",
               "closes": "11:15", "slot_minutes": "1"}
    short = client.post(f"{url}/slots", data=opening)
    assert short.status_code == 422
    page = short.get_data(as_text=True)
    assert "5 to 480 minutes, not 1" in page
    assert [field_value(page, f) for f in ("open-first", "open-last", "open-opens", "open-closes", "open-length")] == [
        opening["first_day"], opening["last_day"], "07:30", "11:15", "1"]
    assert checked_weekdays(page) == ["1", "5"]
    assert selected_options(page, "open-scanner") == [str(mr.id)]
    assert selected_options(page, "block-scanner") == [] and field_value(page, "block-first") != opening["last_day"]
    assert field_value(page, "scanner-name") == "" and selected_options(page, "scanner-modality") == []
    assert slot_starts(db_session, ct) == [] and slot_starts(db_session, mr) == []
    # Every day unticked comes back unticked, not as the Monday-to-Friday default.
    none_ticked = client.post(f"{url}/slots", data={**opening, "weekday": [], "slot_minutes": "30"})
    assert none_ticked.status_code == 422 and checked_weekdays(none_ticked.get_data(as_text=True)) == []

    window = {"csrf_token": token, "schedule_id": str(mr.id), "first_day": day.isoformat(), "from_time": "09:00",
              "last_day": "tomorrow", "until_time": "10:00", "action": "block"}
    blocked = client.post(f"{url}/slots/block", data=window)
    assert blocked.status_code == 422
    page = blocked.get_data(as_text=True)
    assert "the last day is a date YYYY-MM-DD, not &#39;tomorrow&#39;" in page
    assert [field_value(page, f) for f in ("block-first", "block-from-time", "block-last", "block-until-time")] == [
        day.isoformat(), "09:00", "tomorrow", "10:00"]
    assert selected_options(page, "block-scanner") == [str(mr.id)] and selected_options(page, "open-scanner") == []

    renamed = client.post(url, data={"csrf_token": token, "name": "Berlin Imaging Mitte", "ae_title": "BERLIN\\IMG",
                                      "timezone": "Europe/Paris"})
    assert renamed.status_code == 422
    page = renamed.get_data(as_text=True)
    assert (field_value(page, "centre-name"), field_value(page, "centre-ae"), field_value(page, "centre-tz")) == (
        "Berlin Imaging Mitte", "BERLIN\\IMG", "Europe/Paris")
    assert "<h1>Berlin Imaging</h1>" in page  # the heading is the centre as stored
    db_session.refresh(centre)
    assert (centre.name, centre.ae_title, centre.timezone) == ("Berlin Imaging", "BERLINIMG", "Europe/Berlin")


@pytest.mark.parametrize("role", [r.value for r in Role if r is not Role.ADMIN])
def test_only_administrators_reach_the_centre_pages(as_role: Any, demo: DemoSeed, db_session: Session, role: str) -> None:
    user = as_role(role)
    centre_id = demo.imaging_centre.id
    assert user.get("/admin/centres").status_code == 403
    assert user.get(f"/admin/centres/{centre_id}").status_code == 403
    assert user.post("/admin/centres", data={"name": "X", "ae_title": "XRAY", "timezone": "UTC"}).status_code == 403
    assert user.post(f"/admin/centres/{centre_id}/scanners", data={}).status_code == 403
    assert user.post(f"/admin/centres/{centre_id}/slots", data={}).status_code == 403
    assert count(db_session, Organization, Organization.ae_title == "XRAY") == 0
    with pytest.raises(Forbidden):
        create_centre(db_session, demo.users[role], CentreDetails("X", "XRAY", "UTC"))


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    ("", "required"), ("    ", "not only spaces"), ("A" * 17, "at most 16"), ("CT\\1", "backslash"),
    ("CT\x011", "control or non-ASCII"), ("CT\t1", "control or non-ASCII"), ("RÖNTGEN", "control or non-ASCII"),
])
def test_invalid_ae_titles_are_refused_and_nothing_is_written(
    db_session: Session, demo: DemoSeed, value: str, message: str
) -> None:
    before = count(db_session, Organization)
    with pytest.raises(InvalidInput, match=message):
        create_centre(db_session, demo.users["admin"], CentreDetails("Bad AE", value, "UTC"))
    centre = berlin_centre(db_session, demo.users["admin"])
    with pytest.raises(InvalidInput, match=message):
        ct_scanner(db_session, demo.users["admin"], centre, station=value)
    assert count(db_session, Organization) == before + 1 and count(db_session, Schedule, Schedule.organization_id == centre.id) == 0


def test_ae_titles_are_stripped_of_spaces_and_keep_their_case() -> None:
    assert valid_ae_title("  ct_room 1  ") == "ct_room 1"
    assert valid_ae_title("A" * 16) == "A" * 16


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe", "../etc/passwd", "", "UTC+2"])
def test_unknown_time_zones_are_refused(db_session: Session, demo: DemoSeed, zone: str) -> None:
    before = count(db_session, Organization)
    with pytest.raises(InvalidInput, match="not an IANA time zone"):
        create_centre(db_session, demo.users["admin"], CentreDetails("Bad zone", "BADZONE", zone))
    assert count(db_session, Organization) == before


def test_duplicate_ae_titles_are_a_clear_conflict(db_session: Session, demo: DemoSeed) -> None:
    admin = demo.users["admin"]
    with pytest.raises(Conflict, match="already used by Riverside Imaging Centre"):
        create_centre(db_session, admin, CentreDetails("Copy", "riverside", "UTC"))  # seeded as RIVERSIDE
    centre = berlin_centre(db_session, admin)
    with pytest.raises(Conflict, match="already used by Riverside Imaging Centre"):
        update_centre(db_session, admin, centre.id, CentreDetails("Berlin Imaging", "RIVERSIDE", "UTC"))
    # The seeded CT1 is active: a second station with that title would receive its worklist.
    with pytest.raises(Conflict, match="station AE title 'ct1' is already used by the active scanner"):
        ct_scanner(db_session, admin, centre, station="ct1")
    with pytest.raises(InvalidInput, match="modality 'XX'"):
        add_scanner(db_session, admin, centre.id, ScannerDetails("X", "XX", "Room", "BERLINXX"))
    assert count(db_session, Schedule, Schedule.organization_id == centre.id) == 0
    renamed = update_centre(db_session, admin, centre.id, CentreDetails(" Berlin Mitte ", "BERLINIMG", "UTC"))
    assert (renamed.name, renamed.timezone) == ("Berlin Mitte", "UTC")


def test_slot_openings_are_validated(db_session: Session, demo: DemoSeed) -> None:
    admin = demo.users["admin"]
    centre = berlin_centre(db_session, admin)
    scanner = ct_scanner(db_session, admin, centre)
    opening = tomorrow_opening()
    for bad, message in [
        (tomorrow_opening(last_day=opening.first_day + timedelta(days=90)), "91 days; at most 90"),
        (tomorrow_opening(last_day=opening.first_day - timedelta(days=1)), "before it starts"),
        (tomorrow_opening(closes=time(9, 0)), "must be after opening time"),
        (tomorrow_opening(weekdays=frozenset()), "at least one day"),
        (tomorrow_opening(slot_minutes=2), "5 to 480 minutes"),
        (tomorrow_opening(opens=time(9, 0), closes=time(9, 20)), "hold no slot"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            open_slots(db_session, admin, centre.id, scanner.id, bad)
    assert slot_starts(db_session, scanner) == []
    with pytest.raises(DomainError, match="does not exist"):
        open_slots(db_session, admin, demo.imaging_centre.id, scanner.id, opening)  # another centre's scanner


# ---------------------------------------------------------------------------------------------
# Slots on the local calendar
# ---------------------------------------------------------------------------------------------


def test_slots_follow_the_local_clock_across_the_autumn_change(db_session: Session, demo: DemoSeed) -> None:
    admin = demo.users["admin"]
    scanner = ct_scanner(db_session, admin, berlin_centre(db_session, admin))
    sunday = next_change_sunday(10)  # Berlin: CEST (UTC+2) until 03:00 that night, then CET (UTC+1)
    saturday, monday = sunday - timedelta(days=1), sunday + timedelta(days=1)
    opening = SlotOpening(saturday, monday, EVERY_DAY, time(8, 0), time(10, 0), 60)
    result = open_slots(db_session, admin, scanner.organization_id, scanner.id, opening)
    assert (result.created, result.skipped_overlapping, result.skipped_past) == (6, 0, 0)

    def utc(day: date, hour: int) -> datetime:
        return datetime.combine(day, time(hour), tzinfo=UTC)

    assert slot_starts(db_session, scanner) == [
        utc(saturday, 6), utc(saturday, 7), utc(sunday, 7), utc(sunday, 8), utc(monday, 7), utc(monday, 8)
    ]
    again = open_slots(db_session, admin, scanner.organization_id, scanner.id, opening)
    assert (again.created, again.skipped_overlapping) == (0, 6)
    # Different lengths overlap too; longer hours add only what is new.
    half_hours = SlotOpening(saturday, monday, EVERY_DAY, time(8, 0), time(11, 0), 30)
    longer = open_slots(db_session, admin, scanner.organization_id, scanner.id, half_hours)
    assert (longer.created, longer.skipped_overlapping) == (6, 12)
    assert len(slot_starts(db_session, scanner)) == 12


def test_slots_follow_the_local_clock_across_the_spring_change(db_session: Session, demo: DemoSeed) -> None:
    admin = demo.users["admin"]
    scanner = ct_scanner(db_session, admin, berlin_centre(db_session, admin))
    sunday = next_change_sunday(3)  # CET (UTC+1) until 02:00, then CEST (UTC+2)
    opening = SlotOpening(sunday - timedelta(days=1), sunday, EVERY_DAY, time(8, 0), time(8, 30), 30)
    open_slots(db_session, admin, scanner.organization_id, scanner.id, opening)
    assert slot_starts(db_session, scanner) == [
        datetime.combine(sunday - timedelta(days=1), time(7, 0), tzinfo=UTC),
        datetime.combine(sunday, time(6, 0), tzinfo=UTC),
    ]


def test_a_night_across_the_change_has_real_length_slots(db_session: Session, demo: DemoSeed) -> None:
    admin = demo.users["admin"]
    scanner = ct_scanner(db_session, admin, berlin_centre(db_session, admin))
    sunday = next_change_sunday(10)
    # 00:00 to 06:00 local on the night the clocks go back is seven real hours.
    open_slots(db_session, admin, scanner.organization_id, scanner.id,
               SlotOpening(sunday, sunday, EVERY_DAY, time(0, 0), time(6, 0), 60))
    starts = slot_starts(db_session, scanner)
    assert len(starts) == 7 and starts[0] == datetime.combine(sunday - timedelta(days=1), time(22), tzinfo=UTC)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(starts))


def test_slots_in_the_past_are_skipped(db_session: Session, demo: DemoSeed) -> None:
    admin = demo.users["admin"]
    centre = create_centre(db_session, admin, CentreDetails("UTC centre", "UTCIMG", "UTC"))
    scanner = ct_scanner(db_session, admin, centre)
    today = utcnow().date()
    result = open_slots(db_session, admin, centre.id, scanner.id,
                        SlotOpening(today, today, EVERY_DAY, time(0, 0), time(0, 0), 60))
    assert result.created + result.skipped_past == 24 and result.skipped_past >= 1
    assert all(start >= utcnow() - timedelta(minutes=1) for start in slot_starts(db_session, scanner))


# ---------------------------------------------------------------------------------------------
# Downstream: referral, booking, blocking, worklist, deactivation
# ---------------------------------------------------------------------------------------------


def booked_in_new_centre(db_session: Session, demo: DemoSeed) -> tuple[Organization, Schedule, Appointment, User]:
    """A new centre with a CT scanner and tomorrow's slots, and the demo patient booked into one
    through the ordinary referral and booking services."""
    admin = demo.users["admin"]
    centre = berlin_centre(db_session, admin)
    scanner = ct_scanner(db_session, admin, centre)
    open_slots(db_session, admin, centre.id, scanner.id, tomorrow_opening())
    staff = User(username="berlin-staff", password_hash="x", role=Role.IMAGING_STAFF, organization_id=centre.id)
    db_session.add(staff)
    db_session.flush()
    referral = create_referral(db_session, demo.users["clinician"], ReferralRequest(
        patient_id=demo.patient.id, performer_organization_id=centre.id, modality="CT", body_part="CHEST",
        procedure_description="CT chest", reason="cough", access_reason="new patient"))
    accept_referral(db_session, staff, referral.id)
    offered = free_slots(db_session, centre.id, "CT", utcnow(), utcnow() + timedelta(days=14))
    assert len(offered) == 6 and {s.schedule_id for s in offered} == {scanner.id}
    appointment = book_appointment(db_session, demo.users["patient"], referral.id, offered[1].id)
    return centre, scanner, appointment, staff


def test_a_new_centre_is_offered_on_the_referral_form(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    centre = berlin_centre(db_session, demo.users["admin"])
    db_session.commit()
    sign_in(client, "clinician")
    form = client.get("/referrals/new").get_data(as_text=True)
    assert f'<option value="{centre.id}"' in form and "Berlin Imaging" in form


def test_a_new_centre_books_and_its_station_gets_the_worklist(db_session: Session, demo: DemoSeed) -> None:
    centre, scanner, appointment, _ = booked_in_new_centre(db_session, demo)
    assert appointment.status is AppointmentStatus.BOOKED
    day = appointment.start.strftime("%Y%m%d")
    items = list(find_worklist_items(db_session, query(station="berlinct1", date=day)))
    assert [str(i.AccessionNumber) for i in items] == [referral_summary(db_session, appointment.referral_id).accession_number]
    step = items[0].ScheduledProcedureStepSequence[0]
    assert step.ScheduledStationAETitle == "BERLINCT1" and step.Modality == "CT"
    assert list(find_worklist_items(db_session, query(station="CT1", date=day))) == []  # the seeded station


def test_blocking_leaves_booked_slots_alone_and_release_undoes_it(db_session: Session, demo: DemoSeed) -> None:
    centre, scanner, appointment, _ = booked_in_new_centre(db_session, demo)
    admin = demo.users["admin"]
    day = appointment.start.date()  # 09:00-12:00 Berlin is the same UTC date
    blocked = set_slots_blocked(db_session, admin, centre.id, scanner.id, SlotWindow(day, day))
    assert (blocked.changed, blocked.booked_untouched) == (5, 1)
    statuses = dict(db_session.execute(select(Slot.id, Slot.status).where(Slot.schedule_id == scanner.id)).all())
    assert statuses.pop(appointment.slot_id) is SlotStatus.BUSY
    assert set(statuses.values()) == {SlotStatus.BLOCKED}
    assert db_session.get(Appointment, appointment.id).status is AppointmentStatus.BOOKED
    assert free_slots(db_session, centre.id, "CT", utcnow(), utcnow() + timedelta(days=14)) == []
    # A maintenance window 10:15-10:45 local frees again only the slots it overlaps.
    window = SlotWindow(day, day, time(10, 15), time(10, 45))
    released = set_slots_blocked(db_session, admin, centre.id, scanner.id, window, blocked=False)
    assert released.changed == 2
    last_two = audit_descriptions(db_session, "Slot")[-2:]
    assert last_two[0].startswith(f"scanner {scanner.id}: blocked 5 slots ")
    assert last_two[1].startswith(f"scanner {scanner.id}: released 2 slots ")


def audit_descriptions(db_session: Session, entity_type: str) -> list[str]:
    return [str(d) for d in db_session.scalars(
        select(AuditEvent.description).where(AuditEvent.entity_type == entity_type).order_by(AuditEvent.id))]


def test_a_scanner_with_upcoming_appointments_is_not_deactivated(db_session: Session, demo: DemoSeed) -> None:
    centre, scanner, appointment, _ = booked_in_new_centre(db_session, demo)
    admin = demo.users["admin"]
    with pytest.raises(Conflict, match="1 upcoming appointment; move or cancel it first"):
        set_scanner_active(db_session, admin, centre.id, scanner.id, False)
    assert scanner.active
    cancel_appointment(db_session, demo.users["patient"], appointment.id)
    set_scanner_active(db_session, admin, centre.id, scanner.id, False)
    assert not scanner.active
    assert free_slots(db_session, centre.id, "CT", utcnow(), utcnow() + timedelta(days=14)) == []
    # A slot id known from before is not bookable either.
    known_slot = db_session.scalars(select(Slot.id).where(Slot.schedule_id == scanner.id)).first()
    assert appointment.referral_id is not None and known_slot is not None
    with pytest.raises(Conflict, match="out of service"):
        book_appointment(db_session, demo.users["patient"], appointment.referral_id, known_slot)
    with pytest.raises(Conflict, match="deactivated"):
        open_slots(db_session, admin, centre.id, scanner.id, tomorrow_opening())
    # Its station title may be reused while it is out of service; then it cannot come back as is.
    other = add_scanner(db_session, admin, centre.id, ScannerDetails("CT scanner B", "CT", "Room 2", "BERLINCT1"))
    with pytest.raises(Conflict, match="already used by the active scanner 'CT scanner B'"):
        set_scanner_active(db_session, admin, centre.id, scanner.id, True)
    set_scanner_active(db_session, admin, centre.id, other.id, False)
    set_scanner_active(db_session, admin, centre.id, scanner.id, True)
    assert scanner.active and len(free_slots(db_session, centre.id, "CT", utcnow(), utcnow() + timedelta(days=14))) == 6
    assert [d for d in audit_descriptions(db_session, "Schedule") if d in ("deactivated", "reactivated")] == [
        "deactivated", "deactivated", "reactivated"]


def test_deactivation_refusal_is_shown_on_the_page(client: FlaskClient, db_session: Session, demo: DemoSeed) -> None:
    centre, scanner, _, _ = booked_in_new_centre(db_session, demo)
    db_session.commit()
    sign_in(client, "admin")
    page = client.get(f"/admin/centres/{centre.id}").get_data(as_text=True)
    row = page.split(f'data-schedule-id="{scanner.id}"')[1].split("</tr>")[0]
    assert "Take CT scanner A out of service" in row and re.findall(r'class="num">(\d+)<', row) == ["5", "0", "1"]
    refused = client.post(f"/admin/centres/{centre.id}/scanners/{scanner.id}/active",
                          data={"csrf_token": csrf_token_of(page), "active": "0"}, follow_redirects=True)
    assert "1 upcoming appointment" in refused.get_data(as_text=True)
    db_session.refresh(scanner)
    assert scanner.active


def test_taking_a_scanner_out_of_service_waits_for_a_booking_in_flight(live_database: str, tmp_path: Path) -> None:
    """Without the lock the deactivation would not see the uncommitted booking and both would
    succeed: a patient booked on a scanner that is out of service."""
    app = make_test_app(live_database, tmp_path)
    db = get_db(app)
    with app.app_context(), db.transaction() as session:
        demo = seed_demo(session, app)
        referral_id = make_referral(session, demo, ReferralStatus.ACCEPTED).id
        schedule = session.scalars(select(Schedule).where(Schedule.organization_id == demo.imaging_centre.id)).one()
        slot_id = session.scalars(select(Slot.id).where(Slot.schedule_id == schedule.id, Slot.start > utcnow())
                                  .order_by(Slot.start)).first()
        ids = {"centre": demo.imaging_centre.id, "schedule": schedule.id, "staff": demo.users["imaging_staff"].id,
               "admin": demo.users["admin"].id}
    booked, commit_booking = threading.Event(), threading.Event()
    outcomes: dict[str, str] = {}

    def book() -> None:
        with app.app_context():
            session = db.session()
            try:
                book_appointment(session, session.get(User, ids["staff"]), referral_id, slot_id or 0)
                booked.set()
                commit_booking.wait(10)
                session.commit()
                outcomes["booking"] = "booked"
            finally:
                booked.set()
                session.close()

    def deactivate() -> None:
        booked.wait(10)
        with app.app_context():
            session = db.session()
            try:
                set_scanner_active(session, session.get(User, ids["admin"]), ids["centre"], ids["schedule"], False)
                session.commit()
                outcomes["deactivation"] = "deactivated"
            except Conflict as exc:
                session.rollback()
                outcomes["deactivation"] = exc.message
            finally:
                session.close()

    threads = [threading.Thread(target=book), threading.Thread(target=deactivate)]
    for t in threads:
        t.start()
    booked.wait(10)
    threads[1].join(timeout=0.7)
    assert "deactivation" not in outcomes, "the deactivation did not wait for the booking's lock"
    commit_booking.set()
    for t in threads:
        t.join(timeout=30)
    assert outcomes["booking"] == "booked"
    assert "1 upcoming appointment" in outcomes["deactivation"]
    with db.session() as session:
        assert session.get(Schedule, ids["schedule"]).active


def test_a_scanner_is_corrected_but_keeps_its_modality_while_booked(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    centre, scanner, appointment, _ = booked_in_new_centre(db_session, demo)
    admin = demo.users["admin"]
    update_scanner(db_session, admin, centre.id, scanner.id,
                   ScannerDetails("CT 1 (Siemens)", "CT", "Room 2", "berlinct9"))
    assert (scanner.name, scanner.room, scanner.station_ae_title) == ("CT 1 (Siemens)", "Room 2", "berlinct9")
    day = appointment.start.strftime("%Y%m%d")
    assert len(list(find_worklist_items(db_session, query(station="BERLINCT9", date=day)))) == 1
    with pytest.raises(Conflict, match="1 upcoming appointment booked as CT"):
        update_scanner(db_session, admin, centre.id, scanner.id, ScannerDetails("CT 1", "MR", "Room 2", "BERLINCT9"))
    assert scanner.modality == "CT"
    db_session.commit()

    # On the page: a refused correction comes back in that scanner's form with what was typed.
    sign_in(client, "admin")
    url = f"/admin/centres/{centre.id}"
    token = csrf_token_of(client.get(url).get_data(as_text=True))
    refused = client.post(f"{url}/scanners/{scanner.id}", data={
        "csrf_token": token, "name": "CT one", "modality": "CT", "room": "Room 7", "station_ae_title": "BAD\\AE"})
    page = refused.get_data(as_text=True)
    assert refused.status_code == 422 and "backslash" in page
    edit = page.split(f'id="edit-name-{scanner.id}"')[1].split("</form>")[0]
    assert 'value="Room 7"' in edit and 'value="BAD\\AE"' in edit
    db_session.refresh(scanner)
    assert (scanner.name, scanner.room) == ("CT 1 (Siemens)", "Room 2")
    saved = client.post(f"{url}/scanners/{scanner.id}", data={
        "csrf_token": token, "name": "CT one", "modality": "CT", "room": "Room 7", "station_ae_title": "BERLINCT9"},
        follow_redirects=True)
    assert "CT one saved (CT, Room 7, station AE title BERLINCT9)." in saved.get_data(as_text=True)
    assert audit_descriptions(db_session, "Schedule")[-1] == "changed name, room, station_ae_title"
