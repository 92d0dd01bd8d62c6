"""Storage Commitment SCP, Push Model (PS3.4 Annex J): a modality asks the archive to take charge
of instances it sent, and deletes its own copies of those the archive reports committed. A
committed answer is therefore the last copy's death warrant, and is given only for what is kept
whole.

The N-ACTION (Action Type 1) names a Transaction UID and the instances (SOP Class and Instance
UIDs). The request is recorded (`StorageCommitment`) before the N-ACTION is answered, so a restart
does not lose it, and a repeated Transaction UID finds the same row and gets the same answer. Then
each instance is checked once (`imaging_orders.archive.commitment_check`): committed only if its
current version is kept whole in a study the calling AE may see, else failed with a FailureReason;
another centre's instance is failed exactly as one never received.

The result goes back in an N-EVENT-REPORT (Event Type 1: all committed; 2: failures exist). The
node first offers it on the requesting association, if the requester is still there and takes it;
otherwise the job bus sends it on a new association to the requester's AE title, looked up in
`DICOM_MOVE_DESTINATIONS` (the one table of peer addresses), proposing this node as the Storage
Commitment SCP by role selection. RQ retries a failed delivery; on the bus's last run the request
is marked undeliverable, logged and audited (the modality then keeps its copies: the safe side).
A request the node recorded but never handed on (it stopped in between) is handed on by the node's
background loop.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.dicom_status import (
    ANSWERABLE,
    COMMITMENT,
    INVALID_ARGUMENT_VALUE,
    NO_SUCH_ACTION,
    NO_SUCH_SOP_CLASS,
    NO_SUCH_SOP_INSTANCE,
    RESOURCE_LIMITATION,
    SUCCESS,
    DicomFailure,
    failure_status,
    status_dataset,
)
from hospital.errors import Conflict, InvalidInput
from hospital.jobs import enqueue, runs_of_a_failing_job
from imaging_orders.archive.commitment_check import check_instances, unchanged_since_checked
from imaging_orders.archive.models import StorageCommitment
from imaging_orders.archive.query_retrieve import parse_move_destinations

logger = logging.getLogger(__name__)

State = StorageCommitment.State

# The well-known SOP Instance of the Push Model: every request and report names it (PS3.4 J.3.2).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1  # the one Action Type ID
ALL_COMMITTED = 1  # Event Type IDs of the report
FAILURES_EXIST = 2
MAX_REFERENCES = 50_000
REPORT_JOB = "imaging_orders.archive.jobs.send_commitment_report"
# A requester that releases its association as soon as the N-ACTION is answered gets this long to
# do so before the node offers the report there (it would ignore a report while releasing).
RELEASE_GRACE_SECONDS = 0.2
# How long the requester has to answer a report on its own association before the node gives up
# on that association (pynetdicom then aborts it) and sends the report on a new one.
SAME_ASSOCIATION_TIMEOUT_SECONDS = 10
# A request still REQUESTED this long after it arrived lost the node that took it: hand it on.
STALLED_AFTER_SECONDS = 60
NEW_ASSOCIATION_TIMEOUT_SECONDS = 30


class InvalidCommitmentRequest(InvalidInput, DicomFailure):
    """An N-ACTION whose Action Information cannot be a Storage Commitment request."""

    def __init__(self, message: str, dicom_status: int = INVALID_ARGUMENT_VALUE) -> None:
        super().__init__(message)
        self.dicom_status = dicom_status


class TransactionUidInUse(Conflict, DicomFailure):
    """A Transaction UID already recorded for another requester or other instances."""

    dicom_status = INVALID_ARGUMENT_VALUE


class ReportNotDelivered(Exception):
    """The requester did not take the N-EVENT-REPORT (no association, refused, failure status)."""


@dataclass(frozen=True)
class CommitmentRequest:
    transaction_uid: str
    sops: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID), as requested


@dataclass(frozen=True)
class CommitmentReport:
    """What the N-EVENT-REPORT says, from the recorded result."""

    commitment_id: int
    transaction_uid: str
    calling_ae: str
    called_ae: str
    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, int], ...]  # (class, instance, FailureReason)

    @property
    def event_type(self) -> int:
        return FAILURES_EXIST if self.failed else ALL_COMMITTED

    @property
    def summary(self) -> str:
        return f"{len(self.committed)} committed, {len(self.failed)} failed"

    def event_information(self) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        # Where the committed instances can be retrieved from: this node.
        ds.RetrieveAETitle = self.called_ae
        if self.committed:
            ds.ReferencedSOPSequence = DicomSequence([_reference(c, i) for c, i in self.committed])
        if self.failed:
            items = []
            for sop_class, instance, reason in self.failed:
                item = _reference(sop_class, instance)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = DicomSequence(items)
        return ds


def _reference(sop_class: str, instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = instance
    return item


# ---------------------------------------------------------------------------------------------
# The request: N-ACTION
# ---------------------------------------------------------------------------------------------


def handle_commitment_request(event: Event, app: Flask) -> tuple[int | Dataset, Dataset | None]:
    """N-ACTION: record the request, answer, then report in the background (see the module
    docstring). Success here only says the request is recorded, not that anything is committed."""
    calling_ae = _calling_ae(event)
    request = event.request
    if str(request.RequestedSOPClassUID) != StorageCommitmentPushModel:
        return status_dataset(NO_SUCH_SOP_CLASS, "only Storage Commitment Push Model actions"), None
    if str(request.RequestedSOPInstanceUID or "").strip("\x00 ") != STORAGE_COMMITMENT_INSTANCE:
        return status_dataset(NO_SUCH_SOP_INSTANCE, f"the instance is {STORAGE_COMMITMENT_INSTANCE}"), None
    if event.action_type != REQUEST_STORAGE_COMMITMENT:
        return status_dataset(NO_SUCH_ACTION, "the only action is 1, request storage commitment"), None
    try:
        parsed = parse_action_information(event.action_information)
        commitment_id = record_request_once(app, parsed, calling_ae, _called_ae(event))
    except ANSWERABLE as exc:
        logger.warning("storage commitment request from %s refused: %s: %s", calling_ae, type(exc).__name__, exc)
        return failure_status(exc, COMMITMENT), None
    logger.info("storage commitment %s from %s: %d instance(s)", parsed.transaction_uid, calling_ae, len(parsed.sops))
    threading.Thread(
        target=report_after_answer, args=(app, event.assoc, commitment_id),
        name=f"storage-commitment-{commitment_id}", daemon=True,
    ).start()
    return SUCCESS, None


def parse_action_information(ds: Dataset) -> CommitmentRequest:
    """The Transaction UID and the referenced instances of an N-ACTION's Action Information."""
    transaction_uid = _uid(ds, "TransactionUID")
    if transaction_uid is None:
        raise InvalidCommitmentRequest("no valid TransactionUID")
    items = ds.get("ReferencedSOPSequence") or []
    if not items:
        raise InvalidCommitmentRequest("the Referenced SOP Sequence is empty")
    if len(items) > MAX_REFERENCES:
        raise InvalidCommitmentRequest(f"more than {MAX_REFERENCES} instances in one request", RESOURCE_LIMITATION)
    sops = []
    for number, item in enumerate(items, start=1):
        sop_class, instance = _uid(item, "ReferencedSOPClassUID"), _uid(item, "ReferencedSOPInstanceUID")
        if sop_class is None or instance is None:
            raise InvalidCommitmentRequest(f"Referenced SOP item {number} lacks a valid class or instance UID")
        sops.append((sop_class, instance))
    return CommitmentRequest(transaction_uid, tuple(sops))


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip("\x00 ")
    return value if value and UID(value).is_valid else None


def record_request_once(app: Flask, request: CommitmentRequest, calling_ae: str, called_ae: str) -> int:
    """Record the request in its own transaction; the commitment's id. Two associations sending
    the same Transaction UID at once race on its unique key: the loser finds the winner's row."""
    db = get_db(app)
    for attempt in (1, 2):
        try:
            with app.app_context(), db.transaction() as session:
                return record_request(session, request, calling_ae, called_ae)
        except IntegrityError:
            if attempt == 2:
                raise
            logger.info("storage commitment %s raced another association; reading its row", request.transaction_uid)
    raise AssertionError("unreachable")


def record_request(session: Session, request: CommitmentRequest, calling_ae: str, called_ae: str) -> int:
    """The commitment for this request: a new row, or the one recorded under its Transaction UID
    when the same requester repeats the same request (its report is sent again, with the result
    found the first time). The same UID for anything else is refused."""
    sops = [list(pair) for pair in request.sops]
    existing = session.scalar(
        select(StorageCommitment).where(StorageCommitment.transaction_uid == request.transaction_uid).with_for_update()
    )
    if existing is not None:
        if existing.calling_ae != calling_ae or existing.requested_sops != sops:
            raise TransactionUidInUse("Transaction UID already used for another request")
        if existing.state in (State.DELIVERED, State.UNDELIVERABLE):
            # Asked again: the requester did not get (or lost) the report. Send it again.
            existing.state = State.REQUESTED
            existing.delivery_attempts = 0
            existing.requested_at = utcnow()
        return existing.id
    commitment = StorageCommitment(
        transaction_uid=request.transaction_uid, calling_ae=calling_ae, called_ae=called_ae, requested_sops=sops,
        state=State.REQUESTED, requested_at=utcnow(), delivery_attempts=0,
    )
    session.add(commitment)
    session.flush()
    return commitment.id


# ---------------------------------------------------------------------------------------------
# The check: which instances are kept whole
# ---------------------------------------------------------------------------------------------


def commitment_report(app: Flask, commitment_id: int) -> CommitmentReport | None:
    """The report of a commitment, checking its instances first if that was not done yet (once:
    the result is recorded and every later report repeats it). None if there is no such row."""
    db = get_db(app)
    with db.transaction() as session:
        commitment = session.get(StorageCommitment, commitment_id)
        if commitment is None:
            return None
        if commitment.result is not None:
            return _report_of(commitment)
        sops = [(str(c), str(i)) for c, i in commitment.requested_sops]
        calling_ae = commitment.calling_ae
    # Files are read with no transaction open: a large study takes a while to hash.
    committed, failed = check_instances(app, sops, calling_ae)
    with db.transaction() as session:
        commitment = session.get(StorageCommitment, commitment_id, with_for_update=True)
        if commitment is None:
            return None
        if commitment.result is None:
            committed, failed = unchanged_since_checked(session, committed, failed)
            commitment.result = {
                "committed": [[c, i] for c, i, _ in committed],
                "failed": [list(f) for f in failed],
            }
            commitment.evaluated_at = utcnow()
        return _report_of(commitment)


def _report_of(commitment: StorageCommitment) -> CommitmentReport:
    result: dict[str, Any] = commitment.result or {}
    return CommitmentReport(
        commitment_id=commitment.id, transaction_uid=commitment.transaction_uid, calling_ae=commitment.calling_ae,
        called_ae=commitment.called_ae,
        committed=tuple((str(c), str(i)) for c, i in result.get("committed", [])),
        failed=tuple((str(c), str(i), int(r)) for c, i, r in result.get("failed", [])),
    )


# ---------------------------------------------------------------------------------------------
# The report: N-EVENT-REPORT, on the requesting association or a new one
# ---------------------------------------------------------------------------------------------


def report_after_answer(app: Flask, assoc: Association, commitment_id: int) -> None:
    """The node's thread per request: check, offer the report on the requesting association, and
    hand it to the job bus if that did not work."""
    time.sleep(RELEASE_GRACE_SECONDS)
    try:
        with app.app_context():
            report = commitment_report(app, commitment_id)
            if report is None:
                return
            if offer_on_association(assoc, report):
                with get_db(app).transaction() as session:
                    mark_delivered(session, commitment_id, "the requesting association")
                return
            hand_to_job_bus(app, commitment_id)
    except Exception:  # noqa: BLE001 - a thread of its own: nothing above would say; the row stays REQUESTED
        # ... and the node's loop hands it on after STALLED_AFTER_SECONDS.
        logger.exception("storage commitment %s: report not handed on; the node's loop will retry", commitment_id)


def offer_on_association(assoc: Association, report: CommitmentReport) -> bool:
    """Send the report on the requester's own association; whether it answered Success."""
    if not assoc.is_established:
        return False
    if not any(cx.abstract_syntax == StorageCommitmentPushModel for cx in assoc.accepted_contexts):
        return False
    previous = assoc.dimse_timeout
    assoc.dimse_timeout = SAME_ASSOCIATION_TIMEOUT_SECONDS
    try:
        status, _ = assoc.send_n_event_report(
            report.event_information(), report.event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE
        )
    except RuntimeError:  # the requester released the association meanwhile
        return False
    finally:
        assoc.dimse_timeout = previous
    code = getattr(status, "Status", None)
    if code != SUCCESS:
        logger.info("storage commitment %s: %s did not take the report on its association (status %s)",
                    report.transaction_uid, report.calling_ae, "none" if code is None else f"{code:#06x}")
        return False
    return True


def hand_to_job_bus(app: Flask, commitment_id: int) -> bool:
    """Have the job bus send the report on a new association (claimed once: REQUESTED -> QUEUED)."""
    with app.app_context(), get_db(app).transaction() as session:
        claimed = session.execute(
            update(StorageCommitment)
            .where(StorageCommitment.id == commitment_id, StorageCommitment.state == State.REQUESTED)
            .values(state=State.QUEUED)
            .execution_options(synchronize_session=False)
        ).rowcount == 1  # type: ignore[attr-defined]
        if claimed:
            enqueue(session, REPORT_JOB, commitment_id=commitment_id)
    return claimed


def resume_stalled_commitments(app: Flask, older_than_seconds: float = STALLED_AFTER_SECONDS) -> list[int]:
    """Hand on the requests a node recorded but never reported (it stopped in between)."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    with app.app_context(), get_db(app).transaction() as session:
        stalled = list(session.scalars(select(StorageCommitment.id).where(
            StorageCommitment.state == State.REQUESTED, StorageCommitment.requested_at < cutoff)))
    resumed = [commitment_id for commitment_id in stalled if hand_to_job_bus(app, commitment_id)]
    if resumed:
        logger.warning("handing on %d storage commitment request(s) left unreported: %s", len(resumed), resumed[:50])
    return resumed


def deliver_on_new_association(session: Session, app: Flask, commitment_id: int) -> None:
    """The job's work: send the report on a new association to the requester. A failure is
    recorded and re-raised so the bus retries; on the bus's last run the request is given up,
    logged and audited, in `session` (the job's own unit of work)."""
    report = commitment_report(app, commitment_id)
    if report is None:
        return
    address = parse_move_destinations(app.config.get("DICOM_MOVE_DESTINATIONS")).get(report.calling_ae)
    attempt = _start_attempt(app, commitment_id, counted=address is not None)
    if attempt is None:
        return  # delivered meanwhile, given up, or asked again (the node offers it again)
    if address is None:
        give_up(session, commitment_id, f"no address for AE {report.calling_ae} (add it to DICOM_MOVE_DESTINATIONS)")
        return
    try:
        send_on_new_association(report, address)
    except ReportNotDelivered as exc:
        error = f"attempt {attempt}: {exc}"
        if attempt >= runs_of_a_failing_job(app):
            give_up(session, commitment_id, error)
            return
        with get_db(app).transaction() as note_session:
            noted = note_session.get(StorageCommitment, commitment_id, with_for_update=True)
            if noted is not None:
                noted.last_error = error[:400]
        logger.warning("storage commitment %s: report to %s not delivered (%s); the job bus retries",
                       report.transaction_uid, report.calling_ae, error)
        raise
    mark_delivered(session, commitment_id, "a new association")


def _start_attempt(app: Flask, commitment_id: int, *, counted: bool) -> int | None:
    """Count one delivery attempt (committed before the attempt, so a failure that rolls the job
    back still counts); None when the commitment is no longer waiting for the job bus."""
    with app.app_context(), get_db(app).transaction() as session:
        commitment = session.get(StorageCommitment, commitment_id, with_for_update=True)
        if commitment is None or commitment.state is not State.QUEUED:
            return None
        if counted:
            commitment.delivery_attempts += 1
        return commitment.delivery_attempts


def send_on_new_association(report: CommitmentReport, address: tuple[str, int]) -> None:
    """Associate with the requester as this node (proposing the SCP role for Storage Commitment,
    PS3.4 J.3.3) and send the report; raise `ReportNotDelivered` unless it answers Success."""
    host, port = address
    ae = AE(ae_title=report.called_ae)
    ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NEW_ASSOCIATION_TIMEOUT_SECONDS
    assoc = ae.associate(host, port, ae_title=report.calling_ae,
                         ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
    if not assoc.is_established:
        raise ReportNotDelivered(f"no association with {report.calling_ae} at {host}:{port}")
    try:
        contexts = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == StorageCommitmentPushModel]
        if not contexts:
            raise ReportNotDelivered(f"{report.calling_ae} at {host}:{port} accepted no Storage Commitment context")
        if not contexts[0].as_scp:
            # Some modalities accept the context but answer no role item; they may still take it.
            logger.info("storage commitment %s: %s did not confirm this node's SCP role", report.transaction_uid,
                        report.calling_ae)
        status, _ = assoc.send_n_event_report(
            report.event_information(), report.event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE
        )
        code = getattr(status, "Status", None)
        if code != SUCCESS:
            raise ReportNotDelivered(f"{report.calling_ae} at {host}:{port} answered the report with "
                                     f"{'no status' if code is None else f'status {code:#06x}'}")
    finally:
        if assoc.is_established:
            assoc.release()


def mark_delivered(session: Session, commitment_id: int, route: str) -> None:
    commitment = session.get(StorageCommitment, commitment_id, with_for_update=True)
    if commitment is None:
        return
    report = _report_of(commitment)
    commitment.state = State.DELIVERED
    commitment.delivered_at = utcnow()
    commitment.last_error = None
    record_access(session, None, "E", "StorageCommitment", commitment.id, source="dicom",
                  description=f"storage commitment {report.transaction_uid} for {report.calling_ae}: "
                              f"{report.summary}; report delivered on {route}")
    logger.info("storage commitment %s: report to %s delivered on %s (%s)", report.transaction_uid,
                report.calling_ae, route, report.summary)


def give_up(session: Session, commitment_id: int, reason: str) -> None:
    """No more attempts: the requester keeps its copies. Logged as an error and audited."""
    commitment = session.get(StorageCommitment, commitment_id, with_for_update=True)
    if commitment is None or commitment.state not in (State.REQUESTED, State.QUEUED):
        return
    commitment.state = State.UNDELIVERABLE
    commitment.last_error = reason[:400]
    record_access(session, None, "E", "StorageCommitment", commitment.id, source="dicom", outcome=8,
                  description=f"storage commitment {commitment.transaction_uid} for {commitment.calling_ae}: "
                              f"report undeliverable: {reason}")
    logger.error("storage commitment %s: report to %s undeliverable (%s); the requester keeps its copies",
                 commitment.transaction_uid, commitment.calling_ae, reason)


def _calling_ae(event: Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except AttributeError:
        return "?"


def _called_ae(event: Event) -> str:
    try:
        return str(event.assoc.acceptor.ae_title).strip()
    except AttributeError:
        return "?"

