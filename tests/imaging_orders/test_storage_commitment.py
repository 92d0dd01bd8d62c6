"""Storage Commitment Push Model (PS3.4 Annex J) over real associations: pynetdicom plays the
modality that sends N-ACTION and receives the N-EVENT-REPORT, on the same association or, once it
has left, on a new association to the SCP the test starts for it.

dcmtk has no Storage Commitment SCU (no `stgcmtscu` or similar among its tools), so only
pynetdicom drives these tests.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from hospital.clock import utcnow
from hospital.db import get_db
from hospital.jobs import runs_of_a_failing_job
from hospital.models import AuditEvent, Organization, OrganizationKind
from imaging_orders.archive.dicom_server import start_dicom_server
from imaging_orders.archive.ingest import store_instance
from imaging_orders.archive.models import ImagingInstance, ImagingStudy, StorageCommitment
from imaging_orders.archive.storage_commitment import STORAGE_COMMITMENT_INSTANCE
from imaging_orders.models import Schedule
from tests.conftest import make_test_app
from tests.imaging_orders.dicom_payloads import small_ct_study
from tests.imaging_orders.test_dicom_peers import free_port, wait_for

NODE_AE = "COMMITNODE"
State = StorageCommitment.State


@dataclass
class Instance:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class CommitNode:
    app: Flask
    port: int
    modality_ae: str  # a scanner's station AE title at centre A, also in the peer address table
    modality_port: int  # where that modality's own SCP listens (DICOM_MOVE_DESTINATIONS)
    ours: list[Instance]  # centre A's study: three instances
    foreign: Instance  # centre B's single instance
    storage_dir: Path


def _store(app: Flask, datasets: list[Dataset]) -> list[Instance]:
    for ds in datasets:
        store_instance(app, ds, transfer_syntax_uid=None, calling_ae="MODALITY")
    return [Instance(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


@pytest.fixture()
def commit_node(live_database: str, tmp_path: Path) -> Iterator[CommitNode]:
    tag = uuid.uuid4().hex[:6].upper()
    modality_ae, modality_port = f"CT{tag}", free_port()
    app = make_test_app(live_database, tmp_path / "instance", STUDY_QUIET_SECONDS=3600,
                        DICOM_MOVE_DESTINATIONS=f"{modality_ae}=127.0.0.1:{modality_port}")
    ours = _store(app, small_ct_study(patient_id=f"SC{tag}-1", accession_number=f"SC{tag}A", n_slices=3))
    foreign = _store(app, small_ct_study(patient_id=f"SC{tag}-2", accession_number=f"SC{tag}B", n_slices=1))[0]
    with get_db(app).transaction() as session:
        a = Organization(name=f"Centre A {tag}", kind=OrganizationKind.IMAGING_CENTRE, ae_title=f"A{tag}")
        b = Organization(name=f"Centre B {tag}", kind=OrganizationKind.IMAGING_CENTRE, ae_title=f"B{tag}")
        session.add_all([a, b])
        session.flush()
        session.add(Schedule(organization_id=a.id, name="CT", modality="CT", room="1", station_ae_title=modality_ae))
        for instance, centre in ((ours[0], a), (foreign, b)):
            study = session.scalar(select(ImagingStudy).join(ImagingStudy.series).join(ImagingInstance)
                                   .where(ImagingInstance.sop_instance_uid == instance.sop_instance_uid))
            assert study is not None
            study.organization_id = centre.id
    port = free_port()
    server = start_dicom_server(app, host="127.0.0.1", port=port, ae_title=NODE_AE, block=False)
    assert isinstance(server, ThreadedAssociationServer)
    try:
        yield CommitNode(app, port, modality_ae, modality_port, ours, foreign, Path(app.config["DICOM_STORAGE_DIR"]))
    finally:
        server.shutdown()
        get_db(app).engine.dispose()


# ---------------------------------------------------------------------------------------------
# The modality: pynetdicom as Storage Commitment SCU, and as the SCP of a later report
# ---------------------------------------------------------------------------------------------


@dataclass
class Report:
    event_type: int
    info: Dataset
    association_by: str  # who requested the association it came on: the modality's own, or the node's

    @property
    def committed(self) -> set[str]:
        return {str(item.ReferencedSOPInstanceUID) for item in self.info.get("ReferencedSOPSequence", [])}

    @property
    def failed(self) -> dict[str, int]:
        return {str(item.ReferencedSOPInstanceUID): int(item.FailureReason)
                for item in self.info.get("FailedSOPSequence", [])}


@dataclass
class ReportInbox:
    reports: list[Report] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    answer: int = 0x0000

    def handle(self, event: Event) -> tuple[int, None]:
        self.reports.append(Report(int(event.request.EventTypeID), event.event_information,
                                   str(event.assoc.requestor.ae_title).strip()))
        self.arrived.set()
        return self.answer, None

    def wait(self, timeout: float = 15.0) -> Report:
        assert self.arrived.wait(timeout), "no N-EVENT-REPORT arrived"
        return self.reports[-1]


def action_information(transaction_uid: str, instances: list[Instance]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for instance in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = instance.sop_class_uid
        item.ReferencedSOPInstanceUID = instance.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


def associate(node: CommitNode, inbox: ReportInbox, ae_title: str | None = None) -> Association:
    ae = AE(ae_title=ae_title or node.modality_ae)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE, evt_handlers=[(evt.EVT_N_EVENT_REPORT, inbox.handle)])
    assert assoc.is_established
    return assoc


def request_commitment(assoc: Association, transaction_uid: str, instances: list[Instance],
                       action_type: int = 1) -> int:
    status, _ = assoc.send_n_action(action_information(transaction_uid, instances), action_type,
                                    StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
    return int(status.Status)


@contextmanager
def modality_scp(node: CommitNode, inbox: ReportInbox) -> Iterator[ThreadedAssociationServer]:
    """The modality's own SCP, where a report comes on a new association: it accepts the node
    proposing to be the Storage Commitment SCP (role selection), as PS3.4 J.3.3 has it."""
    ae = AE(ae_title=node.modality_ae)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = ae.start_server(("127.0.0.1", node.modality_port), block=False,
                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, inbox.handle)])
    try:
        yield server
    finally:
        server.shutdown()


def commitment(node: CommitNode, transaction_uid: str) -> StorageCommitment:
    with get_db(node.app).session() as session:
        row = session.scalar(select(StorageCommitment).where(StorageCommitment.transaction_uid == transaction_uid))
        assert row is not None
        return row


def wait_delivered(node: CommitNode, transaction_uid: str) -> None:
    """Until the node has the modality's answer to the report. pynetdicom takes the next message on
    an association as the answer it waits for, so a test sends its next request only then."""
    wait_for(lambda: commitment(node, transaction_uid).state is State.DELIVERED, what="the delivery recorded")


def audit_of(node: CommitNode, commitment_id: int) -> list[AuditEvent]:
    with get_db(node.app).session() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.entity_type == "StorageCommitment", AuditEvent.entity_id == str(commitment_id))))


def corrupt(node: CommitNode, instance: Instance) -> None:
    """Change one byte of the stored file, keeping its size: only the hash can tell."""
    with get_db(node.app).session() as session:
        path = node.storage_dir / session.scalars(select(ImagingInstance.path).where(
            ImagingInstance.sop_instance_uid == instance.sop_instance_uid)).one()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def test_all_kept_whole_is_reported_committed_on_the_same_association(commit_node: CommitNode) -> None:
    inbox = ReportInbox()
    assoc = associate(commit_node, inbox)
    uid = generate_uid()
    try:
        assert request_commitment(assoc, uid, commit_node.ours) == 0x0000
        report = inbox.wait()
    finally:
        assoc.release()
    assert report.event_type == 1
    assert report.info.TransactionUID == uid
    assert report.committed == {i.sop_instance_uid for i in commit_node.ours}
    assert "FailedSOPSequence" not in report.info
    assert report.association_by == commit_node.modality_ae  # on the modality's own association
    row = commitment(commit_node, uid)
    assert row.state is State.DELIVERED and row.calling_ae == commit_node.modality_ae
    [audit] = audit_of(commit_node, row.id)
    assert audit.outcome == 0 and "3 committed, 0 failed" in (audit.description or "")


def test_unknown_corrupted_mismatched_and_foreign_instances_are_reported_failed(commit_node: CommitNode) -> None:
    whole, damaged, mismatched = commit_node.ours
    corrupt(commit_node, damaged)
    unknown = Instance(whole.sop_class_uid, generate_uid())
    wrong_class = Instance("1.2.840.10008.5.1.4.1.1.4", mismatched.sop_instance_uid)  # MR Image Storage, stored as CT
    # The foreign centre's instance with a wrong class too: still "no such object", so a peer cannot
    # tell an instance it may not see from one that does not exist.
    foreign_wrong_class = Instance("1.2.840.10008.5.1.4.1.1.4", commit_node.foreign.sop_instance_uid)
    inbox = ReportInbox()
    assoc = associate(commit_node, inbox)
    first = generate_uid()
    try:
        assert request_commitment(assoc, first, [whole, damaged, unknown, wrong_class, commit_node.foreign]) == 0
        report = inbox.wait()
        wait_delivered(commit_node, first)
        inbox.arrived.clear()
        assert request_commitment(assoc, generate_uid(), [foreign_wrong_class]) == 0
        foreign_only = inbox.wait()
    finally:
        assoc.release()
    assert report.event_type == 2
    assert report.committed == {whole.sop_instance_uid}
    assert report.failed == {
        damaged.sop_instance_uid: 0x0110,  # processing failure: the file no longer matches its hash
        unknown.sop_instance_uid: 0x0112,  # no such object instance
        mismatched.sop_instance_uid: 0x0119,  # class / instance conflict
        commit_node.foreign.sop_instance_uid: 0x0112,  # another centre's: as if it did not exist
    }
    classes = {str(i.ReferencedSOPInstanceUID): str(i.ReferencedSOPClassUID) for i in report.info.FailedSOPSequence}
    assert classes[mismatched.sop_instance_uid] == wrong_class.sop_class_uid  # as requested
    assert foreign_only.event_type == 2 and foreign_only.failed == {commit_node.foreign.sop_instance_uid: 0x0112}
    assert "ReferencedSOPSequence" not in foreign_only.info


def test_a_trusted_ae_may_ask_about_every_centre(commit_node: CommitNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(commit_node.app.config, "DICOM_QR_TRUSTED_AES", "GATEWAY")
    inbox = ReportInbox()
    assoc = associate(commit_node, inbox, ae_title="GATEWAY")
    try:
        assert request_commitment(assoc, generate_uid(), [commit_node.ours[0], commit_node.foreign]) == 0
        report = inbox.wait()
    finally:
        assoc.release()
    assert report.event_type == 1
    assert report.committed == {commit_node.ours[0].sop_instance_uid, commit_node.foreign.sop_instance_uid}


def test_report_goes_on_a_new_association_once_the_requester_has_left(commit_node: CommitNode) -> None:
    inbox = ReportInbox()
    uid = generate_uid()
    with modality_scp(commit_node, inbox):
        assoc = associate(commit_node, ReportInbox())
        assert request_commitment(assoc, uid, commit_node.ours[:2]) == 0x0000
        assoc.release()  # as many modalities do: the report is to come on an association of the archive's
        report = inbox.wait()
        wait_delivered(commit_node, uid)
    assert report.event_type == 1
    assert report.committed == {i.sop_instance_uid for i in commit_node.ours[:2]}
    assert report.association_by == NODE_AE  # the node calls, with the AE title the modality addressed
    row = commitment(commit_node, uid)
    assert row.delivery_attempts == 1


def test_a_report_the_requester_refuses_on_its_association_goes_on_a_new_one(commit_node: CommitNode) -> None:
    refusing, inbox = ReportInbox(answer=0x0110), ReportInbox()
    uid = generate_uid()
    with modality_scp(commit_node, inbox):
        assoc = associate(commit_node, refusing)
        try:
            assert request_commitment(assoc, uid, commit_node.ours[:1]) == 0x0000
            refusing.wait()
            report = inbox.wait()
            wait_delivered(commit_node, uid)
        finally:
            assoc.release()
    assert report.info.TransactionUID == uid and report.event_type == 1


def test_an_undeliverable_report_is_logged_and_audited(commit_node: CommitNode, caplog: pytest.LogCaptureFixture) -> None:
    uid = generate_uid()
    caplog.set_level(logging.WARNING)
    assoc = associate(commit_node, ReportInbox())
    assert request_commitment(assoc, uid, commit_node.ours[:1]) == 0x0000
    assoc.release()  # ... and the modality's SCP is not listening
    row = wait_for(lambda: (r := commitment(commit_node, uid)).state is State.UNDELIVERABLE and r,
                   what="the commitment given up")
    assert row.delivery_attempts == runs_of_a_failing_job(commit_node.app) == 1  # inline: the job bus runs it once
    assert row.last_error and str(commit_node.modality_port) in row.last_error
    [audit] = audit_of(commit_node, row.id)
    assert audit.outcome == 8 and "undeliverable" in (audit.description or "")
    assert any("undeliverable" in r.getMessage() and uid in r.getMessage() for r in caplog.records)


def test_a_requester_with_no_configured_address_is_not_retried(commit_node: CommitNode) -> None:
    uid = generate_uid()
    assoc = associate(commit_node, ReportInbox(), ae_title=f"A{commit_node.modality_ae[2:]}")  # centre A's own AE
    assert request_commitment(assoc, uid, commit_node.ours[:1]) == 0x0000
    assoc.release()
    row = wait_for(lambda: (r := commitment(commit_node, uid)).state is State.UNDELIVERABLE and r,
                   what="the commitment given up")
    assert row.delivery_attempts == 0
    assert "DICOM_MOVE_DESTINATIONS" in (row.last_error or "")


def test_a_repeated_transaction_uid_gets_the_same_answer_and_no_second_row(commit_node: CommitNode) -> None:
    inbox = ReportInbox()
    uid = generate_uid()
    assoc = associate(commit_node, inbox)
    try:
        assert request_commitment(assoc, uid, commit_node.ours) == 0x0000
        first = inbox.wait()
        wait_delivered(commit_node, uid)
        inbox.arrived.clear()
        corrupt(commit_node, commit_node.ours[0])  # checked once: the repeat is answered as the first was
        assert request_commitment(assoc, uid, commit_node.ours) == 0x0000
        second = inbox.wait()
        wait_delivered(commit_node, uid)
        # The same Transaction UID for other instances is another request under a used UID: refused.
        assert request_commitment(assoc, uid, commit_node.ours[:1]) == 0x0115
    finally:
        assoc.release()
    assert second.event_type == first.event_type == 1
    assert second.committed == first.committed
    with get_db(commit_node.app).session() as session:
        assert len(session.scalars(select(StorageCommitment).where(StorageCommitment.transaction_uid == uid)).all()) == 1


def test_a_request_recorded_before_a_restart_is_still_reported(commit_node: CommitNode) -> None:
    """The node stopped after answering the N-ACTION and before reporting: a node that starts
    later hands the recorded request on, and the report arrives on a new association."""
    uid = generate_uid()
    with get_db(commit_node.app).transaction() as session:
        session.add(StorageCommitment(
            transaction_uid=uid, calling_ae=commit_node.modality_ae, called_ae=NODE_AE,
            requested_sops=[[i.sop_class_uid, i.sop_instance_uid] for i in commit_node.ours],
            requested_at=utcnow() - timedelta(minutes=10),
        ))
    inbox = ReportInbox()
    with modality_scp(commit_node, inbox):
        port = free_port()
        server = start_dicom_server(commit_node.app, host="127.0.0.1", port=port, ae_title=NODE_AE, block=False)
        assert server is not None
        try:
            report = inbox.wait()
        finally:
            server.shutdown()
    assert report.info.TransactionUID == uid and report.event_type == 1


@pytest.mark.parametrize(("change", "status"), [
    ({"action_type": 2}, 0x0123),  # no such action
    ({"instance_uid": "1.2.3.4"}, 0x0112),  # not the well-known Storage Commitment instance
    ({"transaction_uid": ""}, 0x0115),  # invalid argument value: no Transaction UID
    ({"instances": []}, 0x0115),  # nothing to commit
])
def test_malformed_requests_are_refused(commit_node: CommitNode, change: dict[str, Any], status: int) -> None:
    assoc = associate(commit_node, ReportInbox())
    try:
        info = action_information(change.get("transaction_uid", generate_uid()), change.get("instances", commit_node.ours))
        if not info.TransactionUID:
            del info.TransactionUID
        answer, _ = assoc.send_n_action(info, change.get("action_type", 1), StorageCommitmentPushModel,
                                        change.get("instance_uid", STORAGE_COMMITMENT_INSTANCE))
    finally:
        assoc.release()
    assert int(answer.Status) == status


def test_the_current_version_is_what_is_committed(commit_node: CommitNode) -> None:
    """A re-sent instance with other content is kept as version 2: the commitment is for the file
    of the current version, whatever became of the earlier one's."""
    first = commit_node.ours[0]
    with get_db(commit_node.app).session() as session:
        old_path = commit_node.storage_dir / session.scalars(select(ImagingInstance.path).where(
            ImagingInstance.sop_instance_uid == first.sop_instance_uid)).one()
    corrected = dcmread(old_path)
    corrected.PatientName = "Rivera^Alexandra"
    assert store_instance(commit_node.app, corrected, transfer_syntax_uid=None, calling_ae="MODALITY").version == 2
    old_path.write_bytes(b"not the first version any more")
    inbox = ReportInbox()
    assoc = associate(commit_node, inbox)
    try:
        assert request_commitment(assoc, generate_uid(), [first]) == 0x0000
        report = inbox.wait()
    finally:
        assoc.release()
    assert report.event_type == 1 and report.committed == {first.sop_instance_uid}
