"""MPPS over a real association: the node runs in this process (the fixtures of
`test_dicom_peers`), and pynetdicom's SCU plays the modality sending N-CREATE and N-SET."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep
from sqlalchemy import select

from hospital.db import get_db
from hospital.models import AuditEvent
from imaging_orders.models import Appointment, AppointmentStatus, PerformedProcedureStep, PerformedStepStatus
from referrals.models import Referral, ReferralStatus
from tests.imaging_orders import test_dicom_peers as peers
from tests.imaging_orders.factories import Order

# The node and a booked order (accession PEERACC1, station PEERCT1) as the peer tests make them.
node = peers.node
order = peers.order
Node = peers.Node


@pytest.fixture()
def modality(node: Node) -> Iterator[Association]:
    ae = AE(ae_title=peers.STATION_AE)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=peers.NODE_AE)
    assert assoc.is_established
    yield assoc
    if assoc.is_established:
        assoc.release()


def in_progress(accession_number: str = "PEERACC1", step_id: str | None = None) -> Dataset:
    """An N-CREATE attribute list as a modality sends it at the start of an exam."""
    scheduled = Dataset()
    scheduled.AccessionNumber = accession_number
    if step_id is not None:
        scheduled.ScheduledProcedureStepID = step_id
    scheduled.StudyInstanceUID = generate_uid()
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = Sequence([scheduled])
    ds.PatientID = "PEER-0001"
    ds.PerformedStationAETitle = peers.STATION_AE
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStartDate = "20261124"
    ds.PerformedProcedureStepStartTime = "100000"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    return ds


def final(status: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261124"
    ds.PerformedProcedureStepEndTime = "101500"
    return ds


def create(assoc: Association, attributes: Dataset, uid: str) -> int:
    status, _ = assoc.send_n_create(attributes, ModalityPerformedProcedureStep, uid)
    return int(status.Status)


def update(assoc: Association, modifications: Dataset, uid: str) -> Dataset:
    status, _ = assoc.send_n_set(modifications, ModalityPerformedProcedureStep, uid)
    return status


def load_step(node: Node, uid: str) -> dict[str, Any] | None:
    with get_db(node.app).session() as session:
        step = session.scalar(select(PerformedProcedureStep).where(PerformedProcedureStep.sop_instance_uid == uid))
        if step is None:
            return None
        return {
            "status": step.status, "appointment_id": step.appointment_id, "referral_id": step.referral_id,
            "station": step.performed_station_ae_title, "started_at": step.started_at, "ended_at": step.ended_at,
            "reason": step.discontinuation_reason, "accession": step.accession_number,
        }


def order_statuses(node: Node, made: Order) -> tuple[AppointmentStatus, ReferralStatus]:
    assert made.appointment is not None
    with get_db(node.app).session() as session:
        appointment = session.get(Appointment, made.appointment.id)
        referral = session.get(Referral, made.referral.id)
        assert appointment is not None and referral is not None
        return appointment.status, referral.status


def test_in_progress_starts_the_booked_exam(node: Node, order: Order, modality: Association) -> None:
    uid = generate_uid()

    assert create(modality, in_progress(), uid) == 0x0000

    step = load_step(node, uid)
    assert step is not None
    assert step["status"] is PerformedStepStatus.IN_PROGRESS
    assert order.appointment is not None
    assert step["appointment_id"] == order.appointment.id
    assert step["referral_id"] == order.referral.id
    assert step["station"] == peers.STATION_AE
    assert step["started_at"] is not None and step["started_at"].tzinfo is not None
    assert step["ended_at"] is None
    assert order_statuses(node, order) == (AppointmentStatus.ARRIVED, ReferralStatus.IN_PROGRESS)
    with get_db(node.app).session() as session:
        audit = session.scalars(select(AuditEvent).where(AuditEvent.entity_type == "PerformedProcedureStep")).all()
        assert [(a.action, a.source, a.patient_id, a.user_id) for a in audit] == [
            ("C", "dicom", order.patient.id, None)
        ]


def test_the_worklist_step_id_matches_without_an_accession(node: Node, order: Order, modality: Association) -> None:
    assert order.appointment is not None
    uid = generate_uid()

    assert create(modality, in_progress(accession_number="", step_id=f"SPS{order.appointment.id}"), uid) == 0x0000

    step = load_step(node, uid)
    assert step is not None and step["appointment_id"] == order.appointment.id


def test_duplicate_create_is_refused_and_changes_nothing(node: Node, order: Order, modality: Association) -> None:
    uid = generate_uid()
    assert create(modality, in_progress(), uid) == 0x0000

    assert create(modality, in_progress(), uid) == 0x0111

    with get_db(node.app).session() as session:
        assert len(session.scalars(select(PerformedProcedureStep)).all()) == 1


def test_create_must_be_in_progress(node: Node, order: Order, modality: Association) -> None:
    uid = generate_uid()

    assert create(modality, final("COMPLETED"), uid) == 0x0106

    assert load_step(node, uid) is None
    assert order_statuses(node, order) == (AppointmentStatus.BOOKED, ReferralStatus.SCHEDULED)


def test_completed_ends_the_step_and_later_sets_are_refused(node: Node, order: Order, modality: Association) -> None:
    uid = generate_uid()
    assert create(modality, in_progress(), uid) == 0x0000

    assert int(update(modality, final("COMPLETED"), uid).Status) == 0x0000

    step = load_step(node, uid)
    assert step is not None
    assert step["status"] is PerformedStepStatus.COMPLETED
    assert step["ended_at"] is not None and step["ended_at"] >= step["started_at"]
    # Closing the order is left to study completion, which has the images.
    assert order_statuses(node, order) == (AppointmentStatus.ARRIVED, ReferralStatus.IN_PROGRESS)

    refused = update(modality, final("DISCONTINUED"), uid)
    assert int(refused.Status) == 0xC310  # PS3.4 F.7.2.2.2: may no longer be updated
    assert "no longer be updated" in str(refused.ErrorComment)
    again = load_step(node, uid)
    assert again is not None and again["status"] is PerformedStepStatus.COMPLETED
    assert modality.is_established  # a refusal is an answer, not an abort


def test_discontinued_keeps_the_reason_and_the_patient_arrived(node: Node, order: Order, modality: Association) -> None:
    uid = generate_uid()
    assert create(modality, in_progress(), uid) == 0x0000
    reason = Dataset()
    reason.CodeValue = "110500"
    reason.CodingSchemeDesignator = "DCM"
    reason.CodeMeaning = "Doctor cancelled procedure"
    modifications = final("DISCONTINUED")
    modifications.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([reason])

    assert int(update(modality, modifications, uid).Status) == 0x0000

    step = load_step(node, uid)
    assert step is not None
    assert step["status"] is PerformedStepStatus.DISCONTINUED
    assert step["reason"] == "DCM 110500: Doctor cancelled procedure"
    assert step["ended_at"] is not None
    assert order_statuses(node, order) == (AppointmentStatus.ARRIVED, ReferralStatus.IN_PROGRESS)


def test_set_on_an_unknown_step(node: Node, modality: Association) -> None:
    assert int(update(modality, final("COMPLETED"), generate_uid()).Status) == 0x0112


def test_set_with_an_invalid_status(node: Node, order: Order, modality: Association) -> None:
    uid = generate_uid()
    assert create(modality, in_progress(), uid) == 0x0000

    assert int(update(modality, final("FINISHED"), uid).Status) == 0x0106

    step = load_step(node, uid)
    assert step is not None and step["status"] is PerformedStepStatus.IN_PROGRESS


def test_unknown_accession_is_recorded_unscheduled(node: Node, order: Order, modality: Association) -> None:
    uid = generate_uid()

    # An unscheduled step is allowed (PS3.4 Annex F): accepted, kept with no appointment.
    assert create(modality, in_progress(accession_number="NOSUCHACC"), uid) == 0x0000

    step = load_step(node, uid)
    assert step is not None
    assert step["appointment_id"] is None and step["referral_id"] is None
    assert step["accession"] == "NOSUCHACC"
    assert order_statuses(node, order) == (AppointmentStatus.BOOKED, ReferralStatus.SCHEDULED)
    # ...and it can still be ended normally.
    assert int(update(modality, final("COMPLETED"), uid).Status) == 0x0000


def test_step_id_and_accession_that_disagree_match_nothing(node: Node, order: Order, modality: Association) -> None:
    assert order.appointment is not None
    uid = generate_uid()

    assert create(modality, in_progress(accession_number="OTHERACC", step_id=f"SPS{order.appointment.id}"), uid) == 0
    step = load_step(node, uid)
    assert step is not None and step["appointment_id"] is None
    assert order_statuses(node, order) == (AppointmentStatus.BOOKED, ReferralStatus.SCHEDULED)
