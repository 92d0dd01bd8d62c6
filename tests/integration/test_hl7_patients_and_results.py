"""ADT over MLLP (register, update, merge carried into referrals, appointments and archive studies)
and ORU^R01 out to an MLLP listener this test starts itself."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import hl7
import pytest
from sqlalchemy import select

from ai_services.events import ReportAmended, ReportSigned
from ai_services.models import DiagnosticReport, Finding, FindingSource, ReportStatus, ReviewStatus
from ai_services.reading import add_addendum
from hospital.db import get_db
from hospital.models import Patient, Role, User
from imaging_orders.archive.models import ImagingStudy
from imaging_orders.models import Appointment
from integration.hl7_results import queue_results
from integration.mllp import FrameReader, frame
from integration.models import Hl7Outbound, OutboundStatus
from referrals.models import Referral
from tests.imaging_orders.factories import make_centre, make_order
from tests.integration.test_hl7_listener import Node, free_port, node, send  # noqa: F401

ADT = "MSH|^~\\&|EPIC|GENHOSP|RIS|RIVERSIDE|20261201101500||ADT^{event}^ADT_A01|{control}|P|2.5\r"


def adt(event: str, control: str, pid: str, mrg: str = "") -> str:
    return ADT.format(event=event, control=control) + f"EVN|{event}|20261201101500\r{pid}\r" + (f"{mrg}\r" if mrg else "")


def patient_by_mrn(node: Node, mrn: str) -> Patient | None:
    with get_db(node.app).transaction() as session:
        return session.scalar(select(Patient).where(Patient.mrn == mrn))


def test_adt_registers_then_updates_a_patient(node: Node) -> None:
    ack = send(node, adt("A04", "A1", "PID|1||EHR-900^^^GENHOSP^MR||Mensah^Ama||19800101|F"))
    assert str(ack["MSA.F1"]) == "AA", str(ack)
    registered = patient_by_mrn(node, "EHR-900")
    assert registered is not None and (registered.family_name, registered.gender) == ("Mensah", "female")

    ack = send(node, adt("A08", "A2", "PID|1||EHR-900^^^GENHOSP^MR||Mensah-Owusu^Ama||||||||555-0100"))

    assert str(ack["MSA.F1"]) == "AA"
    updated = patient_by_mrn(node, "EHR-900")
    assert updated is not None and updated.id == registered.id
    # What A08 left empty keeps its value (birth date, sex); what it sent is taken.
    assert (updated.family_name, updated.phone, updated.gender) == ("Mensah-Owusu", "555-0100", "female")
    assert updated.birth_date is not None and updated.birth_date.year == 1980


def test_a40_moves_referrals_appointments_and_studies_to_the_surviving_patient(node: Node) -> None:
    with get_db(node.app).transaction() as session:
        order = make_order(session, make_centre(session), mrn="EHR-OLD")
        study = ImagingStudy(study_instance_uid="1.2.826.0.1.3680043.8.498.1", referral_id=order.referral.id,
                             patient_id=order.patient.id, dicom_patient_id="EHR-OLD")
        session.add(study)
        session.flush()
        referral_id, study_id = order.referral.id, study.id
        assert order.appointment is not None
        appointment_id, merged_id = order.appointment.id, order.patient.id
    send(node, adt("A04", "M1", "PID|1||EHR-NEW^^^GENHOSP^MR||Rivera^Alex||19680412|F"))
    survivor = patient_by_mrn(node, "EHR-NEW")
    assert survivor is not None

    ack = send(node, adt("A40", "M2", "PID|1||EHR-NEW^^^GENHOSP^MR||Rivera^Alex", "MRG|EHR-OLD^^^GENHOSP^MR"))

    assert str(ack["MSA.F1"]) == "AA", str(ack)
    with get_db(node.app).transaction() as session:
        assert session.get(Referral, referral_id).patient_id == survivor.id  # type: ignore[union-attr]
        assert session.get(Appointment, appointment_id).patient_id == survivor.id  # type: ignore[union-attr]
        assert session.get(ImagingStudy, study_id).patient_id == survivor.id  # type: ignore[union-attr]
        assert session.get(Patient, merged_id).merged_into_id == survivor.id  # type: ignore[union-attr]
    # The old MRN now reaches the survivor: an order under it lands on the surviving record.
    again = send(node, adt("A40", "M3", "PID|1||EHR-NEW^^^GENHOSP^MR||Rivera^Alex", "MRG|EHR-OLD^^^GENHOSP^MR"))
    assert str(again["MSA.F1"]) == "AA" and "already merged" in str(again["MSA.F3"])


def test_a40_for_an_unknown_prior_patient_gets_ae(node: Node) -> None:
    send(node, adt("A04", "U1", "PID|1||EHR-NEW^^^GENHOSP^MR||Rivera^Alex"))

    ack = send(node, adt("A40", "U2", "PID|1||EHR-NEW^^^GENHOSP^MR||Rivera^Alex", "MRG|NOPE^^^GENHOSP^MR"))

    assert str(ack["MSA.F1"]) == "AE" and str(ack["ERR.F3.R1.C1"]) == "204"


class _Receiver(socketserver.ThreadingTCPServer):
    """The other hospital's HL7 inbox: keeps each message and answers AA."""

    daemon_threads = True
    allow_reuse_address = True
    received: list[hl7.Message]


class _ReceiverHandler(socketserver.BaseRequestHandler):
    server: _Receiver

    def handle(self) -> None:
        self.request.settimeout(10)
        for payload, _ in FrameReader(self.request, 1 << 20).frames():
            message = hl7.parse(payload.decode())
            self.server.received.append(message)
            self.request.sendall(frame(str(message.create_ack("AA")).encode()))


@pytest.fixture()
def receiver() -> Iterator[_Receiver]:
    server = _Receiver(("127.0.0.1", free_port()), _ReceiverHandler)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def signed_report(node: Node) -> tuple[int, int]:
    with get_db(node.app).transaction() as session:
        order = make_order(session, make_centre(session), mrn="EHR-RES")
        study = ImagingStudy(study_instance_uid="1.2.826.0.1.3680043.8.498.2", referral_id=order.referral.id,
                             patient_id=order.patient.id)
        session.add(study)
        session.flush()
        report = DiagnosticReport(study_id=study.id, patient_id=order.patient.id, referral_id=order.referral.id,
                                  status=ReportStatus.FINAL, conclusion="One 14 mm nodule | right upper lobe.",
                                  signed_at=datetime(2026, 12, 1, 12, tzinfo=UTC))
        session.add(report)
        session.flush()
        for diameter, review in ((14.26, ReviewStatus.ACCEPTED), (5.0, ReviewStatus.REJECTED)):
            session.add(Finding(report_id=report.id, patient_id=order.patient.id, source=FindingSource.AI,
                                sop_instance_uid="1.2.3", slice_index=3, x0=1, y0=1, x1=5, y1=5,
                                diameter_mm=diameter, review_status=review))
        return report.id, order.patient.id


def test_a_signed_report_goes_out_as_oru_r01_to_the_configured_listener(node: Node, receiver: _Receiver) -> None:
    node.app.config["HL7_RESULT_DESTINATIONS"] = f"127.0.0.1:{receiver.server_address[1]}"
    report_id, patient_id = signed_report(node)

    with node.app.app_context(), get_db(node.app).transaction() as session:
        queue_results(session, node.app, ReportSigned(report_id=report_id, patient_id=patient_id, referral_id=None))
    # Committed: the job bus (inline here) delivered it.

    assert len(receiver.received) == 1
    oru = receiver.received[0]
    assert str(oru.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(oru["PID.F3.R1.C1"]) == "EHR-RES"
    obx = [str(s) for s in oru.segments("OBX")]
    assert "One 14 mm nodule \\F\\ right upper lobe." in obx[0]
    assert len([s for s in obx if "|NM|" in s]) == 1 and "|14.3|mm" in obx[1]  # the rejected finding is left out
    assert any(f"/reports/{report_id}" in s for s in obx) and any(f"/fhir/DiagnosticReport/{report_id}" in s for s in obx)
    [pdf] = [s for s in obx if "|PDF^Report PDF^L|" in s]
    assert f"/reports/{report_id}/report.pdf^^APPLICATION^PDF" in pdf
    with get_db(node.app).transaction() as session:
        row = session.scalars(select(Hl7Outbound)).one()
        assert row.status is OutboundStatus.SENT and row.attempts == 1
        # The same event again (a redelivered job) sends nothing twice.
    with node.app.app_context(), get_db(node.app).transaction() as session:
        assert queue_results(session, node.app, ReportSigned(report_id=report_id, patient_id=patient_id,
                                                             referral_id=None)) == []
    assert len(receiver.received) == 1


def test_each_addendum_goes_out_as_a_corrected_result_with_its_text(node: Node, receiver: _Receiver) -> None:
    node.app.config["HL7_RESULT_DESTINATIONS"] = f"127.0.0.1:{receiver.server_address[1]}"
    report_id, patient_id = signed_report(node)
    with node.app.app_context(), get_db(node.app).transaction() as session:
        queue_results(session, node.app, ReportSigned(report_id=report_id, patient_id=patient_id, referral_id=None))
        report = session.get(DiagnosticReport, report_id)
        assert report is not None and report.referral_id is not None
        centre_id = session.get(Referral, report.referral_id).performer_organization_id  # type: ignore[union-attr]
        radiologist = User(username="amending_rad", password_hash="x", role=Role.RADIOLOGIST, organization_id=centre_id)
        session.add(radiologist)
        session.flush()
        radiologist_id = radiologist.id

    addenda = []
    for text in ("Comparison with the 2025 CT: stable.", "Second look: no further nodule."):
        with node.app.app_context(), get_db(node.app).transaction() as session:
            user = session.get(User, radiologist_id)
            assert user is not None
            addenda.append(add_addendum(session, user, report_id, text).id)  # publishes ReportAmended
    # The subscription (inline here) sent one corrected result per addendum, each with every
    # addendum so far after the original impression, which stands.
    assert len(receiver.received) == 3
    first, second = receiver.received[1], receiver.received[2]
    assert str(first["OBR.F25"]) == "C" and str(second["OBR.F25"]) == "C"
    obx = [str(s) for s in second.segments("OBX")]
    assert "One 14 mm nodule" in obx[0]
    assert [s.split("|")[5] for s in obx if "ADDENDUM" in s] == ["Comparison with the 2025 CT: stable.",
                                                               "Second look: no further nodule."]
    with get_db(node.app).transaction() as session:
        occasions = sorted(session.scalars(select(Hl7Outbound.occasion)))
    assert occasions == sorted(["signed", *(f"amended:{a}" for a in addenda)])
    with node.app.app_context(), get_db(node.app).transaction() as session:  # redelivered: nothing again
        assert queue_results(session, node.app, ReportAmended(report_id=report_id, addendum_id=addenda[0],
                                                              patient_id=patient_id, referral_id=None)) == []
    assert len(receiver.received) == 3


def test_a_destination_that_never_answers_leaves_a_dead_letter(node: Node) -> None:
    node.app.config["HL7_RESULT_DESTINATIONS"] = f"127.0.0.1:{free_port()}"  # nobody listens there
    report_id, patient_id = signed_report(node)

    with node.app.app_context(), get_db(node.app).transaction() as session:
        queue_results(session, node.app, ReportSigned(report_id=report_id, patient_id=patient_id, referral_id=None))

    with get_db(node.app).transaction() as session:
        row = session.scalars(select(Hl7Outbound)).one()
        # Inline the bus runs a job once, so that run was the last: given up, with the reason kept.
        assert row.status is OutboundStatus.DEAD and row.attempts == 1 and "refused" in (row.last_error or "").lower()
