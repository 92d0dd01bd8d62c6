"""An order withdrawn after it was booked leaves nothing behind on the centre's side: the
appointment is cancelled, its slot opens again, and the worklist (page and DICOM MWL) no longer
offers the examination to a modality."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from hospital.seed import DemoSeed
from imaging_orders.models import Appointment, AppointmentStatus, Slot, SlotStatus
from tests.imaging_orders.test_booking import accepted_referral


def booked(as_role: Any, demo: DemoSeed) -> tuple[dict[str, Any], dict[str, Any]]:
    referral = accepted_referral(as_role, demo)
    patient = as_role("patient")
    slots = patient.get(f"/api/slots?organization_id={demo.imaging_centre.id}&modality=CT").get_json()
    response = patient.post("/api/appointments", json={"referral_id": referral["id"], "slot_id": slots[0]["id"]})
    assert response.status_code == 201
    return referral, response.get_json()


def test_cancelling_a_booked_referral_cancels_its_appointment_and_frees_the_slot(
    as_role: Any, demo: DemoSeed, db_session: Session,
) -> None:
    referral, appointment = booked(as_role, demo)
    slot_id = appointment["slot_id"]

    cancelled = as_role("clinician").post(f"/api/referrals/{referral['id']}/cancel", json={"reason": "symptoms resolved"})

    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    db_session.expire_all()
    row = db_session.get(Appointment, appointment["id"])
    assert row is not None and row.status is AppointmentStatus.CANCELLED and row.slot_id is None
    slot = db_session.get(Slot, slot_id)
    assert slot is not None and slot.status is SlotStatus.FREE
    worklist = as_role("imaging_staff").get(f"/api/worklist?date={appointment['start'][:10]}").get_json()
    assert all(entry["referral_id"] != referral["id"] for entry in worklist["entries"])
    # The freed slot can be booked by someone else.
    other = accepted_referral(as_role, demo)
    again = as_role("patient").post("/api/appointments", json={"referral_id": other["id"], "slot_id": slot_id})
    assert again.status_code == 201
