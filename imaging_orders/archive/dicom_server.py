"""The imaging centre's DICOM node: a pynetdicom Application Entity that answers C-ECHO, receives
images by C-STORE, serves the Modality Worklist by C-FIND and Study Root Query/Retrieve by C-FIND,
C-GET and C-MOVE (`imaging_orders.archive.query_retrieve`), takes Modality Performed Procedure Step
N-CREATE and N-SET (`imaging_orders.mpps`) and Storage Commitment N-ACTION
(`imaging_orders.archive.storage_commitment`), plus the background loop that declares quiet studies
complete and hands on commitment requests a stopped node left unreported.

Handlers are the edge: they turn typed errors from `imaging_orders.archive.ingest`, `imaging_orders.mpps`
and `imaging_orders.worklist` into DICOM statuses and never let one bad peer stop the server. Each
request runs its database work in its own app context and transaction. Log lines carry UIDs, AE
titles and ids, never patient names or identifiers.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from flask import Flask
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import false, true
from sqlalchemy.orm import Session

from hospital import metrics
from hospital.db import get_db
from hospital.dicom_status import (
    ANSWERABLE,
    CANCEL,
    COERCION_OF_DATA_ELEMENTS,
    FIND,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    N_SERVICE,
    NO_SUCH_SOP_CLASS,
    PENDING,
    STORAGE,
    SUCCESS,
    failure_status,
    status_dataset,
)
from hospital.logging_setup import bind_request_id, new_request_id
from imaging_orders.archive.ingest import complete_quiet_studies, store_instance
from imaging_orders.archive.pending_responses import PendingResponses
from imaging_orders.archive.query_retrieve import (
    QR_FIND_CONTEXTS,
    QR_GET_CONTEXTS,
    QR_MOVE_CONTEXTS,
    calling_ae_allowed,
    handle_qr_find,
    handle_qr_get,
    handle_qr_move,
    studies_visible_to_ae,
)
from imaging_orders.archive.storage_commitment import handle_commitment_request, resume_stalled_commitments
from imaging_orders.mpps import create_performed_step, update_performed_step
from imaging_orders.worklist import match_worklist

logger = logging.getLogger(__name__)

STORAGE_TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
QUERY_TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]


MAXIMUM_PDU_BYTES = 1024 * 1024
COMPLETION_INTERVAL_SECONDS = 0.5
# How often the loop looks for storage commitment requests a stopped node left unreported.
COMMITMENT_RESUME_INTERVAL_SECONDS = 60.0


def build_ae(app: Flask, ae_title: str | None = None) -> AE:
    """The AE with every presentation context this node accepts as an SCP."""
    # pynetdicom logs whole C-FIND identifiers at INFO by default; those hold patient names.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    ae = AE(ae_title=ae_title or app.config["DICOM_AE_TITLE"])
    # An association addressed to another AE title is a misconfigured peer: refuse it (A-ASSOCIATE-RJ,
    # "called AE title not recognized") rather than file its images under the wrong node.
    ae.require_called_aet = True
    # pynetdicom has this only as a process-wide setting; the node is the one SCP in its process.
    # On, every proposed abstract syntax is accepted as storage and ingest applies the same policy.
    _config.UNRESTRICTED_STORAGE_SERVICE = bool(app.config.get("DICOM_ACCEPT_UNKNOWN_SOP_CLASSES", False))
    ae.add_supported_context(Verification, QUERY_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        # The role flags accept a C-GET requestor's proposal to be the Storage SCP for the
        # sub-operations; an ordinary sender proposes no roles and stays the SCU.
        ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    ae.add_supported_context(ModalityWorklistInformationFind, QUERY_TRANSFER_SYNTAXES)
    ae.add_supported_context(ModalityPerformedProcedureStep, QUERY_TRANSFER_SYNTAXES)
    ae.add_supported_context(StorageCommitmentPushModel, QUERY_TRANSFER_SYNTAXES)
    for abstract_syntax in (*QR_FIND_CONTEXTS, *QR_GET_CONTEXTS, *QR_MOVE_CONTEXTS):
        ae.add_supported_context(abstract_syntax, QUERY_TRANSFER_SYNTAXES)
    # Senders cut each data set into P-DATA PDUs no larger than this; pynetdicom's default (16 KiB)
    # made a 512x512 CT slice 32 PDUs, each a trip through its state machine. Bounded, not
    # unlimited: one PDU is buffered whole per association.
    ae.maximum_pdu_size = MAXIMUM_PDU_BYTES
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    ae.maximum_associations = 16
    return ae


def event_handlers(app: Flask) -> list[Any]:
    return [
        (evt.EVT_CONN_OPEN, disable_nagle),
        (evt.EVT_ACCEPTED, association_accepted),
        (evt.EVT_REJECTED, lambda event: metrics.DICOM_ASSOCIATIONS.labels("rejected").inc()),
        (evt.EVT_ABORTED, lambda event: metrics.DICOM_ASSOCIATIONS.labels("aborted").inc()),
        (evt.EVT_RELEASED, lambda event: metrics.DICOM_ASSOCIATIONS.labels("released").inc()),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [app]),
        (evt.EVT_C_FIND, handle_find, [app]),
        (evt.EVT_C_GET, handle_qr_get, [app]),
        (evt.EVT_C_MOVE, handle_qr_move, [app]),
        (evt.EVT_N_CREATE, handle_mpps_create, [app]),
        (evt.EVT_N_SET, handle_mpps_set, [app]),
        (evt.EVT_N_ACTION, handle_commitment_request, [app]),
    ]


class SharedPortServer(ThreadedAssociationServer):
    """A node's listener that other node processes may share (SO_REUSEPORT): the kernel spreads
    new associations across every process listening on the port (`imaging_orders.archive.
    node_processes`). Each process must set it, and run as the same user."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_dicom_server(
    app: Flask,
    *,
    host: str | None = None,
    port: int | None = None,
    ae_title: str | None = None,
    block: bool = True,
    share_port: bool = False,
) -> ThreadedAssociationServer | None:
    """Listen for associations and run the study-completion loop.

    With `block=False` the running server is returned; its `shutdown()` also stops the completion
    loop. With `block=True` this returns after SIGTERM or SIGINT (or Ctrl-C), having shut down.
    With `share_port`, other node processes may listen on the same port (SharedPortServer).
    """
    address = (host or app.config["DICOM_HOST"], int(port if port is not None else app.config["DICOM_PORT"]))
    ae = build_ae(app, ae_title)
    # What `AE.start_server(block=False)` does, with the server class ours to choose.
    server = ae.make_server(address, evt_handlers=event_handlers(app),
                            server_class=SharedPortServer if share_port else ThreadedAssociationServer)
    serving = threading.Thread(target=server.serve_forever, name=f"DicomNode@{address[1]}", daemon=True)
    serving.start()
    ae._servers.append(server)  # as start_server does: the server's shutdown() takes itself off this list
    completion = StudyCompletionLoop(app)
    completion.start()
    _stop_loop_with_server(server, completion)
    logger.info("DICOM node %s listening on %s:%d", ae.ae_title, *server.server_address[:2])
    if not block:
        return server
    try:
        wait_for_stop_signal()
    finally:
        logger.info("DICOM node shutting down")
        server.shutdown()
    return None


def wait_for_stop_signal(every_second: Callable[[], None] | None = None) -> None:
    """Block until SIGTERM, SIGINT or Ctrl-C, calling `every_second` (if given) meanwhile."""
    stop = threading.Event()
    previous = _install_stop_signals(stop)
    try:
        while not stop.wait(1.0):
            if every_second is not None:
                every_second()
    except KeyboardInterrupt:
        pass
    finally:
        _restore_signals(previous)


def _stop_loop_with_server(server: ThreadedAssociationServer, loop: StudyCompletionLoop) -> None:
    # pynetdicom creates the server itself, so it cannot be subclassed; wrapping this instance's
    # shutdown keeps "the loop lives exactly as long as the server" true for every caller.
    original_shutdown = server.shutdown

    def shutdown() -> None:
        loop.stop()
        original_shutdown()

    server.shutdown = shutdown  # type: ignore[method-assign]


def _install_stop_signals(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received signal %d", signum)
        stop.set()

    return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


class StudyCompletionLoop(threading.Thread):
    """Calls `complete_quiet_studies` every interval until stopped, and `resume_stalled_commitments`
    at start and every `COMMITMENT_RESUME_INTERVAL_SECONDS` (both keep their state in the database)."""

    def __init__(self, app: Flask, interval: float = COMPLETION_INTERVAL_SECONDS) -> None:
        super().__init__(name="study-completion", daemon=True)
        self.app = app
        self.interval = interval
        self._stop_requested = threading.Event()

    def run(self) -> None:
        next_resume = 0.0
        while not self._stop_requested.wait(self.interval):
            try:
                complete_quiet_studies(self.app)
            except Exception:  # noqa: BLE001 - state lives in the database; the next tick retries
                # A dead loop would leave every later study registered forever, so it keeps going.
                logger.exception("completing quiet studies failed; retrying on the next tick")
            if time.monotonic() >= next_resume:
                next_resume = time.monotonic() + COMMITMENT_RESUME_INTERVAL_SECONDS
                try:
                    resume_stalled_commitments(self.app)
                except Exception:  # noqa: BLE001 - as above: the rows wait in the database for the next look
                    logger.exception("handing on stalled storage commitments failed; retrying later")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_requested.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------


def disable_nagle(event: Event) -> None:
    """Send each PDU at once. pynetdicom writes PDUs in pieces, so with Nagle's algorithm every
    response (a C-STORE status, each C-FIND match) waited for the peer's delayed ACK, ~40 ms."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    except (AttributeError, OSError) as exc:
        logger.debug("could not set TCP_NODELAY: %s", exc)


def association_accepted(event: Event) -> None:
    """Each association runs in its own thread: bind an id for it there, so its log lines and the
    job records its C-STOREs cause carry it (hospital.logging_setup)."""
    association_id = new_request_id("dicom-")
    bind_request_id(association_id)
    metrics.DICOM_ASSOCIATIONS.labels("accepted").inc()
    logger.info("association %s accepted from %s", association_id, _calling_ae(event))


def handle_echo(event: Event) -> int:
    logger.info("C-ECHO from %s", _calling_ae(event))
    return SUCCESS


def handle_store(event: Event, app: Flask) -> int | Dataset:
    """Store one instance; success is answered only once it is on disk and committed."""
    try:
        answer = _store(event, app)
    except BaseException:
        # pynetdicom answers an exception from a handler with 0xC211 (unable to process).
        metrics.count_cstore(0xC211)
        raise
    metrics.count_cstore(int(answer.Status) if isinstance(answer, Dataset) else answer)
    return answer


def _store(event: Event, app: Flask) -> int | Dataset:
    request = event.request
    calling_ae = _calling_ae(event)
    # A rejection note may withdraw instances of the studies this peer may retrieve, no others.
    visible = studies_visible_to_ae(app, calling_ae) if calling_ae_allowed(app, calling_ae) else false()
    try:
        result = store_instance(
            app,
            event.encoded_dataset(include_meta=False),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            calling_ae=calling_ae,
            expected_sop_class_uid=str(request.AffectedSOPClassUID or ""),
            expected_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            rejection_scope=true() if visible is None else visible,
        )
    except ANSWERABLE as exc:
        logger.warning("C-STORE from %s not kept: %s: %s", calling_ae, type(exc).__name__, exc)
        return failure_status(exc, STORAGE)
    if result.superseded:
        # Kept, but not as the sender may think: it replaced an earlier, different version.
        return status_dataset(
            COERCION_OF_DATA_ELEMENTS, f"kept as version {result.version}; earlier version kept"
        )
    if result.character_set_problems:
        # Kept as sent, but its text is unreadable here: the modality's character set needs fixing.
        logger.warning("C-STORE from %s: %s", calling_ae, "; ".join(result.character_set_problems))
        return status_dataset(COERCION_OF_DATA_ELEMENTS, "text not in the declared SpecificCharacterSet")
    return SUCCESS


def handle_find(event: Event, app: Flask) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Modality Worklist C-FIND: pending responses, one per scheduled step, then success.

    Study Root and Patient Root queries go to `handle_qr_find`."""
    calling_ae = _calling_ae(event)
    sop_class = str(event.request.AffectedSOPClassUID)
    if sop_class in QR_FIND_CONTEXTS:
        yield from handle_qr_find(event, app)
        return
    if sop_class != ModalityWorklistInformationFind:
        yield status_dataset(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "only worklist, Study and Patient Root queries are served"), None
        return
    syntax = event.context.transfer_syntax
    encoding = (syntax.is_implicit_VR, syntax.is_little_endian)
    responses = PendingResponses(event, PENDING)
    try:
        query = event.identifier
    except ANSWERABLE as exc:
        logger.warning("worklist query from %s failed: %s: %s", calling_ae, type(exc).__name__, exc)
        yield failure_status(exc, FIND), None
        return
    # A day is read in parts, each in its own short transaction that ends before its answers are
    # sent: the first part small, so the modality has answers while the rest is read. Parts are
    # contiguous in the steps' order (start, id); a step booked meanwhile is in a later part if it
    # sorts after what was sent, as if the modality had asked a moment later.
    after = None
    for part, limit in enumerate(_worklist_parts()):
        try:
            with app.app_context(), get_db(app).transaction() as session:
                answer = match_worklist(session, query, encoding, after=after, limit=limit)
        except ANSWERABLE as exc:
            logger.warning("worklist query from %s failed: %s: %s", calling_ae, type(exc).__name__, exc)
            responses.flush()
            yield failure_status(exc, FIND), None
            return
        if part == 0:
            logger.info("worklist query from %s", calling_ae)
        # The pending responses go out pre-encoded (pending_responses); pynetdicom sends the final
        # success when this generator ends, or the cancel or failure it yields.
        for item in answer.encoded():
            if event.is_cancelled:
                responses.flush()
                yield CANCEL, None
                return
            if not responses.send(item):
                logger.warning("worklist query from %s: association ended while answering", calling_ae)
                return
        if answer.candidates < limit:
            break
        after = answer.last_key
    if not responses.flush():
        logger.warning("worklist query from %s: association ended while answering", calling_ae)


# Candidate steps read per part of a worklist answer: the first part small (the first answers go
# out in milliseconds), then large (few queries for a day of 10,000).
WORKLIST_FIRST_PART = 200
WORKLIST_PART = 2000


def _worklist_parts() -> Iterator[int]:
    yield WORKLIST_FIRST_PART
    while True:
        yield WORKLIST_PART


def handle_mpps_create(event: Event, app: Flask) -> tuple[int | Dataset, Dataset | None]:
    """MPPS N-CREATE: the modality has started a step. Success only once the step is committed."""
    calling_ae = _calling_ae(event)
    if str(event.request.AffectedSOPClassUID) != ModalityPerformedProcedureStep:
        return status_dataset(NO_SUCH_SOP_CLASS, "only MPPS instances are created here"), None
    sop_instance_uid = str(event.request.AffectedSOPInstanceUID or "").strip("\x00 ")
    # PS3.4 F.7.2.1.1 has the modality supply the UID; for one that does not, the SCP assigns it
    # and returns it in the response (pynetdicom moves it into the command set).
    assigned = not sop_instance_uid
    if assigned:
        sop_instance_uid = generate_uid()
    failure = _run_mpps(
        app, calling_ae, "N-CREATE",
        lambda session: create_performed_step(session, sop_instance_uid, event.attribute_list, calling_ae=calling_ae),
    )
    if failure is not None:
        return failure, None
    if assigned:
        reply = Dataset()
        reply.AffectedSOPInstanceUID = sop_instance_uid
        return SUCCESS, reply
    return SUCCESS, None


def handle_mpps_set(event: Event, app: Flask) -> tuple[int | Dataset, Dataset | None]:
    """MPPS N-SET: the modality updates or ends a step it created."""
    calling_ae = _calling_ae(event)
    if str(event.request.RequestedSOPClassUID) != ModalityPerformedProcedureStep:
        return status_dataset(NO_SUCH_SOP_CLASS, "only MPPS instances are updated here"), None
    sop_instance_uid = str(event.request.RequestedSOPInstanceUID or "").strip("\x00 ")
    failure = _run_mpps(
        app, calling_ae, "N-SET",
        lambda session: update_performed_step(session, sop_instance_uid, event.modification_list, calling_ae=calling_ae),
    )
    return (failure, None) if failure is not None else (SUCCESS, None)


def _run_mpps(app: Flask, calling_ae: str, operation: str, work: Callable[[Session], object]) -> Dataset | None:
    """Run one MPPS write in its own transaction; None on success, else the failure status."""
    try:
        with app.app_context(), get_db(app).transaction() as session:
            work(session)
    except ANSWERABLE as exc:
        logger.warning("MPPS %s from %s refused: %s: %s", operation, calling_ae, type(exc).__name__, exc)
        return failure_status(exc, N_SERVICE)
    return None


def _calling_ae(event: Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except AttributeError:
        return "?"
