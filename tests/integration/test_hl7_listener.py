"""HL7 v2 over MLLP against the listener `hospital hl7` runs, started here in a thread on the run's
database (real commits), driven by python-hl7's own MLLP client over TCP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hl7
import pytest
from flask import Flask
from hl7.client import MLLPClient
from sqlalchemy import func, select

from hospital.db import get_db
from hospital.models import AuditEvent, Patient
from hospital.seed import seed_demo
from integration.hl7_inbound import replay_message
from integration.mllp import Hl7Listener, start_hl7_listener
from integration.models import CodeKind, Hl7CodeMap, Hl7Message, InboundStatus, PlacerOrder
from referrals.models import Referral
from tests.conftest import make_test_app

MAX_BYTES = 64 * 1024


@dataclass
class Node:
    app: Flask
    listener: Hl7Listener
    clinician_practitioner_id: int
    centre_id: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def node(live_database: str, tmp_path: Path) -> Iterator[Node]:
    app = make_test_app(live_database, tmp_path / "instance", HL7_MAX_MESSAGE_BYTES=MAX_BYTES)
    with app.app_context(), get_db(app).transaction() as session:
        seeded = seed_demo(session, app)
        practitioner_id = seeded.users["clinician"].practitioner_id
        centre_id = seeded.imaging_centre.id
        assert practitioner_id is not None
        session.add_all([Hl7CodeMap(kind=CodeKind.CENTRE, code="RIVERSIDE", target_id=centre_id),
                         Hl7CodeMap(kind=CodeKind.PROVIDER, code="P123", target_id=practitioner_id)])
    listener = start_hl7_listener(app, host="127.0.0.1", port=free_port(), block=False)
    try:
        yield Node(app, listener, practitioner_id, centre_id)
    finally:
        listener.stop()
        get_db(app).engine.dispose()


def send(node: Node, message: str | bytes) -> hl7.Message:
    """Send with python-hl7's MLLP client; the ACK parsed."""
    with MLLPClient("127.0.0.1", node.listener.port) as client:
        client.socket.settimeout(10)
        answer = client.send_message(message)
        while not answer.endswith(b"\x1c\x0d"):
            answer += client.socket.recv(65536)
    return hl7.parse(answer.strip(b"\x0b\x1c\x0d").decode("utf-8"))


def orm(control_id: str = "CTRL-1", *, placer: str = "PL-1001", provider: str = "P123", mrn: str = "EHR-555",
        version: str = "2.5") -> str:
    return "\r".join([
        f"MSH|^~\\&|EPIC|GENHOSP|RIS|RIVERSIDE|20261201101500||ORM^O01^ORM_O01|{control_id}|P|{version}",
        f"PID|1||{mrn}^^^GENHOSP^MR||Okafor^Chidi||19750203|M|||||^^^chidi@example.org",
        f"ORC|NW|{placer}^EPIC|||||^^^^^S||20261201101500|||{provider}^Lovelace^Ada",
        segment("OBR", {1: "1", 2: f"{placer}^EPIC", 4: "CTCHEST^CT chest with contrast^L", 15: "^^^CHEST",
                        16: f"{provider}^Lovelace^Ada", 24: "CT", 31: "^Haemoptysis \\T\\ weight loss"}),
    ]) + "\r"


def segment(name: str, fields: dict[int, str]) -> str:
    return "|".join([name] + [fields.get(n, "") for n in range(1, max(fields) + 1)])


def count(node: Node, model: type) -> int:
    with get_db(node.app).transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_an_order_becomes_a_referral_with_its_placer_number(node: Node) -> None:
    ack = send(node, orm())

    assert str(ack["MSA.F1"]) == "AA" and str(ack["MSA.F2"]) == "CTRL-1", str(ack)
    assert str(ack.segment("MSH")[9]) == "ACK^O01^ACK" and str(ack["MSH.F6"]) == "GENHOSP"
    with get_db(node.app).transaction() as session:
        placer = session.scalar(select(PlacerOrder))
        assert placer is not None and (placer.sending_facility, placer.placer_order_number) == ("GENHOSP", "PL-1001")
        referral = session.get(Referral, placer.referral_id)
        assert referral is not None
        assert (referral.modality, referral.body_part, referral.priority.value) == ("CT", "CHEST", "stat")
        assert referral.reason == "Haemoptysis & weight loss"
        assert referral.requester_id == node.clinician_practitioner_id
        assert referral.performer_organization_id == node.centre_id
        patient = session.get(Patient, referral.patient_id)
        assert patient is not None and (patient.mrn, patient.family_name, patient.gender) == ("EHR-555", "Okafor", "male")
        sources = set(session.scalars(select(AuditEvent.entity_type).where(AuditEvent.source == "hl7")))
        assert {"Hl7Message", "ServiceRequest", "Patient"} <= sources


def test_a_repeat_gets_the_same_ack_and_changes_nothing(node: Node) -> None:
    first = send(node, orm())
    referrals = count(node, Referral)

    again = send(node, orm())

    assert str(again) == str(first)
    assert count(node, Referral) == referrals == 1
    assert count(node, Hl7Message) == 1


def test_the_same_order_under_a_new_control_id_makes_no_second_referral(node: Node) -> None:
    send(node, orm("CTRL-1"))
    ack = send(node, orm("CTRL-2"))

    assert str(ack["MSA.F1"]) == "AA" and "already received" in str(ack["MSA.F3"])
    assert count(node, Referral) == 1


def test_an_unknown_provider_gets_ae_and_the_message_is_kept_for_replay(node: Node) -> None:
    ack = send(node, orm(provider="P999"))

    assert str(ack["MSA.F1"]) == "AE"
    assert str(ack["ERR.F3.R1.C1"]) == "204" and str(ack.segment("ERR")[2]) == "ORC^1^12"
    assert "P999" in str(ack["ERR.F8"])
    assert count(node, Referral) == 0 and count(node, Patient) == 2  # the demo's two; no partial registration
    with get_db(node.app).transaction() as session:
        kept = session.scalars(select(Hl7Message)).one()
        assert kept.status is InboundStatus.ERROR and "P999" in (kept.reason or "")
        kept_id = kept.id
        session.add(Hl7CodeMap(kind=CodeKind.PROVIDER, code="P999", target_id=node.clinician_practitioner_id))

    with node.app.app_context():
        replayed = replay_message(node.app, kept_id)

    assert replayed.status is InboundStatus.PROCESSED and count(node, Referral) == 1
    # The sender's retry now gets the new outcome, and still changes nothing.
    assert str(send(node, orm(provider="P999"))["MSA.F1"]) == "AA"
    assert count(node, Referral) == 1


def test_an_unknown_centre_gets_ae(node: Node) -> None:
    ack = send(node, orm().replace("|RIS|RIVERSIDE|", "|RIS|ELSEWHERE|"))

    assert str(ack["MSA.F1"]) == "AE" and str(ack.segment("ERR")[2]) == "MSH^1^6"
    assert count(node, Referral) == 0


HOSTILE = {
    "no MSH": b"PID|1||X^^^^MR||Doe^Jane\rORC|NW|1\r",
    "wrong version": orm(version="2.3").encode(),
    "binary garbage": bytes(range(256)) * 4,
    "missing OBR": orm().split("\rOBR")[0].encode() + b"\r",
    "not UTF-8": orm().encode().replace(b"Okafor", b"Ok\xe9for"),
    "unsupported type": orm().replace("ORM^O01^ORM_O01", "SIU^S12").encode(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_gets_a_nak_and_nothing_partial_is_stored(node: Node, name: str) -> None:
    patients = count(node, Patient)

    ack = send(node, HOSTILE[name])

    assert str(ack["MSA.F1"]) == "AR"
    assert str(ack["ERR.F3.R1.C1"]) in {"100", "102", "200", "201", "203"}
    assert str(ack["ERR.F8"])
    assert count(node, Referral) == 0 and count(node, Patient) == patients
    with get_db(node.app).transaction() as session:
        kept = session.scalars(select(Hl7Message)).one()
        assert kept.status is InboundStatus.REJECTED and kept.reason


def test_an_oversized_message_gets_a_nak_and_is_kept_truncated(node: Node) -> None:
    huge = orm().replace("Haemoptysis", "x" * (MAX_BYTES * 3))
    with MLLPClient("127.0.0.1", node.listener.port) as client:
        client.socket.settimeout(10)
        client.socket.sendall(b"\x0b" + huge.encode() + b"\x1c\x0d")
        answer = b""
        while not answer.endswith(b"\x1c\x0d"):
            answer += client.socket.recv(65536)
    ack = hl7.parse(answer.strip(b"\x0b\x1c\x0d").decode())

    assert str(ack["MSA.F1"]) == "AR" and "longer than" in str(ack["ERR.F8"])
    assert count(node, Referral) == 0
    with get_db(node.app).transaction() as session:
        kept = session.scalars(select(Hl7Message)).one()
        assert kept.truncated and len(kept.raw) == MAX_BYTES


def test_several_messages_on_one_connection_each_get_their_ack(node: Node) -> None:
    with MLLPClient("127.0.0.1", node.listener.port) as client:
        client.socket.settimeout(10)
        client.socket.sendall(b"".join(b"\x0b" + orm(f"C{i}", placer=f"PL{i}").encode() + b"\x1c\x0d"
                                       for i in range(3)))
        answer = b""
        while answer.count(b"\x1c\x0d") < 3:
            answer += client.socket.recv(65536)
    acks = [hl7.parse(part.strip(b"\x0b").decode()) for part in answer.split(b"\x1c\x0d") if part]

    assert [(str(a["MSA.F1"]), str(a["MSA.F2"])) for a in acks] == [("AA", "C0"), ("AA", "C1"), ("AA", "C2")]
    assert count(node, Referral) == 3
