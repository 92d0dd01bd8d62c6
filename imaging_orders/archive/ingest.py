"""Receiving images: storing DICOM instances durably, indexing them, matching studies to orders and
declaring studies complete.

An instance is written to disk (temp file, fsync, rename, fsync of the directory) and indexed in the
database, and the transaction commits, all before the sender is told it succeeded: a success answer
is a promise the image is kept. It is also a promise the image is whole: pixel data shorter than
the image's own attributes say, or compressed pixel data that does not decode, is refused before
anything is written (`imaging_orders.archive.pixel_data`), because the sender deletes its copy on
success. Storing is idempotent on the SOP Instance UID because modalities and routers retry.

Header values are indexed whole, even past their VR's maximum length, so a query by the full value
finds them; of a value sent with several (AccessionNumber "ACC1\\ACC2", VM 1 by the standard) the
first is indexed and matched, and the instance's warnings say there were more.

A new study is matched to its referral by AccessionNumber, but only when the PatientID in the
header agrees with the referral's patient (a wrong match would file images in another patient's
record). Unmatched studies are kept with `referral_id` NULL: that is the reconciliation queue,
which staff work through with `reconcile_study`.

A study is complete when no instance has arrived for `STUDY_QUIET_SECONDS` (DICOM has no "end of
study" message); `complete_quiet_studies` marks it available and publishes
`imaging.study_completed` exactly once per order, even when two completers run at the same time.
A second study under the AccessionNumber of an order that already has its study is not matched:
one accession, one fulfilment; it waits in reconciliation (merge or attach elsewhere).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import struct
import tempfile
import threading
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from flask import Flask
from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pynetdicom.presentation import AllStoragePresentationContexts
from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from hospital.clock import utcnow
from hospital.db import Database, get_db
from hospital.dicom_status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    STORE_PROCESSING_FAILURE,
    DicomFailure,
)
from hospital.dicom_text import DEFAULT_REPERTOIRE_TERMS, TEXT_VRS, declare_character_set
from hospital.errors import Conflict, DomainError, InvalidInput, NotFound
from hospital.events import iso_instant
from hospital.jobs import publish
from hospital.models import Patient
from imaging_orders.archive.events import StudyCompleted
from imaging_orders.archive.models import (
    VR_MAX_CHARACTERS,
    ImagingInstance,
    ImagingInstanceVersion,
    ImagingSeries,
    ImagingStudy,
    OrderFulfilment,
    StudyStatus,
)
from imaging_orders.archive.pixel_data import PIXEL_DATA_KEYWORDS, IncompletePixelData, check_pixel_data
from imaging_orders.archive.rejection import (
    RejectionNote,
    RejectionRefused,
    instances_to_withdraw,
    refuse_withdrawn_resend,
    rejection_note,
    withdraw,
)
from imaging_orders.models import Appointment, AppointmentStatus
from imaging_orders.service import start_examination
from referrals import public as referrals
from referrals.public import ReferralStatus, ReferralSummary

logger = logging.getLogger(__name__)


# Referral states in which arriving images may be attached to the order.
MATCHABLE_REFERRAL_STATUSES = frozenset(
    {ReferralStatus.ACCEPTED, ReferralStatus.SCHEDULED, ReferralStatus.IN_PROGRESS}
)
# A store can lose at most three races (study, series, instance) before it finds the winner's rows.
_STORE_ATTEMPTS = 5
_UID_MAX_LENGTH = 64
# The storage SOP classes the DICOM node offers presentation contexts for; others (private, or
# newer than pynetdicom) are stored only when DICOM_ACCEPT_UNKNOWN_SOP_CLASSES is on.
STORAGE_SOP_CLASSES = frozenset(str(context.abstract_syntax) for context in AllStoragePresentationContexts)
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_PREAMBLE = b"\x00" * 128 + b"DICM"
# (0002,0000) UL, explicit VR little endian: tag, "UL", 2-byte length 4.
_META_GROUP_LENGTH_HEADER = b"\x02\x00\x00\x00UL\x04\x00"
# warnings.catch_warnings swaps process-wide state; parsing under one lock keeps each instance's
# warnings its own when several associations store at once.
_PARSE_LOCK = threading.Lock()
# What pydicom raises on bytes that are not (valid) DICOM; anything else is a bug and should surface.
_PARSE_ERRORS = (
    InvalidDicomError,
    BytesLengthException,  # an element whose length does not fit its VR
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    OSError,
    NotImplementedError,
    AttributeError,
    OverflowError,
    struct.error,
    zlib.error,
    UnicodeError,
)


class InstanceRejected(InvalidInput, DicomFailure):
    """The instance is not acceptable as sent; retrying the same bytes will fail again."""

    def __init__(self, reason: str, dicom_status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dicom_status = dicom_status


class StorageUnavailable(DomainError, DicomFailure):
    """The instance could not be kept now (disk or database); nothing was kept, a retry may work."""

    status = 503
    code = "transient"

    def __init__(self, reason: str, dicom_status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dicom_status = dicom_status


@dataclass(frozen=True)
class StoreResult:
    instance_id: int
    series_id: int
    study_id: int
    sop_instance_uid: str
    path: str  # relative to DICOM_STORAGE_DIR
    sha256: str
    size_bytes: int
    duplicate: bool  # the SOP instance was already stored; nothing new was written
    warnings: tuple[str, ...] = ()
    # A re-send of a stored SOP Instance UID with different content, kept as its newest version
    # (the earlier file is kept too); the sender is warned (COERCION_OF_DATA_ELEMENTS).
    superseded: bool = False
    version: int = 1
    # Text the declared character set does not decode (no, an unknown or a wrong
    # SpecificCharacterSet): the file keeps the bytes as sent, the index holds replacement
    # characters, and the sender is warned (COERCION_OF_DATA_ELEMENTS) so that it gets fixed.
    character_set_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class MatchOutcome:
    referral_id: int | None
    warning: str | None = None

    @property
    def matched(self) -> bool:
        return self.referral_id is not None


@dataclass
class _ReceivedInstance:
    """One instance parsed and re-wrapped as a Part 10 file, ready to write and index."""

    header: Dataset
    file_bytes: bytes
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    warnings: list[str] = field(default_factory=list)
    character_set_problems: list[str] = field(default_factory=list)

    @property
    def relative_path(self) -> str:
        # The UIDs were validated (digits and dots only), so they are safe as path components.
        return f"{self.study_instance_uid}/{self.series_instance_uid}/{self.sop_instance_uid}.dcm"


# ---------------------------------------------------------------------------------------------
# Storing
# ---------------------------------------------------------------------------------------------


def store_instance(
    app: Flask,
    dataset_or_bytes: Dataset | bytes,
    *,
    transfer_syntax_uid: str | None,
    calling_ae: str,
    expected_sop_class_uid: str | None = None,
    expected_sop_instance_uid: str | None = None,
    derived: bool = False,
    rejection_scope: ColumnElement[bool] | None = None,
) -> StoreResult:
    """Keep one DICOM instance: validate, write durably, index, match, commit; then return.

    `dataset_or_bytes` is a pydicom Dataset, a Part 10 file's bytes, or a bare encoded dataset (as
    received over DIMSE) in `transfer_syntax_uid`. `expected_*` are the UIDs the C-STORE command
    announced; a dataset that disagrees with them is rejected. `derived` marks instances the
    platform made from the study itself (the AI's SR and key images): they arrive after
    completion by design, so that is not worth a warning.

    An instance of a SOP class outside `STORAGE_SOP_CLASSES` is refused (0122) unless the app's
    DICOM_ACCEPT_UNKNOWN_SOP_CLASSES is on: the same policy the DICOM node applies in negotiation.

    A rejection note (IHE IOCM, `imaging_orders.archive.rejection`) is stored and withdraws the
    instances it references, all in the same unit of work, when they all lie in studies matching
    `rejection_scope` (the studies this sender may withdraw from; None: it may withdraw nothing);
    otherwise it is refused (0124) and nothing changes.

    Raises `InstanceRejected` (bad input, do not retry) or `StorageUnavailable` (retry later).
    """
    received = _receive(dataset_or_bytes, transfer_syntax_uid)
    if expected_sop_class_uid and expected_sop_class_uid.strip("\x00 ") != received.sop_class_uid:
        raise InstanceRejected(
            f"SOPClassUID {received.sop_class_uid} differs from the command's {expected_sop_class_uid}",
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if expected_sop_instance_uid and expected_sop_instance_uid.strip("\x00 ") != received.sop_instance_uid:
        raise InstanceRejected(
            f"SOPInstanceUID {received.sop_instance_uid} differs from the command's {expected_sop_instance_uid}",
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if received.sop_class_uid not in STORAGE_SOP_CLASSES and not app.config.get("DICOM_ACCEPT_UNKNOWN_SOP_CLASSES", False):
        raise InstanceRejected(
            f"unknown or private SOP class {received.sop_class_uid} not accepted here", SOP_CLASS_NOT_SUPPORTED
        )
    try:
        note = None if derived else rejection_note(received.header, received.sop_class_uid, received.study_instance_uid)
    except RejectionRefused as exc:
        raise InstanceRejected(exc.reason, exc.dicom_status) from exc
    storage_dir = Path(app.config["DICOM_STORAGE_DIR"])
    sha256 = hashlib.sha256(received.file_bytes).hexdigest()
    db = get_db(app)
    rejection = _Rejection(note, rejection_scope, calling_ae) if note is not None else None
    for attempt in range(1, _STORE_ATTEMPTS + 1):
        try:
            # An app context: a corrected re-send may match a complete study and publish its event.
            with app.app_context():
                result = _store_attempt(db, storage_dir, received, sha256, derived, rejection)
            if received.character_set_problems:
                result = replace(result, character_set_problems=tuple(received.character_set_problems))
        except RejectionRefused as exc:
            raise InstanceRejected(exc.reason, exc.dicom_status) from exc
        except IntegrityError:
            # Another association created the same study, series or instance between our read and
            # our insert; its rows are committed now, so a fresh attempt finds and reuses them.
            logger.info("store of %s raced another association (attempt %d); retrying", received.sop_instance_uid, attempt)
            continue
        except SQLAlchemyError as exc:
            logger.error("database failure while indexing %s: %s", received.sop_instance_uid, type(exc).__name__)
            raise StorageUnavailable("the image index is unavailable; try again later", STORE_PROCESSING_FAILURE) from exc
        logger.info(
            "stored %s from %s (study %s, %d bytes%s)",
            received.sop_instance_uid,
            calling_ae,
            result.study_id,
            result.size_bytes,
            ", duplicate" if result.duplicate else "",
        )
        return result
    raise StorageUnavailable(
        f"could not index {received.sop_instance_uid} after {_STORE_ATTEMPTS} attempts", STORE_PROCESSING_FAILURE
    )


@dataclass(frozen=True)
class _Rejection:
    """A rejection note being stored: what it withdraws, who may, who sent it."""

    note: RejectionNote
    scope: ColumnElement[bool] | None
    sent_by: str


def _store_attempt(
    db: Database, storage_dir: Path, received: _ReceivedInstance, sha256: str, derived: bool,
    rejection: _Rejection | None = None,
) -> StoreResult:
    """One unit of work: index the instance and write its file, then commit. What was written is
    removed if the transaction does not commit: no committed row would point at it.

    Except when the commit itself meets a lost connection: the server may have committed before it
    died (a primary killed after its standby confirmed the commit, which the promoted standby then
    has), so the row may exist. The file stays then: an orphan file costs disk, a row pointing at
    nothing costs the study (its analysis cannot read it). The sender is told to retry either way,
    and its re-send finds the row or writes both again."""
    written: list[Path] = []
    committing = False
    try:
        with db.transaction() as session:
            result = _index_and_write(session, storage_dir, received, sha256, derived, written, rejection)
            committing = True
        return result
    except BaseException as exc:
        if committing and isinstance(exc, OperationalError):
            logger.warning("commit of %s in doubt (%s); its file is kept for the row that may exist",
                           received.sop_instance_uid, type(exc).__name__)
        else:
            for path in written:
                path.unlink(missing_ok=True)
        raise


def _index_and_write(
    session: Session, storage_dir: Path, received: _ReceivedInstance, sha256: str, derived: bool,
    written: list[Path], rejection: _Rejection | None = None,
) -> StoreResult:
    """Index the instance and write its file durably (paths written are appended to `written`, so
    the caller removes them if its transaction does not commit). A rejection note withdraws what
    it references in the same transaction, or is refused before anything is indexed."""
    if rejection is None:
        stored = _store_in_known_series(session, storage_dir, received, sha256, derived, written)
        if stored is not None:
            return stored
    existing = session.scalar(
        select(ImagingInstance).where(ImagingInstance.sop_instance_uid == received.sop_instance_uid)
    )
    if existing is not None:
        refuse_withdrawn_resend(session, existing)
        if existing.sha256 == sha256:
            return _duplicate_result(storage_dir, existing, received, sha256)
        if derived:
            # The platform's own outputs carry their UIDs by design (made again, same UID): the
            # stored one stands, as the stage that made them expects; senders' re-sends version.
            return _duplicate_result(storage_dir, existing, received, existing.sha256)
        return _supersede(session, storage_dir, existing, received, sha256, written)

    # Checked before any row is made: a refused note leaves no study, series or instance behind.
    to_withdraw = instances_to_withdraw(session, rejection.note, rejection.scope) if rejection else []
    now = utcnow()
    warnings_out = list(received.warnings)
    study = _get_or_create_study(session, received, now, warnings_out)
    series = _get_or_create_series(session, study, received, derived)
    if study.status is not StudyStatus.REGISTERED and not derived:
        # Not reopened: the completion event has gone out and analysis may be running. Staff see
        # the warning; a resend of a whole study would still be stored instance by instance.
        warnings_out.append(f"arrived after the study was marked {study.status.value}")
        logger.warning("instance %s arrived for study %s after completion", received.sop_instance_uid, study.id)
    else:
        study.last_instance_at = now
    instance = ImagingInstance(
        series_id=series.id,
        sop_instance_uid=received.sop_instance_uid,
        sop_class_uid=received.sop_class_uid,
        transfer_syntax_uid=received.transfer_syntax_uid,
        number=_int_or_none(received.header, "InstanceNumber", warnings_out),
        path=received.relative_path,
        size_bytes=len(received.file_bytes),
        sha256=sha256,
        warnings=warnings_out,
        received_at=now,
    )
    session.add(instance)
    # Flushing before the write holds the unique SOP Instance UID for this transaction, so a
    # concurrent store of the same instance waits here instead of racing on the file.
    session.flush()
    if rejection is not None:
        withdraw(session, rejection.note, instance.sop_instance_uid, study, to_withdraw, rejection.sent_by)
    _write_instance_file(storage_dir, received, written)
    return StoreResult(
        instance_id=instance.id,
        series_id=series.id,
        study_id=study.id,
        sop_instance_uid=instance.sop_instance_uid,
        path=instance.path,
        sha256=sha256,
        size_bytes=instance.size_bytes,
        duplicate=False,
        warnings=tuple(warnings_out),
    )



def _store_in_known_series(
    session: Session, storage_dir: Path, received: _ReceivedInstance, sha256: str, derived: bool,
    written: list[Path],
) -> StoreResult | None:
    """The common case, in three statements: a new instance of a series already indexed (every
    instance of a study but its first). None when it is not that case (a new study or series, a
    re-send, a series filed under another study): the general path in `_index_and_write` decides.

    Same promises as the general path, fewer round trips: one lookup for series, study and a
    stored instance of the same UID; the instance inserted before the file is written (holding its
    unique SOP Instance UID, as the flush does there); the study touched last, so its row is locked
    only from that UPDATE to the commit, not while the file is fsynced (associations sending the
    same study no longer queue on it for every write).
    """
    stored_id = (
        select(ImagingInstance.id)
        .where(ImagingInstance.sop_instance_uid == received.sop_instance_uid)
        .scalar_subquery()
    )
    known = session.execute(
        select(ImagingSeries.id, ImagingSeries.study_id, ImagingStudy.study_instance_uid, ImagingStudy.status, stored_id)
        .join(ImagingStudy, ImagingSeries.study_id == ImagingStudy.id)
        .where(ImagingSeries.series_instance_uid == received.series_instance_uid)
    ).one_or_none()
    if known is None:
        return None
    series_id, study_id, study_instance_uid, status, existing_id = known
    if existing_id is not None or study_instance_uid != received.study_instance_uid:
        return None
    now = utcnow()
    warnings_out = list(received.warnings)
    number = _int_or_none(received.header, "InstanceNumber", warnings_out)
    if status is not StudyStatus.REGISTERED and not derived:
        warnings_out.append(f"arrived after the study was marked {status.value}")
    instance_id = session.scalar(
        insert(ImagingInstance)
        .values(
            series_id=series_id, sop_instance_uid=received.sop_instance_uid, sop_class_uid=received.sop_class_uid,
            transfer_syntax_uid=received.transfer_syntax_uid, number=number, path=received.relative_path,
            size_bytes=len(received.file_bytes), sha256=sha256, warnings=warnings_out, received_at=now,
        )
        .returning(ImagingInstance.id)
    )
    assert instance_id is not None  # INSERT ... RETURNING of one row
    _write_instance_file(storage_dir, received, written)
    if status is StudyStatus.REGISTERED or derived:
        touched = session.execute(
            update(ImagingStudy)
            .where(ImagingStudy.id == study_id, *([] if derived else [ImagingStudy.status == StudyStatus.REGISTERED]))
            .values(last_instance_at=now)
            .execution_options(synchronize_session=False)
        )
        if touched.rowcount != 1:
            # Completed between our lookup and now: kept, and said so, like any late instance.
            warnings_out.append("arrived while the study was being marked complete")
            session.execute(
                update(ImagingInstance).where(ImagingInstance.id == instance_id).values(warnings=warnings_out)
                .execution_options(synchronize_session=False)
            )
    if status is not StudyStatus.REGISTERED and not derived:
        logger.warning("instance %s arrived for study %s after completion", received.sop_instance_uid, study_id)
    return StoreResult(
        instance_id=instance_id, series_id=series_id, study_id=study_id, sop_instance_uid=received.sop_instance_uid,
        path=received.relative_path, sha256=sha256, size_bytes=len(received.file_bytes), duplicate=False,
        warnings=tuple(warnings_out),
    )


def _write_instance_file(storage_dir: Path, received: _ReceivedInstance, written: list[Path]) -> None:
    target = storage_dir / received.relative_path
    # Marked before writing so that a failure anywhere from here on removes what was written.
    written.append(target)
    try:
        write_file_durably(target, received.file_bytes)
    except OSError as exc:
        status = OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else STORE_PROCESSING_FAILURE
        logger.error("could not write %s: %s", received.sop_instance_uid, exc.strerror or type(exc).__name__)
        raise StorageUnavailable(f"could not write the image to storage ({exc.strerror})", status) from exc


def _duplicate_result(
    storage_dir: Path, existing: ImagingInstance, received: _ReceivedInstance, sha256: str
) -> StoreResult:
    target = storage_dir / existing.path
    if not target.exists():
        # The index is the promise; if the file was lost since, the resend restores it.
        logger.warning("instance %s was indexed but its file was missing; rewriting it", existing.sop_instance_uid)
        try:
            write_file_durably(target, received.file_bytes)
        except OSError as exc:
            raise StorageUnavailable(f"could not write the image to storage ({exc.strerror})", OUT_OF_RESOURCES) from exc
    return StoreResult(
        instance_id=existing.id,
        series_id=existing.series_id,
        study_id=existing.series.study_id,
        sop_instance_uid=existing.sop_instance_uid,
        path=existing.path,
        sha256=existing.sha256,
        size_bytes=existing.size_bytes,
        duplicate=True,
        warnings=tuple(existing.warnings or ()),
        version=existing.version,
    )


def _supersede(
    session: Session, storage_dir: Path, existing: ImagingInstance, received: _ReceivedInstance, sha256: str,
    written: list[Path],
) -> StoreResult:
    """A re-send of `existing`'s SOP Instance UID with different content: keep it as the newest
    version, keep the earlier file (an `ImagingInstanceVersion`), and let a corrected header
    (PatientID, AccessionNumber) match an unmatched study.

    Senders re-send to correct an instance; keeping only the first version would silently keep the
    error, keeping only the last would lose what a reader may already have seen.
    """
    # Locked: two different re-sends at once become versions 2 and 3, not two versions 2.
    session.refresh(existing, with_for_update=True)
    if existing.sha256 == sha256:
        return _duplicate_result(storage_dir, existing, received, sha256)
    now = utcnow()
    session.add(ImagingInstanceVersion(
        instance_id=existing.id, version=existing.version, transfer_syntax_uid=existing.transfer_syntax_uid,
        path=existing.path, size_bytes=existing.size_bytes, sha256=existing.sha256,
        received_at=existing.received_at, superseded_at=now,
    ))
    version = existing.version + 1
    series = existing.series
    study = series.study
    warnings_out = [
        *received.warnings,
        f"version {version} of this instance: different content under the same SOP Instance UID; "
        f"version {existing.version} kept",
    ]
    if (received.study_instance_uid, received.series_instance_uid) != (study.study_instance_uid, series.series_instance_uid):
        warnings_out.append("the new version names another study or series; it stays indexed where it was")
    relative = f"{study.study_instance_uid}/{series.series_instance_uid}/{existing.sop_instance_uid}.v{version}.dcm"
    existing.version = version
    existing.path = relative
    existing.sha256 = sha256
    existing.size_bytes = len(received.file_bytes)
    existing.transfer_syntax_uid = received.transfer_syntax_uid
    existing.number = _int_or_none(received.header, "InstanceNumber", warnings_out)
    existing.warnings = warnings_out
    existing.received_at = now
    session.flush()
    target = storage_dir / relative
    written.append(target)
    try:
        write_file_durably(target, received.file_bytes)
    except OSError as exc:
        status = OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else STORE_PROCESSING_FAILURE
        raise StorageUnavailable(f"could not write the image to storage ({exc.strerror})", status) from exc
    if study.referral_id is None and study.status is not StudyStatus.CANCELLED:
        _rematch_corrected(session, study, received.header, warnings_out)
    logger.warning("instance %s re-sent with different content: kept as version %d", existing.sop_instance_uid, version)
    return StoreResult(
        instance_id=existing.id, series_id=series.id, study_id=study.id, sop_instance_uid=existing.sop_instance_uid,
        path=relative, sha256=sha256, size_bytes=existing.size_bytes, duplicate=False,
        warnings=tuple(warnings_out), superseded=True, version=version,
    )


def _rematch_corrected(session: Session, study: ImagingStudy, header: Dataset, warnings_out: list[str]) -> None:
    """An unmatched study takes the corrected header's identifiers and is matched again."""
    ignored: list[str] = []
    study.dicom_patient_id = _text(header, "PatientID", ImagingStudy.dicom_patient_id, ignored)
    study.dicom_patient_name = _text(header, "PatientName", ImagingStudy.dicom_patient_name, ignored)
    study.accession_number = _text(header, "AccessionNumber", ImagingStudy.accession_number, ignored)
    outcome = match_study_to_order(session, study)
    if outcome.warning:
        warnings_out.append(outcome.warning)
    if outcome.referral_id is not None and study.status is StudyStatus.AVAILABLE:
        referral = referrals.referral_summary(session, outcome.referral_id)
        assert referral is not None  # just matched
        _close_order(session, study, referral)


def _get_or_create_study(
    session: Session, received: _ReceivedInstance, now: datetime, warnings_out: list[str]
) -> ImagingStudy:
    study = session.scalar(
        select(ImagingStudy).where(ImagingStudy.study_instance_uid == received.study_instance_uid)
    )
    if study is not None:
        return study
    header = received.header
    study = ImagingStudy(
        study_instance_uid=received.study_instance_uid,
        accession_number=_text(header, "AccessionNumber", ImagingStudy.accession_number, warnings_out),
        dicom_patient_id=_text(header, "PatientID", ImagingStudy.dicom_patient_id, warnings_out),
        dicom_patient_name=_text(header, "PatientName", ImagingStudy.dicom_patient_name, warnings_out),
        description=_text(header, "StudyDescription", ImagingStudy.description, warnings_out),
        started=_study_started(header, warnings_out),
        status=StudyStatus.REGISTERED,
        received_at=now,
        last_instance_at=now,
    )
    session.add(study)
    session.flush()
    outcome = match_study_to_order(session, study)
    if outcome.warning:
        warnings_out.append(outcome.warning)
    return study


def _get_or_create_series(
    session: Session, study: ImagingStudy, received: _ReceivedInstance, derived: bool
) -> ImagingSeries:
    series = session.scalar(
        select(ImagingSeries).where(ImagingSeries.series_instance_uid == received.series_instance_uid)
    )
    if series is not None:
        if series.study_id != study.id:
            raise InstanceRejected(
                f"series {received.series_instance_uid} already belongs to another study",
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
        return series
    ignored: list[str] = []  # series-level oddities are already reported by the header checks
    series = ImagingSeries(
        study_id=study.id,
        series_instance_uid=received.series_instance_uid,
        number=_int_or_none(received.header, "SeriesNumber", ignored),
        modality=_text(received.header, "Modality", ImagingSeries.modality, ignored) or "OT",
        description=_text(received.header, "SeriesDescription", ImagingSeries.description, ignored),
        body_part=_text(received.header, "BodyPartExamined", ImagingSeries.body_part, ignored),
        derived=derived,
    )
    session.add(series)
    session.flush()
    return series


def write_file_durably(target: Path, data: bytes) -> None:
    """Write `data` to `target` so that after return it survives a crash or power loss.

    A temp file in the same directory is written and fsynced, renamed over the target (atomic on
    POSIX, so readers see the old file or the new one, never half of one), then the directory is
    fsynced so the rename itself is on disk.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------


def _receive(dataset_or_bytes: Dataset | bytes, transfer_syntax_uid: str | None) -> _ReceivedInstance:
    """Split the input into (dataset bytes, transfer syntax), parse the header and validate it."""
    if isinstance(dataset_or_bytes, Dataset):
        raw, syntax = _encode_dataset(dataset_or_bytes, transfer_syntax_uid)
    elif isinstance(dataset_or_bytes, bytes | bytearray | memoryview):
        raw, syntax = _split_part10(bytes(dataset_or_bytes), transfer_syntax_uid)
    else:
        raise TypeError(f"expected a pydicom Dataset or bytes, got {type(dataset_or_bytes).__name__}")
    if not raw:
        raise InstanceRejected("the data set is empty", CANNOT_UNDERSTAND)

    header, parse_warnings, charset_problems = _parse_header(raw, syntax)
    if not any(keyword in header for keyword in _REQUIRED_UIDS):
        # Bytes that parse into no identifying element at all are not a DICOM data set.
        raise InstanceRejected("not a DICOM data set (no SOP, study or series UID)", CANNOT_UNDERSTAND)
    uids = {
        keyword: _required_uid(header, keyword)
        for keyword in _REQUIRED_UIDS
    }
    try:
        check_pixel_data(header, syntax, parse_warnings)
    except IncompletePixelData as exc:
        raise InstanceRejected(exc.reason, exc.dicom_status) from exc
    # The index needs the header only; the bytes go to disk as received.
    for keyword in PIXEL_DATA_KEYWORDS:
        header.pop(keyword, None)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uids["SOPClassUID"]
    meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return _ReceivedInstance(
        header=header,
        # The received bytes are kept exactly as sent, under a file meta built from the dataset's
        # own UIDs: no re-encoding, so compressed pixel data and private tags survive untouched.
        file_bytes=_PREAMBLE + _encode_file_meta(meta) + raw,
        transfer_syntax_uid=str(syntax),
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        warnings=parse_warnings,
        character_set_problems=charset_problems,
    )


def _encode_dataset(ds: Dataset, transfer_syntax_uid: str | None) -> tuple[bytes, UID]:
    file_meta = getattr(ds, "file_meta", None)
    syntax = UID(transfer_syntax_uid or (file_meta.get("TransferSyntaxUID") if file_meta else None) or ExplicitVRLittleEndian)
    _check_syntax(syntax)
    buffer = DicomBytesIO()
    try:
        # Write a copy so the caller's dataset keeps its own file meta and character set (a copy
        # with its own elements: Dataset(ds) would share them).
        copy = Dataset()
        copy.update(ds)
        copy.file_meta = FileMetaDataset()
        copy.file_meta.TransferSyntaxUID = syntax
        copy.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or "1.2"
        copy.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID") or "1.2"
        # Our own outputs (SR, key images, rejection notes) name the patient as the source does:
        # in Han characters too, which need a declared UTF-8 rather than "?" in their place.
        declare_character_set(copy)
        pydicom.dcmwrite(buffer, copy, enforce_file_format=True)
    except _PARSE_ERRORS as exc:
        raise InstanceRejected(f"the data set cannot be encoded: {exc}", CANNOT_UNDERSTAND) from exc
    return _split_part10(buffer.getvalue(), None)


def _split_part10(data: bytes, transfer_syntax_uid: str | None) -> tuple[bytes, UID]:
    """Bytes of a Part 10 file (preamble, DICM, meta) or of a bare data set -> (data set, syntax)."""
    if data[128:132] != b"DICM":
        if not transfer_syntax_uid:
            raise InstanceRejected("not a DICOM file and no transfer syntax given", CANNOT_UNDERSTAND)
        syntax = UID(transfer_syntax_uid)
        _check_syntax(syntax)
        return data, syntax
    if data[132:140] != _META_GROUP_LENGTH_HEADER or len(data) < 144:
        raise InstanceRejected("the file meta information has no group length", CANNOT_UNDERSTAND)
    (meta_length,) = struct.unpack("<I", data[140:144])
    start = 144 + meta_length
    try:
        meta = pydicom.dcmread(BytesIO(data[:start]), force=False).file_meta
        syntax = UID(str(meta.TransferSyntaxUID).strip("\x00 "))
    except (*_PARSE_ERRORS,) as exc:
        raise InstanceRejected(f"unreadable file meta information: {exc}", CANNOT_UNDERSTAND) from exc
    _check_syntax(syntax)
    return data[start:], syntax


def _check_syntax(syntax: UID) -> None:
    if not syntax.is_valid or not syntax.is_transfer_syntax:
        raise InstanceRejected(f"unknown transfer syntax {str(syntax)[:64]!r}", CANNOT_UNDERSTAND)


def _encode_file_meta(meta: FileMetaDataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


@functools.cache
def _provisional_file_head(syntax: str) -> bytes:
    """Preamble and a file meta for `syntax`, so pydicom reads a bare data set (the same for every
    instance in a syntax: encoded once, not per instance)."""
    provisional = FileMetaDataset()
    provisional.MediaStorageSOPClassUID = "1.2"
    provisional.MediaStorageSOPInstanceUID = "1.2"
    provisional.TransferSyntaxUID = syntax
    return _PREAMBLE + _encode_file_meta(provisional)


def _parse_header(raw: bytes, syntax: UID) -> tuple[Dataset, list[str], list[str]]:
    """Parse the data set, forcing every element to decode; return it with its oddities and its
    character set problems (`_character_set_problems`, also among the oddities).

    pydicom decodes lazily, so a broken element would otherwise only fail later in a reader. The
    pixel data is read too (not decoded), so that `check_pixel_data` can see whether it is whole.
    """
    stream = BytesIO(_provisional_file_head(str(syntax)) + raw)
    found: list[str] = []
    with _PARSE_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            header = pydicom.dcmread(stream)
            if len(header) == 0:
                raise InstanceRejected("the data set has no elements", CANNOT_UNDERSTAND)
            charset_problems = _character_set_problems(header)
            found.extend(charset_problems)
            _decode_all(header, found)
            found.extend(_header_warnings(header))
        except _PARSE_ERRORS as exc:
            raise InstanceRejected(f"the data set cannot be parsed: {type(exc).__name__}: {exc}"[:300], CANNOT_UNDERSTAND) from exc
    for message in dict.fromkeys(str(w.message)[:200] for w in caught):
        found.append(f"pydicom: {message}")
    return header, found, charset_problems


def _character_set_problems(header: Dataset) -> list[str]:
    """Decode the top-level text elements whose bytes are not plain ASCII, and say which of them
    the declared SpecificCharacterSet does not decode (the values themselves are PHI: not named).

    Called before anything else decodes them. GB18030 bytes sent with no SpecificCharacterSet,
    or with an unknown one, would otherwise be read as Latin-1 ("ÍõÐ¡Ã÷" for 王小明): something
    that looks like a name but is not one, in the index and on every page. Such values, and
    values the declared character set fails on (GB18030 bytes declared as ISO_IR 192), are
    indexed with U+FFFD replacement characters instead; the file keeps the bytes as sent, so
    nothing is lost once the sender's configuration is known. Values inside sequences are not
    indexed and are left to pydicom's reading.
    """
    undecoded = {
        BaseTag(tag): raw.value
        for tag in list(header.keys())
        if isinstance(raw := header.get_item(tag), RawDataElement) and isinstance(raw.value, bytes)
        and (raw.VR or _dictionary_vr(BaseTag(tag))) in TEXT_VRS
        and (not raw.value.isascii() or b"\x1b" in raw.value)
    }
    if not undecoded:
        return []
    declared = header.get("SpecificCharacterSet") or ""
    terms = [declared] if isinstance(declared, str) else [str(term) for term in declared]
    terms = [term.strip() for term in terms]
    declared_text = "\\".join(terms)
    names = ", ".join(keyword_for_tag(tag) or str(tag) for tag in undecoded)
    if all(term in DEFAULT_REPERTOIRE_TERMS for term in terms):
        reason = f"{names} hold characters outside ASCII but no SpecificCharacterSet declares them"
    elif any(term not in DEFAULT_REPERTOIRE_TERMS and convert_encodings(term) == [default_encoding]
             for term in terms):
        reason = f"SpecificCharacterSet {declared_text!r} is unknown, so {names} cannot be decoded"
    else:
        failed = [keyword_for_tag(tag) or str(tag) for tag in undecoded if not _decodes(header, tag)]
        if not failed:
            return []
        return [f"{', '.join(failed)} are not valid {declared_text!r} text; indexed with replacement characters, "
                "the file keeps the bytes as sent"]
    for tag, value in undecoded.items():
        try:
            header[tag].value = value.decode("ascii", errors="replace").strip("\x00 ")
        except _PARSE_ERRORS:
            continue  # broken beyond its text: `_decode_all` reports and drops it
    return [f"{reason}; indexed with replacement characters, the file keeps the bytes as sent"]


def _decodes(header: Dataset, tag: BaseTag) -> bool:
    """Decode one element in the declared character set; False if pydicom had to replace bytes
    (it warns then, rather than raising, unless reading is strict process-wide)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            header[tag]
        except _PARSE_ERRORS:
            return True  # broken beyond its text: `_decode_all` reports and drops it
    return not any("decode" in str(w.message) for w in caught)


def _decode_all(ds: Dataset, found: list[str], depth: int = 0) -> None:
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
        except _PARSE_ERRORS as exc:
            # The element stays in the file as received; readers are warned it is damaged.
            found.append(f"element {BaseTag(tag)} could not be decoded ({type(exc).__name__})")
            del ds[tag]
            continue
        if elem.VR == "SQ" and depth < 8:
            for item in elem.value or []:
                _decode_all(item, found, depth + 1)
        elif not BaseTag(tag).is_private and elem.VR not in ("UN", None):
            expected = _dictionary_vr(BaseTag(tag))
            if expected and elem.VR not in expected.split(" or "):
                found.append(f"element {BaseTag(tag)} has VR {elem.VR}, the dictionary says {expected}")


def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or str(value).strip("\x00 ") == "":
        raise InstanceRejected(f"{keyword} is missing", DATASET_DOES_NOT_MATCH_SOP_CLASS)
    uid = UID(str(value).strip("\x00 "))
    if len(uid) > _UID_MAX_LENGTH or not uid.is_valid:
        raise InstanceRejected(f"{keyword} {str(uid)[:70]!r} is not a valid UID", DATASET_DOES_NOT_MATCH_SOP_CLASS)
    return str(uid)


def _header_warnings(ds: Dataset) -> list[str]:
    """Oddities that do not stop storage but that a human or a reader should know about."""
    found: list[str] = []
    if not str(ds.get("PatientName", "") or "").strip():
        found.append("PatientName is missing")
    if not str(ds.get("PatientID", "") or "").strip():
        found.append("PatientID is missing; the study cannot be matched automatically")
    if not str(ds.get("AccessionNumber", "") or "").strip():
        found.append("AccessionNumber is missing; the study needs manual reconciliation")
    charsets = ds.get("SpecificCharacterSet")
    if charsets:
        values = [charsets] if isinstance(charsets, str) else list(charsets)
        unknown = [v for v in values if v and v.strip() not in python_encoding]
        if unknown:
            found.append(f"unknown SpecificCharacterSet {unknown!r}; text may be decoded wrongly")
    private = sum(1 for elem in ds if elem.tag.is_private)
    if private:
        found.append(f"{private} private elements kept as received")
    return found


def _text(ds: Dataset, keyword: str, column: Any, warnings_out: list[str]) -> str | None:
    """A header value as the index keeps it in `column`: whole, and the first of several values.

    Every attribute indexed here has VM 1, so a second value is a sender's mistake; the first is
    indexed (and used to match the order) and the instance says how many there were. A value
    longer than its VR allows is kept whole up to the column's size (see `header_text`).
    """
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):
        values = [str(v).strip("\x00 ") for v in value]
        if len(values) > 1:
            warnings_out.append(f"{keyword} has {len(values)} values; the first is indexed and matched")
        value = next((v for v in values if v), "")
    text = str(value).strip("\x00 ")
    if not text:
        return None
    vr_max = VR_MAX_CHARACTERS.get(ds[keyword].VR)
    max_length = column.type.length
    if len(text) > max_length:
        warnings_out.append(f"{keyword} is {len(text)} characters; the index keeps the first {max_length}")
        text = text[:max_length]
    elif vr_max is not None and len(text) > vr_max:
        warnings_out.append(
            f"{keyword} is {len(text)} characters, more than {ds[keyword].VR} allows ({vr_max}); indexed in full"
        )
    return text


def _int_or_none(ds: Dataset, keyword: str, warnings_out: list[str]) -> int | None:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        warnings_out.append(f"{keyword} {str(value)[:20]!r} is not an integer")
        return None
    if not -(2**31) <= number < 2**31:
        # IS is a 32-bit value; a larger one would fail the INTEGER column and refuse the image.
        warnings_out.append(f"{keyword} {number} is out of range")
        return None
    return number


def _study_started(ds: Dataset, warnings_out: list[str]) -> datetime | None:
    study_date = str(ds.get("StudyDate", "") or "").strip()
    if not study_date:
        return None
    study_time = str(ds.get("StudyTime", "") or "").strip().split(".")[0].ljust(6, "0")[:6]
    try:
        # DICOM dates carry no zone; without TimezoneOffsetFromUTC they are taken as UTC.
        started = datetime.strptime(study_date + study_time, "%Y%m%d%H%M%S")
    except ValueError:
        warnings_out.append("StudyDate/StudyTime are not valid DICOM date and time")
        return None
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "").strip()
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        sign = 1 if offset[0] == "+" else -1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        return (started - sign * delta).replace(tzinfo=UTC)
    return started.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


def match_study_to_order(session: Session, study: ImagingStudy) -> MatchOutcome:
    """Attach a new study to its referral by AccessionNumber, if the patient agrees.

    Never raises for a failed match: the study stays unmatched (reconciliation queue) and the
    outcome says why.
    """
    if study.referral_id is not None:
        return MatchOutcome(study.referral_id)
    if not study.accession_number:
        return MatchOutcome(None, "no AccessionNumber; left for reconciliation")
    referral = referrals.lock_referral_by_accession(session, study.accession_number)
    if referral is None:
        logger.info("study %s: no referral has its accession number; left for reconciliation", study.id)
        return MatchOutcome(None, "no referral has this AccessionNumber; left for reconciliation")
    refusal = _order_taken(session, study, referral) or _match_refusal(session, study, referral)
    if refusal is not None:
        logger.warning("study %s not matched to referral %s: %s", study.id, referral.referral_id, refusal)
        return MatchOutcome(None, f"not matched to referral {referral.referral_id}: {refusal}")
    _attach(session, study, referral)
    logger.info("study %s matched to referral %s", study.id, referral.referral_id)
    return MatchOutcome(referral.referral_id)


def reconcile_study(session: Session, study_id: int, referral_id: int) -> ImagingStudy:
    """Staff match an unmatched study to a referral by hand.

    The accession number need not agree (that is usually why it is here), but the patient must,
    and the referral must still be open. A study already complete is completed for the order now,
    and its completion event is published. Needs an app context (for publishing).
    """
    study = session.get(ImagingStudy, study_id, with_for_update=True)
    if study is None:
        raise NotFound(f"imaging study {study_id} does not exist")
    referral = referrals.lock_referral(session, referral_id)
    if referral is None:
        raise NotFound(f"referral {referral_id} does not exist")
    if study.referral_id == referral.referral_id:
        return study  # reconciling twice is harmless
    if study.referral_id is not None:
        raise Conflict(f"imaging study {study_id} is already matched to referral {study.referral_id}")
    if study.status is StudyStatus.CANCELLED:
        raise Conflict(f"imaging study {study_id} is cancelled")
    refusal = _order_taken(session, study, referral) or _match_refusal(session, study, referral)
    if refusal is not None:
        raise Conflict(f"imaging study {study_id} cannot be matched to referral {referral_id}: {refusal}")
    _attach(session, study, referral)
    if study.status is StudyStatus.AVAILABLE:
        _close_order(session, study, referral)
    session.flush()
    logger.info("study %s reconciled to referral %s", study.id, referral.referral_id)
    return study


def _match_refusal(session: Session, study: ImagingStudy, referral: ReferralSummary) -> str | None:
    """Why `study` must not be attached to `referral`, or None when it may."""
    if referral.status not in MATCHABLE_REFERRAL_STATUSES:
        return f"the referral is {referral.status.value}"
    header_patient_id = (study.dicom_patient_id or "").strip()
    if not header_patient_id:
        return "the images carry no PatientID to confirm the patient"
    patient = session.get(Patient, referral.patient_id)
    if patient is None or header_patient_id != patient.mrn.strip():
        # The values themselves are PHI; the message only says that they differ.
        return "the PatientID in the images differs from the referral's patient"
    return None


def _order_taken(session: Session, study: ImagingStudy, referral: ReferralSummary) -> str | None:
    """Why `referral` cannot take `study` because it already has a study of its own, or None.

    One accession, one fulfilment: a second StudyInstanceUID under the same AccessionNumber (a
    re-scan, a second series sent as a new study, a modality's error) would be analysed and charged
    again. It waits in reconciliation, where staff merge it into the first study or attach it to
    another order. The caller holds the referral's row lock, so a concurrent new study for the same
    order waits and then sees this one.
    """
    other = session.scalar(
        select(ImagingStudy.id).where(
            ImagingStudy.referral_id == referral.referral_id, ImagingStudy.id != study.id,
            ImagingStudy.status != StudyStatus.CANCELLED,
        ).order_by(ImagingStudy.id).limit(1)
    )
    if other is None:
        other = session.scalar(select(OrderFulfilment.study_id).where(
            OrderFulfilment.referral_id == referral.referral_id, OrderFulfilment.study_id != study.id))
    if other is None:
        return None
    return f"the order already has study {other} (one accession, one fulfilment): merge into it or attach elsewhere"


def _attach(session: Session, study: ImagingStudy, referral: ReferralSummary) -> None:
    study.referral_id = referral.referral_id
    study.patient_id = referral.patient_id
    study.organization_id = referral.performer_organization_id
    start_examination(session, referral.referral_id)


def _close_order(session: Session, study: ImagingStudy, referral: ReferralSummary) -> None:
    """A complete study fulfils its order; later stages are told once (`StudyCompleted`).

    The order is claimed by inserting its `OrderFulfilment` row: of two studies (or two
    completers) reaching here for one order, only the first insert succeeds; the other leaves the
    order and its events as they are.
    """
    referral_id = referral.referral_id
    claimed = session.scalar(select(OrderFulfilment).where(OrderFulfilment.referral_id == referral_id))
    if claimed is None:
        try:
            with session.begin_nested():
                session.add(OrderFulfilment(referral_id=referral_id, study_id=study.id))
        except IntegrityError:
            claimed = session.scalar(select(OrderFulfilment).where(OrderFulfilment.referral_id == referral_id))
            if claimed is None:
                raise
    if claimed is not None:
        if claimed.study_id != study.id:
            logger.warning("study %s completed for referral %s, already fulfilled by study %s; not published again",
                           study.id, referral_id, claimed.study_id)
        return
    referrals.mark_completed(session, referral_id)
    for appointment in _appointments(session, referral_id, (AppointmentStatus.BOOKED, AppointmentStatus.ARRIVED)):
        appointment.status = AppointmentStatus.FULFILLED
    assert study.patient_id is not None  # attached to the referral's patient
    publish(session, StudyCompleted(
        study_id=study.id, patient_id=study.patient_id, referral_id=referral_id,
        organization_id=study.organization_id, modality=referral.modality,
        completed_at=iso_instant(study.completed_at),
    ))


def _appointments(session: Session, referral_id: int, statuses: Iterable[AppointmentStatus]) -> list[Appointment]:
    return list(
        session.scalars(
            select(Appointment).where(Appointment.referral_id == referral_id, Appointment.status.in_(list(statuses)))
        )
    )


# ---------------------------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------------------------


def complete_quiet_studies(app: Flask, now: datetime | None = None) -> list[int]:
    """Mark every study that has been quiet for `STUDY_QUIET_SECONDS` available; return their ids.

    Each study is completed in its own transaction by a conditional UPDATE (status still
    registered, still quiet), so of two completers only one wins a study and publishes its event,
    and an instance arriving at the last moment keeps the study open.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=float(app.config["STUDY_QUIET_SECONDS"]))
    db = get_db(app)
    completed: list[int] = []
    with app.app_context():
        with db.transaction() as session:
            candidates = list(
                session.scalars(
                    select(ImagingStudy.id)
                    .where(ImagingStudy.status == StudyStatus.REGISTERED, ImagingStudy.last_instance_at < cutoff)
                    .order_by(ImagingStudy.id)
                )
            )
        for study_id in candidates:
            with db.transaction() as session:
                if _complete_study(session, study_id, cutoff, now):
                    completed.append(study_id)
    if completed:
        logger.info("completed %d quiet studies: %s", len(completed), completed)
    return completed


def _complete_study(session: Session, study_id: int, cutoff: datetime, now: datetime) -> bool:
    claimed = session.execute(
        update(ImagingStudy)
        .where(
            ImagingStudy.id == study_id,
            ImagingStudy.status == StudyStatus.REGISTERED,
            ImagingStudy.last_instance_at < cutoff,
        )
        .values(status=StudyStatus.AVAILABLE, completed_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        return False  # another completer won, or an instance just arrived
    study = session.get(ImagingStudy, study_id, populate_existing=True)
    if study is None or study.referral_id is None:
        return True  # unmatched: published when reconciled
    referral = referrals.lock_referral(session, study.referral_id)
    assert referral is not None  # foreign key
    _close_order(session, study, referral)
    return True
