"""Modality Performed Procedure Step (PS3.4 Annex F): what a modality reports it is doing.

A modality that took a step from our worklist announces the start with an N-CREATE (status
IN PROGRESS) naming the scheduled step it performs, and the end with an N-SET to COMPLETED or
DISCONTINUED. This module owns those two writes: it records the step in `performed_procedure_step`,
matches it to the booked appointment, and moves the order along. The DICOM handlers in
`imaging_orders.archive.dicom_server` are the edge; here errors are `ProcedureStepRefused` subclasses that
carry the DIMSE status the handler answers with.

Decisions:
- Matching uses the ScheduledStepAttributesSequence: ScheduledProcedureStepID "SPS<appointment id>"
  (what `imaging_orders.worklist` hands out) first, else the AccessionNumber. When both are sent and
  disagree, nothing is matched: guessing could file the step under another patient.
- A step that matches no live appointment (unscheduled, an unknown accession, a cancelled booking)
  is still recorded, with no appointment, and answered with success: PS3.4 allows unscheduled
  steps, and failing the modality would only make it retry or stop sending. The row keeps the
  accession the modality sent, for reconciling by hand (no page lists these rows yet).
- IN PROGRESS moves the appointment to arrived and the referral to in progress
  (`imaging_orders.service.start_examination`, the same transition image arrival makes).
- COMPLETED records the step only. Fulfilling the appointment and completing the referral stay with
  study completion in `imaging_orders.archive.ingest`, which has the images the report needs; two writers
  of that transition could close an order whose images never came.
- DISCONTINUED records the reason and leaves the appointment arrived, so staff can rebook.
- A COMPLETED or DISCONTINUED step is final (PS3.4 F.7.2.2.2): a later N-SET is refused with C310.

Every write is audited with source "dicom" and no user (the modality is not a user); log lines
carry UIDs, AE titles and ids, never patient identifiers or accession numbers.
"""

from __future__ import annotations

import logging
import re

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.dicom_status import (
    DUPLICATE_SOP_INSTANCE,
    INVALID_ATTRIBUTE_VALUE,
    MISSING_ATTRIBUTE,
    NO_SUCH_SOP_INSTANCE,
    PPS_MAY_NO_LONGER_BE_UPDATED,
    PROCESSING_FAILURE,
    DicomFailure,
)
from hospital.errors import Conflict, DomainError, InvalidInput, NotFound
from imaging_orders.models import Appointment, PerformedProcedureStep, PerformedStepStatus
from imaging_orders.service import start_examination
from imaging_orders.worklist import WORKLIST_APPOINTMENT_STATUSES, WORKLIST_REFERRAL_STATUSES
from referrals.public import ORDERS, referral_summary

logger = logging.getLogger(__name__)

AUDIT_SOURCE = "dicom"
AUDIT_ENTITY = "PerformedProcedureStep"

_DICOM_STATUSES = {
    "IN PROGRESS": PerformedStepStatus.IN_PROGRESS,
    "COMPLETED": PerformedStepStatus.COMPLETED,
    "DISCONTINUED": PerformedStepStatus.DISCONTINUED,
}
_STEP_ID = re.compile(r"SPS(\d+)")
_AE_TITLE_MAX = 16
_ACCESSION_MAX = 16
_REASON_MAX = 200


class ProcedureStepRefused(DomainError, DicomFailure):
    """An MPPS request this node will not carry out; `dicom_status` is the answer to send."""

    dicom_status: int = PROCESSING_FAILURE


class InvalidStepAttribute(ProcedureStepRefused, InvalidInput):
    dicom_status = INVALID_ATTRIBUTE_VALUE


class MissingStepAttribute(ProcedureStepRefused, InvalidInput):
    dicom_status = MISSING_ATTRIBUTE


class DuplicateStep(ProcedureStepRefused, Conflict):
    dicom_status = DUPLICATE_SOP_INSTANCE


class UnknownStep(ProcedureStepRefused, NotFound):
    dicom_status = NO_SUCH_SOP_INSTANCE


class StepAlreadyFinal(ProcedureStepRefused, Conflict):
    dicom_status = PPS_MAY_NO_LONGER_BE_UPDATED


def create_performed_step(
    session: Session, sop_instance_uid: str, attributes: Dataset, *, calling_ae: str
) -> PerformedProcedureStep:
    """N-CREATE: record a step the modality has started and start the examination it performs.

    Raises `MissingStepAttribute` / `InvalidStepAttribute` when the status is not IN PROGRESS and
    `DuplicateStep` when `sop_instance_uid` was created before (also when a concurrent create of
    it wins the race).
    """
    status = _step_status(attributes, required=True)
    if status is not PerformedStepStatus.IN_PROGRESS:
        raise InvalidStepAttribute(
            f"PerformedProcedureStepStatus must be IN PROGRESS on N-CREATE, not {_dicom_name(status)}"
        )
    if session.scalar(select(PerformedProcedureStep.id).where(PerformedProcedureStep.sop_instance_uid == sop_instance_uid)):
        raise DuplicateStep(f"performed procedure step {sop_instance_uid} already exists")
    accession_numbers, step_ids = _scheduled_keys(attributes)
    appointment = _match_appointment(session, accession_numbers, step_ids)
    station = _text(attributes, "PerformedStationAETitle") or calling_ae
    step = PerformedProcedureStep(
        sop_instance_uid=sop_instance_uid,
        appointment_id=appointment.id if appointment is not None else None,
        referral_id=appointment.referral_id if appointment is not None else None,
        accession_number=accession_numbers[0][:_ACCESSION_MAX] if accession_numbers else None,
        status=PerformedStepStatus.IN_PROGRESS,
        performed_station_ae_title=station[:_AE_TITLE_MAX] or None,
        started_at=utcnow(),
    )
    session.add(step)
    try:
        # Flushed here so that a concurrent create of the same UID surfaces as a duplicate, not
        # as a database failure, and before the order is moved along.
        session.flush()
    except IntegrityError as exc:
        raise DuplicateStep(f"performed procedure step {sop_instance_uid} already exists") from exc
    patient_id = None
    if appointment is not None and appointment.referral_id is not None:
        start_examination(session, appointment.referral_id)
        patient_id = appointment.patient_id
        logger.info("MPPS %s from %s started for appointment %s", sop_instance_uid, calling_ae, appointment.id)
    else:
        logger.warning("MPPS %s from %s matches no scheduled step; recorded as unscheduled", sop_instance_uid, calling_ae)
    record_access(
        session, None, "C", AUDIT_ENTITY, step.id, patient_id=patient_id, source=AUDIT_SOURCE,
        description=f"MPPS IN PROGRESS from {calling_ae}" + ("" if appointment is not None else " (unscheduled)"),
    )
    return step


def update_performed_step(
    session: Session, sop_instance_uid: str, modifications: Dataset, *, calling_ae: str
) -> PerformedProcedureStep:
    """N-SET: update a step that is still IN PROGRESS; COMPLETED or DISCONTINUED ends it.

    Raises `UnknownStep` for a UID never created, `StepAlreadyFinal` for a step already ended and
    `InvalidStepAttribute` for a status that is not one of the three.
    """
    step = session.scalar(
        select(PerformedProcedureStep)
        .where(PerformedProcedureStep.sop_instance_uid == sop_instance_uid)
        .with_for_update()
    )
    if step is None:
        raise UnknownStep(f"no performed procedure step {sop_instance_uid}")
    if step.status is not PerformedStepStatus.IN_PROGRESS:
        raise StepAlreadyFinal(f"the step is {_dicom_name(step.status)} and may no longer be updated")
    status = _step_status(modifications, required=False)
    now = utcnow()
    # Set explicitly: an N-SET that only adds series information changes no column of ours.
    step.updated_at = now
    if status in (PerformedStepStatus.COMPLETED, PerformedStepStatus.DISCONTINUED):
        step.status = status
        step.ended_at = now
        if status is PerformedStepStatus.DISCONTINUED:
            step.discontinuation_reason = _discontinuation_reason(modifications)
    session.flush()
    patient_id = step.appointment.patient_id if step.appointment is not None else None
    record_access(
        session, None, "U", AUDIT_ENTITY, step.id, patient_id=patient_id, source=AUDIT_SOURCE,
        description=f"MPPS {_dicom_name(step.status)} from {calling_ae}",
    )
    logger.info("MPPS %s from %s: %s", sop_instance_uid, calling_ae, _dicom_name(step.status))
    return step


def _step_status(ds: Dataset, *, required: bool) -> PerformedStepStatus | None:
    if "PerformedProcedureStepStatus" not in ds:
        if required:
            raise MissingStepAttribute("PerformedProcedureStepStatus is required")
        return None
    value = _text(ds, "PerformedProcedureStepStatus").upper()
    if value not in _DICOM_STATUSES:
        raise InvalidStepAttribute(f"PerformedProcedureStepStatus {value!r} is not a defined term")
    return _DICOM_STATUSES[value]


def _dicom_name(status: PerformedStepStatus) -> str:
    return next(name for name, member in _DICOM_STATUSES.items() if member is status)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip("\x00 ")


def _scheduled_keys(attributes: Dataset) -> tuple[list[str], list[str]]:
    """The AccessionNumbers and ScheduledProcedureStepIDs the step says it performs, in order."""
    accession_numbers: list[str] = []
    step_ids: list[str] = []
    for item in attributes.get("ScheduledStepAttributesSequence") or []:
        accession_numbers.append(_text(item, "AccessionNumber"))
        step_ids.append(_text(item, "ScheduledProcedureStepID"))
    return accession_numbers, step_ids


def _match_appointment(session: Session, accession_numbers: list[str], step_ids: list[str]) -> Appointment | None:
    """The live appointment of the first scheduled step item that names one unambiguously."""
    for accession_number, step_id in zip(accession_numbers, step_ids, strict=True):
        appointment = _appointment_for(session, accession_number, step_id)
        if appointment is not None:
            return appointment
    return None


def _appointment_for(session: Session, accession_number: str, step_id: str) -> Appointment | None:
    found = _STEP_ID.fullmatch(step_id)
    if found:
        appointment = session.get(Appointment, int(found.group(1)), with_for_update=True)
        referral = referral_summary(session, appointment.referral_id) if appointment and appointment.referral_id else None
        if appointment is None or referral is None:
            return None
        if accession_number and referral.accession_number != accession_number:
            logger.warning("MPPS step id names appointment %s but the accession number differs; not matched", appointment.id)
            return None
        live = appointment.status in WORKLIST_APPOINTMENT_STATUSES and referral.status in WORKLIST_REFERRAL_STATUSES
        return appointment if live else None  # a cancelled or fulfilled booking is not started again
    if not accession_number:
        return None
    return session.scalar(
        select(Appointment)
        .join(ORDERS, Appointment.referral_id == ORDERS.c.referral_id)
        .where(
            ORDERS.c.accession_number == accession_number,
            ORDERS.c.status.in_(WORKLIST_REFERRAL_STATUSES),
            Appointment.status.in_(WORKLIST_APPOINTMENT_STATUSES),
        )
        .order_by(Appointment.start, Appointment.id)
        .limit(1)
        .with_for_update(of=Appointment)
    )


def _discontinuation_reason(modifications: Dataset) -> str | None:
    """PerformedProcedureStepDiscontinuationReasonCodeSequence as "SCHEME VALUE: meaning"."""
    reasons = []
    for item in modifications.get("PerformedProcedureStepDiscontinuationReasonCodeSequence") or []:
        code = " ".join(v for v in (_text(item, "CodingSchemeDesignator"), _text(item, "CodeValue")) if v)
        meaning = _text(item, "CodeMeaning")
        reasons.append(f"{code}: {meaning}" if code and meaning else code or meaning)
    text = "; ".join(r for r in reasons if r)
    return text[:_REASON_MAX] or None
