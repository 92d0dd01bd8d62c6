"""Order control codes after the new order (ORC-1): CA and DC withdraw an order, XO changes it.
Sent over MLLP to the listener, as the placer's system would."""

from __future__ import annotations

import re

from sqlalchemy import select

from hospital.db import get_db
from hospital.models import AuditEvent, User
from imaging_orders.models import Appointment, AppointmentStatus
from imaging_orders.public import book_referral_slot, free_slots_for_referral
from integration.models import PlacerOrder
from referrals.models import Referral, ReferralStatus
from referrals.public import accept
from tests.integration.test_hl7_listener import Node, node, orm, send  # noqa: F401 - the fixture

__all__ = ["node"]


def control(code: str, control_id: str, *, placer: str = "PL-1001", obr: dict[int, str] | None = None) -> str:
    """`orm()` with ORC-1 set to `code` (and OBR fields replaced)."""
    message = orm(control_id, placer=placer).replace("ORC|NW|", f"ORC|{code}|")
    if obr:
        segments = message.rstrip("\r").split("\r")
        fields = segments[3].split("|")
        fields += [""] * (max(obr) + 1 - len(fields))
        for number, value in obr.items():
            fields[number] = value
        segments[3] = "|".join(fields)
        message = "\r".join(segments) + "\r"
    return message


def referral_of(node: Node, placer: str = "PL-1001") -> Referral:
    with get_db(node.app).transaction() as session:
        order = session.scalar(select(PlacerOrder).where(PlacerOrder.placer_order_number == placer))
        assert order is not None
        referral = session.get(Referral, order.referral_id)
        assert referral is not None
        session.expunge(referral)
        return referral


def test_a_cancel_request_withdraws_the_order_once(node: Node) -> None:
    send(node, orm("CTRL-1"))

    ack = send(node, control("CA", "CTRL-2"))

    assert str(ack["MSA.F1"]) == "AA", str(ack)
    assert "cancelled" in str(ack["MSA.F3"])
    referral = referral_of(node)
    assert referral.status is ReferralStatus.CANCELLED
    assert "HL7" in (referral.status_reason or "")
    # Sent again under a new control id: still cancelled, still AA, nothing else changes.
    again = send(node, control("CA", "CTRL-3"))
    assert str(again["MSA.F1"]) == "AA" and "already cancelled" in str(again["MSA.F3"])
    with get_db(node.app).transaction() as session:
        cancellations = session.scalars(select(AuditEvent).where(
            AuditEvent.entity_type == "ServiceRequest", AuditEvent.entity_id == str(referral.id),
            AuditEvent.description == "cancelled")).all()
        assert len(cancellations) == 1


def test_discontinue_of_a_booked_order_frees_its_slot(node: Node) -> None:
    send(node, orm("CTRL-1"))
    referral = referral_of(node)
    with node.app.app_context(), get_db(node.app).transaction() as session:
        accept(session, referral.id, "ACC-HL7-1")
        clinician = session.scalar(select(User).where(User.practitioner_id == node.clinician_practitioner_id))
        assert clinician is not None
        offer = free_slots_for_referral(session, referral.id)[0]
        appointment_id = book_referral_slot(session, clinician, referral.id, offer.slot_id).appointment_id

    ack = send(node, control("DC", "CTRL-2"))

    assert str(ack["MSA.F1"]) == "AA", str(ack)
    with get_db(node.app).transaction() as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None and row.status is AppointmentStatus.CANCELLED and row.slot_id is None


def test_a_change_request_updates_what_may_change(node: Node) -> None:
    send(node, orm("CTRL-1"))

    change = control("XO", "CTRL-2", obr={31: "^Haemoptysis, now with fever", 4: "CTCHEST^CT chest without contrast^L"})
    ack = send(node, change.replace("^^^^^S|", "^^^^^R|"))

    assert str(ack["MSA.F1"]) == "AA", str(ack)
    referral = referral_of(node)
    assert referral.reason == "Haemoptysis, now with fever"
    assert referral.procedure_description == "CT chest without contrast"
    assert referral.priority.value == "routine"
    assert referral.status is ReferralStatus.ACTIVE


def test_a_change_of_modality_is_refused_as_a_new_order(node: Node) -> None:
    send(node, orm("CTRL-1"))

    ack = send(node, control("XO", "CTRL-2", obr={24: "MR"}))

    assert str(ack["MSA.F1"]) == "AE"
    assert "modality" in str(ack["MSA.F3"]) and "new order" in str(ack["MSA.F3"])
    assert referral_of(node).modality == "CT"


def test_changes_to_unknown_or_performed_orders_are_refused(node: Node) -> None:
    unknown = send(node, control("CA", "CTRL-9", placer="NO-SUCH"))
    assert str(unknown["MSA.F1"]) == "AE" and str(unknown["ERR.F3.R1.C1"]) == "204"

    send(node, orm("CTRL-1"))
    referral = referral_of(node)
    with get_db(node.app).transaction() as session:
        row = session.get(Referral, referral.id)
        assert row is not None
        row.status = ReferralStatus.COMPLETED
    for code, control_id in (("CA", "CTRL-2"), ("XO", "CTRL-3")):
        ack = send(node, control(code, control_id))
        assert str(ack["MSA.F1"]) == "AE", str(ack)
        assert re.search(r"a referral that is .+ cannot be (cancelled|changed)", str(ack["MSA.F3"])), str(ack)
    assert referral_of(node).status is ReferralStatus.COMPLETED


def test_an_unsupported_control_code_is_named(node: Node) -> None:
    send(node, orm("CTRL-1"))
    ack = send(node, control("HD", "CTRL-2"))
    assert str(ack["MSA.F1"]) == "AE" and str(ack["ERR.F3.R1.C1"]) == "103"
    assert "HD" in str(ack["MSA.F3"]) and "NW, CA, DC, XO" in str(ack["MSA.F3"])
