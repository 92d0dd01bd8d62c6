"""Checking a patient in from the worklist page: staff of the centre only, booked -> arrived,
audited, and a second check-in changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.errors import Conflict, Forbidden
from hospital.models import AuditEvent, Practitioner
from hospital.seed import DemoSeed
from imaging_orders.models import AppointmentStatus, Schedule
from imaging_orders.service import check_in_appointment
from tests.imaging_orders.factories import Centre, make_centre, make_order
from tests.referrals.test_referral_pages import csrf_token_of, sign_in


def demo_centre(db_session: Session, demo: DemoSeed) -> Centre:
    requester = Practitioner(family_name="Hopper", given_name="Grace", organization_id=demo.clinic.id)
    schedule = Schedule(organization_id=demo.imaging_centre.id, name="CT check-in test", modality="CT",
                        room="Room 9", station_ae_title="CHKIN1")
    db_session.add_all([requester, schedule])
    db_session.flush()
    return Centre(demo.imaging_centre, requester, demo.users["imaging_staff"], schedule)


def check_in_audits(db_session: Session, appointment_id: int) -> int:
    return db_session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.entity_type == "Appointment", AuditEvent.entity_id == str(appointment_id),
        AuditEvent.description == "checked in"))


def test_staff_check_in_a_booked_patient_from_the_worklist(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    start = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) + timedelta(days=1)
    order = make_order(db_session, demo_centre(db_session, demo), start=start)
    db_session.commit()
    appointment = order.appointment
    assert appointment is not None
    sign_in(client, "imaging_staff")
    url = f"/worklist?date={start.date().isoformat()}"
    page = client.get(url).get_data(as_text=True)
    action = f"/worklist/appointments/{appointment.id}/check-in"
    assert f'action="{action}"' in page and ">Check in</button>" in page
    form = {"csrf_token": csrf_token_of(page), "date": start.date().isoformat()}
    assert client.post(action, data={**form, "csrf_token": ""}).status_code == 403
    done = client.post(action, data=form)
    assert done.status_code == 302 and done.headers["Location"].endswith(url)
    db_session.refresh(appointment)
    assert appointment.status is AppointmentStatus.ARRIVED
    again = client.post(action, data=form, follow_redirects=True)
    assert "checked in" in again.get_data(as_text=True)
    assert f'action="{action}"' not in again.get_data(as_text=True)
    assert check_in_audits(db_session, appointment.id) == 1  # idempotent: one change, one audit row


def test_only_staff_of_the_appointments_centre_check_in(db_session: Session, demo: DemoSeed) -> None:
    other = make_centre(db_session)
    order = make_order(db_session, demo_centre(db_session, demo))
    assert order.appointment is not None
    for user in (other.user, demo.users["clinician"], demo.users["admin"]):
        with pytest.raises(Forbidden):
            check_in_appointment(db_session, user, order.appointment.id)
    assert order.appointment.status is AppointmentStatus.BOOKED
    cancelled = make_order(db_session, other, appointment_status=AppointmentStatus.CANCELLED)
    assert cancelled.appointment is not None
    with pytest.raises(Conflict, match="cancelled"):
        check_in_appointment(db_session, other.user, cancelled.appointment.id)


def test_the_worklist_follows_the_centres_calendar_and_filters_by_modality_and_room(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    demo.imaging_centre.timezone = "Europe/Berlin"
    ct = demo_centre(db_session, demo)
    mr = Schedule(organization_id=demo.imaging_centre.id, name="MR 1", modality="MR", room="Room 4",
                  station_ae_title="WLPMR1")
    db_session.add(mr)
    db_session.flush()
    # 00:30 in Berlin on the 24th (winter, UTC+1) is 23:30 UTC on the 23rd.
    late = make_order(db_session, ct, mrn="TZP-1", accession_number="TZP1", start=datetime(2031, 11, 23, 23, 30, tzinfo=UTC))
    brain = make_order(db_session, Centre(ct.organization, ct.requester, ct.user, mr), mrn="TZP-2",
                       accession_number="TZP2", start=datetime(2031, 11, 24, 9, 0, tzinfo=UTC))
    db_session.commit()
    sign_in(client, "imaging_staff")

    page = client.get("/worklist?date=2031-11-24").get_data(as_text=True)
    assert "TZP1" in page and "TZP2" in page
    assert ">00:30 CET</td>" in page and ">10:00 CET</td>" in page
    assert "TZP1" not in client.get("/worklist?date=2031-11-23").get_data(as_text=True)

    only_mr = client.get("/worklist?date=2031-11-24&modality=MR").get_data(as_text=True)
    assert "TZP2" in only_mr and "TZP1" not in only_mr and "(MR)" in only_mr
    assert '<option value="MR" selected>MR</option>' in only_mr  # the filter shows what it is set to
    only_room9 = client.get("/worklist?date=2031-11-24&room=Room+9").get_data(as_text=True)
    assert "TZP1" in only_room9 and "TZP2" not in only_room9
    api = client.get("/api/worklist?date=2031-11-24&room=Room+4").get_json()
    assert [e["accession_number"] for e in api["entries"]] == ["TZP2"]
    assert api["entries"][0]["local_start"] == "2031-11-24T10:00:00+01:00"
    assert api["entries"][0]["timezone"] == "Europe/Berlin"

    # Checking in keeps the filtered list the staff member was on.
    action = f"/worklist/appointments/{brain.appointment.id}/check-in"
    done = client.post(action, data={"csrf_token": csrf_token_of(only_mr), "date": "2031-11-24", "modality": "MR"})
    assert done.headers["Location"].endswith("/worklist?date=2031-11-24&modality=MR")
    assert late.appointment.status is AppointmentStatus.BOOKED
