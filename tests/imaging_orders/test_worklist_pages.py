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
