"""Accepting referrals, booking slots and the worklist."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.models import User
from hospital.seed import DEMO_PASSWORD, DemoSeed, seed_demo
from imaging_orders.models import Appointment, Slot, SlotStatus
from imaging_orders.service import book_appointment
from referrals.models import Referral, ReferralStatus
from tests.conftest import make_test_app
from tests.factories import make_referral


def accepted_referral(as_role: Any, demo: DemoSeed) -> dict[str, Any]:
    referral = as_role("clinician").post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "reason": "cough", "access_reason": "new patient"}).get_json()
    accepted = as_role("imaging_staff").post(f"/api/referrals/{referral['id']}/accept")
    assert accepted.status_code == 200
    return accepted.get_json()


def test_accepting_assigns_an_accession_number(as_role: Any, demo: DemoSeed) -> None:
    accepted = accepted_referral(as_role, demo)
    assert accepted["status"] == "accepted"
    assert accepted["accession_number"].startswith("ACC") and len(accepted["accession_number"]) <= 16
    # Accepting twice is harmless; rejecting after acceptance is not allowed.
    assert as_role("imaging_staff").post(f"/api/referrals/{accepted['id']}/accept").status_code == 200
    assert as_role("imaging_staff").post(f"/api/referrals/{accepted['id']}/reject", json={"reason": "x"}).status_code == 409


def test_patient_books_a_slot_and_it_appears_on_the_worklist(as_role: Any, demo: DemoSeed) -> None:
    accepted = accepted_referral(as_role, demo)
    patient = as_role("patient")
    slots = patient.get(f"/api/slots?organization_id={demo.imaging_centre.id}&modality=CT").get_json()
    booked = patient.post("/api/appointments", json={"referral_id": accepted["id"], "slot_id": slots[0]["id"]})
    assert booked.status_code == 201
    appointment = booked.get_json()
    assert appointment["start"] == slots[0]["start"]
    worklist = as_role("imaging_staff").get(f"/api/worklist?date={appointment['start'][:10]}").get_json()
    entry = next(e for e in worklist["entries"] if e["referral_id"] == accepted["id"])
    assert entry["accession_number"] == accepted["accession_number"]
    assert entry["station_ae_title"] == "CT1" and entry["patient"]["mrn"] == demo.patient.mrn
    assert as_role("patient").get("/api/worklist").status_code == 403


def test_booking_a_taken_slot_is_a_conflict_and_changes_nothing(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    first = accepted_referral(as_role, demo)
    second = accepted_referral(as_role, demo)
    slot_id = as_role("patient").get(f"/api/slots?organization_id={demo.imaging_centre.id}").get_json()[0]["id"]
    assert as_role("patient").post("/api/appointments", json={"referral_id": first["id"], "slot_id": slot_id}).status_code == 201
    taken = as_role("clinician").post("/api/appointments", json={"referral_id": second["id"], "slot_id": slot_id})
    assert taken.status_code == 409
    assert "taken" in taken.get_json()["detail"]
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(Appointment)) == 1
    assert db_session.get(Referral, second["id"]).status is ReferralStatus.ACCEPTED


def test_unaccepted_referral_cannot_be_booked(as_role: Any, demo: DemoSeed) -> None:
    referral = as_role("clinician").post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "reason": "cough", "access_reason": "new patient"}).get_json()
    slot_id = as_role("patient").get(f"/api/slots?organization_id={demo.imaging_centre.id}").get_json()[0]["id"]
    response = as_role("patient").post("/api/appointments", json={"referral_id": referral["id"], "slot_id": slot_id})
    assert response.status_code == 409 and "accepted first" in response.get_json()["detail"]


def test_two_simultaneous_bookings_of_the_last_slot_one_wins(live_database: str, tmp_path: Any) -> None:
    app = make_test_app(live_database, tmp_path)
    db = get_db(app)
    with app.app_context():
        with db.transaction() as session:
            demo = seed_demo(session, app)
            referrals = [make_referral(session, demo, ReferralStatus.ACCEPTED).id for _ in range(2)]
            slot_id = session.scalars(select(Slot.id).where(Slot.start > demo.patient.created_at).order_by(Slot.start)).first()
            user_id = demo.users["imaging_staff"].id
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def book(referral_id: int) -> None:
        with app.app_context():
            session = db.session()
            try:
                user = session.get(User, user_id)
                barrier.wait()
                book_appointment(session, user, referral_id, slot_id)
                session.commit()
                outcomes.append("booked")
            except Exception as exc:  # noqa: BLE001 - the loser's error is what we assert on
                session.rollback()
                outcomes.append(type(exc).__name__)
            finally:
                session.close()

    threads = [threading.Thread(target=book, args=(rid,)) for rid in referrals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["Conflict", "booked"]
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Appointment).where(Appointment.slot_id == slot_id)) == 1
        assert session.get(Slot, slot_id).status is SlotStatus.BUSY


def test_move_and_cancel_an_appointment(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    accepted = accepted_referral(as_role, demo)
    patient = as_role("patient")
    first, second = patient.get(f"/api/slots?organization_id={demo.imaging_centre.id}&modality=CT").get_json()[:2]
    booked = patient.post("/api/appointments", json={"referral_id": accepted["id"], "slot_id": first["id"]}).get_json()
    moved = patient.post(f"/api/appointments/{booked['id']}/move", json={"slot_id": second["id"]})
    assert moved.status_code == 200 and moved.get_json()["start"] == second["start"]
    free_ids = {s["id"] for s in patient.get(f"/api/slots?organization_id={demo.imaging_centre.id}").get_json()}
    assert first["id"] in free_ids and second["id"] not in free_ids
    assert as_role("patient2").post(f"/api/appointments/{booked['id']}/cancel").status_code == 403
    cancelled = patient.post(f"/api/appointments/{booked['id']}/cancel").get_json()
    assert cancelled["status"] == "cancelled" and cancelled["slot_id"] is None
    assert patient.post(f"/api/appointments/{booked['id']}/move", json={"slot_id": first["id"]}).status_code == 409
    db_session.expire_all()
    assert db_session.get(Referral, accepted["id"]).status is ReferralStatus.ACCEPTED
    # The freed slot can be booked again for the same referral.
    again = patient.post("/api/appointments", json={"referral_id": accepted["id"], "slot_id": second["id"]})
    assert again.status_code == 201


def test_fhir_update_moves_then_cancels_an_appointment(as_role: Any, demo: DemoSeed) -> None:
    accepted = accepted_referral(as_role, demo)
    patient = as_role("patient")
    first, second = patient.get(f"/api/slots?organization_id={demo.imaging_centre.id}&modality=CT").get_json()[:2]
    booked = patient.post("/api/appointments", json={"referral_id": accepted["id"], "slot_id": first["id"]}).get_json()
    url = f"/fhir/Appointment/{booked['id']}"
    resource = patient.get(url).get_json()
    moved = patient.put(url, json={**resource, "slot": [{"reference": f"Slot/{second['id']}"}]},
                        headers={"If-Match": patient.get(url).headers["ETag"]})
    assert moved.status_code == 200, moved.get_data(as_text=True)
    assert patient.get(url).get_json()["start"][:16] == second["start"][:16]
    refused = patient.put(url, json={**patient.get(url).get_json(), "status": "fulfilled"})
    assert refused.status_code == 422
    cancelled = patient.put(url, json={**patient.get(url).get_json(), "status": "cancelled"})
    assert cancelled.status_code == 200 and patient.get(url).get_json()["status"] == "cancelled"


def test_patient_moves_and_cancels_on_the_appointments_page(client: Any, as_role: Any, demo: DemoSeed) -> None:
    accepted = accepted_referral(as_role, demo)
    first, second = as_role("patient").get(f"/api/slots?organization_id={demo.imaging_centre.id}&modality=CT").get_json()[:2]
    booked = as_role("patient").post("/api/appointments", json={"referral_id": accepted["id"], "slot_id": first["id"]}).get_json()
    token = client.get("/login").get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/login", data={"username": "patient", "password": DEMO_PASSWORD, "csrf_token": token})
    html = client.get("/appointments").get_data(as_text=True)
    token = html.split('name="csrf_token" value="')[1].split('"')[0]
    form = {"csrf_token": token, "appointment_id": booked["id"], "slot_id": second["id"]}
    # Moving and cancelling each ask first (naming the examination and the time) and change nothing
    # until agreed to.
    asked = client.post("/appointments", data={**form, "action": "move"}).get_data(as_text=True)
    assert "Move your CT" in asked and 'name="confirmed" value="yes"' in asked
    assert as_role("patient").get(f"/fhir/Appointment/{booked['id']}").get_json()["slot"][0]["reference"] == f"Slot/{first['id']}"
    moved = client.post("/appointments", data={**form, "action": "move", "confirmed": "yes"}, follow_redirects=True)
    assert "Appointment moved to" in moved.get_data(as_text=True)
    asked = client.post("/appointments", data={**form, "action": "cancel"}).get_data(as_text=True)
    assert "Cancel your CT" in asked and 'name="confirmed" value="yes"' in asked
    assert as_role("patient").get(f"/fhir/Appointment/{booked['id']}").get_json()["status"] == "booked"
    cancelled = client.post("/appointments", data={**form, "action": "cancel", "confirmed": "yes"},
                            follow_redirects=True)
    assert "Appointment cancelled" in cancelled.get_data(as_text=True)
    assert as_role("patient").get(f"/fhir/Appointment/{booked['id']}").get_json()["status"] == "cancelled"
