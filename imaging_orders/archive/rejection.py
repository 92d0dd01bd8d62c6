"""IHE IOCM rejection notes: withdrawing instances that should never have been kept.

A modality or a workstation that finds it sent bad images (wrong patient, wrong worklist entry,
poor quality) sends a Key Object Selection Document whose title (ConceptNameCodeSequence) is one of
the rejection notes of PS3.16 CID 7011, referencing the bad instances in its
CurrentRequestedProcedureEvidenceSequence. It arrives like any instance (C-STORE or STOW-RS) and
is stored in the study it names; in the same unit of work the instances it references are
withdrawn: `ImagingInstance.rejection_id` points at the `InstanceRejection` row that records
which note, from whom, when. Withdrawn instances stay on disk and in the index (a rejection is a
record, not an erasure) but are no longer found or retrieved: query/retrieve and DICOMweb filter
on `LIVE_INSTANCES`, and WADO-RS answers 410 Gone naming the note.

A note is all or nothing. Every instance it references must be held here, in the note's own study,
in the series the note says, and in a study the sender may withdraw from (`scope`: the calling
AE's centre over DICOM, the user's visible studies over STOW-RS). Otherwise nothing is stored or
withdrawn and the sender gets 0124 (Refused: not authorized), the same answer for an unknown
instance as for another centre's, so a peer cannot probe what it may not see. Withdrawing an
instance an earlier note already withdrew is harmless: the first note stays its record.

A withdrawn instance stays withdrawn: a later C-STORE or STOW-RS of the same SOP Instance UID
(identical or not) is refused with 0xA771 "subsequent occurrence of a rejected object" (as
dcm4chee-arc answers), never silently stored again or answered Success, so the sender keeps its
copy and knows why. Only an authorised user can bring the instances back, by reverting the
rejection (`revert_rejection`): the note's row stays, marked reverted, and the instances are live
again (a re-send is then an ordinary duplicate or new version).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.dicom_status import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    REFUSED_NOT_AUTHORIZED,
    SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT,
    DicomFailure,
)
from hospital.errors import Conflict, InvalidInput
from hospital.models import User
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, InstanceRejection

logger = logging.getLogger(__name__)

KEY_OBJECT_SELECTION_DOCUMENT = "1.2.840.10008.5.1.4.1.1.88.59"
# PS3.16 CID 7011 "Rejected for Quality Reasons" and the three IOCM adds, all DCM.
REJECTION_NOTE_TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}
# Instances no rejection note has withdrawn: every search and retrieve adds this clause.
LIVE_INSTANCES = ImagingInstance.rejection_id.is_(None)
_NOT_YOURS = "rejection note names instances not held here or not yours"


class RejectionRefused(InvalidInput, DicomFailure):
    """A rejection note that cannot be applied as sent; nothing of it was kept."""

    def __init__(self, reason: str, dicom_status: int = REFUSED_NOT_AUTHORIZED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dicom_status = dicom_status


@dataclass(frozen=True)
class Reference:
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class RejectionNote:
    code_value: str
    code_meaning: str
    study_instance_uid: str
    references: tuple[Reference, ...]


def rejection_note(header: Dataset, sop_class_uid: str, study_instance_uid: str) -> RejectionNote | None:
    """The rejection note `header` is, or None for any other instance (a KOS with another title
    is an ordinary key object selection). Raises `RejectionRefused` for a note that is malformed."""
    if sop_class_uid != KEY_OBJECT_SELECTION_DOCUMENT:
        return None
    titles = header.get("ConceptNameCodeSequence") or []
    if not titles:
        return None
    title = titles[0]
    code = str(title.get("CodeValue", "") or "").strip()
    scheme = str(title.get("CodingSchemeDesignator", "") or "").strip()
    if scheme != "DCM" or code not in REJECTION_NOTE_TITLES:
        return None
    references: list[Reference] = []
    for study in header.get("CurrentRequestedProcedureEvidenceSequence") or []:
        if str(study.get("StudyInstanceUID", "") or "").strip("\x00 ") != study_instance_uid:
            raise RejectionRefused("a rejection note withdraws instances of its own study only",
                                   DATASET_DOES_NOT_MATCH_SOP_CLASS)
        for series in study.get("ReferencedSeriesSequence") or []:
            series_uid = str(series.get("SeriesInstanceUID", "") or "").strip("\x00 ")
            for sop in series.get("ReferencedSOPSequence") or []:
                references.append(Reference(
                    series_uid,
                    str(sop.get("ReferencedSOPClassUID", "") or "").strip("\x00 "),
                    str(sop.get("ReferencedSOPInstanceUID", "") or "").strip("\x00 "),
                ))
    if not references:
        raise RejectionRefused("the rejection note references no instances (CurrentRequestedProcedureEvidenceSequence)",
                               DATASET_DOES_NOT_MATCH_SOP_CLASS)
    return RejectionNote(code, REJECTION_NOTE_TITLES[code], study_instance_uid, tuple(references))


def instances_to_withdraw(
    session: Session, note: RejectionNote, scope: ColumnElement[bool] | None,
) -> list[ImagingInstance]:
    """The instances `note` withdraws, row-locked; `RejectionRefused` unless every reference is an
    instance held here, in the note's study and series, of the class named, within `scope` (the
    studies the sender may withdraw from; None: none)."""
    if scope is None:
        raise RejectionRefused(_NOT_YOURS)
    wanted = {ref.sop_instance_uid: ref for ref in note.references}
    rows = session.execute(
        select(ImagingInstance, ImagingSeries.series_instance_uid)
        .join(ImagingSeries, ImagingInstance.series_id == ImagingSeries.id)
        .join(ImagingStudy, ImagingSeries.study_id == ImagingStudy.id)
        .where(ImagingInstance.sop_instance_uid.in_(list(wanted)),
               ImagingStudy.study_instance_uid == note.study_instance_uid, scope)
        .order_by(ImagingInstance.id)
        .with_for_update(of=ImagingInstance)
    ).all()
    found = {
        instance.sop_instance_uid: instance for instance, series_uid in rows
        if (series_uid, instance.sop_class_uid) == (wanted[instance.sop_instance_uid].series_instance_uid,
                                                    wanted[instance.sop_instance_uid].sop_class_uid)
    }
    missing = [uid for uid in wanted if uid not in found]
    if missing:
        logger.warning("rejection note for study %s refused: %d of %d references not withdrawable here",
                       note.study_instance_uid, len(missing), len(wanted))
        raise RejectionRefused(_NOT_YOURS)
    return list(found.values())


def withdraw(
    session: Session, note: RejectionNote, note_sop_instance_uid: str, study: ImagingStudy,
    instances: list[ImagingInstance], rejected_by: str,
) -> InstanceRejection:
    """Record the note and withdraw `instances` (from `instances_to_withdraw`); audited."""
    fresh = [i for i in instances if i.rejection_id is None]
    rejection = InstanceRejection(
        study_id=study.id, kos_sop_instance_uid=note_sop_instance_uid, code_value=note.code_value,
        coding_scheme="DCM", code_meaning=note.code_meaning, rejected_by=rejected_by[:80],
        withdrawn_count=len(fresh),
    )
    session.add(rejection)
    session.flush()
    for instance in fresh:
        instance.rejection_id = rejection.id
    record_access(
        session, None, "D", "ImagingStudy", study.id, patient_id=study.patient_id,
        description=(f"IOCM rejection note ({note.code_value}, DCM, \"{note.code_meaning}\") from {rejected_by[:80]}: "
                     f"{len(fresh)} instance(s) withdrawn"),
    )
    logger.warning("rejection note %s (%s) from %s withdrew %d instance(s) of study %s", note_sop_instance_uid,
                   note.code_value, rejected_by, len(fresh), study.id)
    return rejection


def refuse_withdrawn_resend(session: Session, instance: ImagingInstance) -> None:
    """Raise `RejectionRefused` (0xA771) if `instance`, being received again, was withdrawn."""
    if instance.rejection_id is None:
        return
    rejection = session.get(InstanceRejection, instance.rejection_id)
    code = rejection.code_value if rejection is not None else "?"
    logger.warning("re-send of withdrawn instance %s refused (rejection %s, %s)", instance.sop_instance_uid,
                   instance.rejection_id, code)
    raise RejectionRefused(f"instance was rejected ({code}, DCM); not stored again",
                           SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT)


def revert_rejection(session: Session, rejection: InstanceRejection, study: ImagingStudy, user: User) -> list[str]:
    """Bring back the instances `rejection` withdrew (an authorised user's decision, checked by the
    caller): they are found and retrieved again and a re-send is accepted. The rejection row stays,
    marked reverted; audited. Returns the SOP Instance UIDs restored. `Conflict` if already reverted."""
    if rejection.reverted_at is not None:
        raise Conflict(f"rejection {rejection.id} was already reverted")
    instances = session.scalars(
        select(ImagingInstance).where(ImagingInstance.rejection_id == rejection.id)
        .order_by(ImagingInstance.id).with_for_update()
    ).all()
    for instance in instances:
        instance.rejection_id = None
    reverted_by = f"user:{user.username}"[:80]
    rejection.reverted_at = utcnow()
    rejection.reverted_by = reverted_by
    session.flush()
    restored = [i.sop_instance_uid for i in instances]
    record_access(
        session, user, "U", "ImagingStudy", study.id, patient_id=study.patient_id,
        description=(f"IOCM rejection {rejection.id} ({rejection.code_value}, DCM) reverted by {reverted_by}: "
                     f"{len(restored)} instance(s) restored"),
    )
    logger.warning("rejection %s reverted by %s: %d instance(s) restored", rejection.id, reverted_by, len(restored))
    return restored
