"""The node sends worklist pending responses pre-encoded, command set and identifier in one P-DATA
PDU: the bytes are what pynetdicom would have sent, peers with a small maximum PDU get them in
fragments, and every step arrives whole and in order before the final success."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

import pytest
from flask import Flask
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import ModalityWorklistInformationFind
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session

from imaging_orders.archive import dicom_server, pending_responses
from imaging_orders.archive.dicom_server import build_ae, event_handlers
from imaging_orders.archive.pending_responses import pending_command_set
from tests.imaging_orders.factories import make_centre, make_order

NODE = "PENDNODE"
STATION = "PENDCT1"
DAY = datetime(2031, 7, 8, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [0xFF00, 0xFF01])
def test_the_command_set_is_the_one_pynetdicom_encodes(status: int) -> None:
    primitive = C_FIND()
    primitive.MessageIDBeingRespondedTo = 517
    primitive.AffectedSOPClassUID = ModalityWorklistInformationFind
    primitive.Status = status
    primitive.Identifier = BytesIO(b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO_IR 192")
    message = C_FIND_RSP()
    message.primitive_to_message(primitive)

    assert pending_command_set(ModalityWorklistInformationFind, 517, status) == encode(message.command_set, True, True)


@pytest.fixture()
def node(app: Flask) -> Iterator[int]:
    ae = build_ae(app, NODE)
    server: ThreadedAssociationServer = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=event_handlers(app))
    yield int(server.server_address[1])
    server.shutdown()


@pytest.fixture()
def day_of_steps(db_session: Session) -> list[str]:
    centre = make_centre(db_session, station_ae_title=STATION, room="Raum Ü2")
    accessions = [f"PEND{n:03d}" for n in range(40)]
    for n, accession in enumerate(accessions):
        make_order(db_session, centre, family_name="Müller", given_name=f"Jürgen{n}", mrn=f"PEND-{n}",
                   accession_number=accession, start=DAY + timedelta(minutes=10 * n))
    db_session.commit()
    return accessions


def ask(port: int, maximum_pdu: int) -> tuple[list[tuple[int, Dataset | None]], list[int]]:
    """Query the day's steps; the answers, and the number of PDVs in each P-DATA PDU received."""
    query = Dataset()
    query.PatientName = ""
    query.AccessionNumber = ""
    query.StudyInstanceUID = ""
    step = Dataset()
    step.ScheduledStationAETitle = STATION
    step.ScheduledProcedureStepStartDate = DAY.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledProcedureStepLocation = ""
    query.ScheduledProcedureStepSequence = Sequence([step])
    pdvs_per_pdu: list[int] = []

    def received(event: Any) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            pdvs_per_pdu.append(len(event.pdu.presentation_data_value_items))

    scu = AE(ae_title="PENDSCU")
    scu.add_requested_context(ModalityWorklistInformationFind)
    assoc = scu.associate("127.0.0.1", port, ae_title=NODE, max_pdu=maximum_pdu,
                           evt_handlers=[(evt.EVT_PDU_RECV, received)])
    assert assoc.is_established
    try:
        answers = [(int(status.Status), found) for status, found in assoc.send_c_find(query, ModalityWorklistInformationFind)]
    finally:
        assoc.release()
    return answers, pdvs_per_pdu


@pytest.mark.parametrize("maximum_pdu", [0, 16382, 128])
def test_every_step_arrives_whole_and_in_order(node: int, day_of_steps: list[str], maximum_pdu: int) -> None:
    answers, pdvs_per_pdu = ask(node, maximum_pdu)

    *pending, (final, nothing) = answers
    assert (final, nothing) == (0x0000, None)
    assert [status for status, _ in pending] == [0xFF00] * len(day_of_steps)
    found = [ds for _, ds in pending]
    assert [ds.AccessionNumber for ds in found if ds is not None] == day_of_steps
    first = found[0]
    assert first is not None
    assert str(first.PatientName) == "Müller^Jürgen0"
    assert first.ScheduledProcedureStepSequence[0].ScheduledProcedureStepLocation == "Raum Ü2"
    assert first.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "080000"
    if maximum_pdu in (0, 16382):
        # One PDU per pending response (command and identifier), then the final response's command.
        assert pdvs_per_pdu == [2] * len(day_of_steps) + [1]
    else:
        # A peer that takes only 128-byte PDUs gets the command alone and the identifier in fragments.
        assert max(pdvs_per_pdu) == 1 and len(pdvs_per_pdu) > 3 * len(day_of_steps)


def test_a_day_read_in_parts_answers_every_step_once_in_order(
    node: int, day_of_steps: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parts of 3 then 7 candidate rows: 40 steps take seven queries, stitched by (start, id).
    monkeypatch.setattr(dicom_server, "WORKLIST_FIRST_PART", 3)
    monkeypatch.setattr(dicom_server, "WORKLIST_PART", 7)
    answers, _ = ask(node, 0)

    *pending, (final, _) = answers
    assert final == 0x0000
    assert [ds.AccessionNumber for _, ds in pending if ds is not None] == day_of_steps


def test_over_tls_the_responses_go_through_the_dul(
    node: int, day_of_steps: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An SSL socket is not written from the handler's thread; every socket taken for one here.
    monkeypatch.setattr(pending_responses, "SSLSocket", socket.socket)
    answers, pdvs_per_pdu = ask(node, 16382)

    *pending, (final, _) = answers
    assert final == 0x0000
    assert [ds.AccessionNumber for _, ds in pending if ds is not None] == day_of_steps
    assert pdvs_per_pdu == [2] * len(day_of_steps) + [1]
