"""FHIR mappings of the imaging centre: Schedule, Slot, Appointment and ImagingStudy.

A schedule is one modality in one room; the platform keeps no Location table, so the room and the
modality appear as display-only actor references. An ImagingStudy that no referral claimed yet has
no patient: its subject is then a display-only reference carrying what the DICOM headers said.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from sqlalchemy import ColumnElement, false, or_
from sqlalchemy.orm import Session

from hospital.errors import InvalidInput, UnprocessableEntity
from hospital.fhir.core_resources import AE_TITLE_SYSTEM
from hospital.fhir.registry import (
    ResourceMapping,
    SearchParam,
    date_param,
    fhir_instant,
    id_param,
    patient_reference_param,
    reference,
    reference_param,
    referenced_id,
    register_resource,
    token_param,
)
from hospital.models import User
from imaging_orders.archive.models import ImagingSeries, ImagingStudy
from imaging_orders.models import Appointment, Schedule, Slot
from imaging_orders.service import book_appointment, cancel_appointment, move_appointment
from referrals.public import ACCESSION_SYSTEM, DICOM_MODALITY_SYSTEM, referral_accession_identifier

logger = logging.getLogger(__name__)

DICOM_UID_SYSTEM = "urn:dicom:uid"
URI_SYSTEM = "urn:ietf:rfc:3986"
OID_PREFIX = "urn:oid:"


def modality_coding(modality: str) -> dict[str, Any]:
    return {"system": DICOM_MODALITY_SYSTEM, "code": modality}


def schedule_to_fhir(schedule: Schedule) -> dict[str, Any]:
    return {
        "resourceType": "Schedule",
        "id": str(schedule.id),
        "identifier": [{"system": AE_TITLE_SYSTEM, "value": schedule.station_ae_title}],
        "active": bool(schedule.active),
        "serviceType": [{"coding": [modality_coding(schedule.modality)], "text": f"{schedule.modality} imaging"}],
        "actor": [
            {"type": "Location", "display": f"{schedule.room} ({schedule.modality})"},
            {
                "type": "Device",
                "identifier": {"system": AE_TITLE_SYSTEM, "value": schedule.station_ae_title},
                "display": f"{schedule.modality} modality {schedule.station_ae_title}",
            },
        ],
        "comment": schedule.name,
    }


def slot_to_fhir(slot: Slot) -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": str(slot.id),
        "schedule": reference("Schedule", slot.schedule_id),
        "status": slot.status.value if slot.status is not None else "free",
        "start": fhir_instant(slot.start),
        "end": fhir_instant(slot.end),
    }


def appointment_to_fhir(appointment: Appointment) -> dict[str, Any]:
    participants: list[dict[str, Any]] = [
        {"actor": reference("Patient", appointment.patient_id), "required": "required", "status": "accepted"}
    ]
    slot = appointment.slot
    if slot is not None and slot.schedule is not None:
        participants.append(
            {
                "actor": {"type": "Location", "display": f"{slot.schedule.room} ({slot.schedule.modality})"},
                "required": "required",
                "status": "accepted",
            }
        )
    return {
        "resourceType": "Appointment",
        "id": str(appointment.id),
        "status": appointment.status.value,
        "description": appointment.description,
        "start": fhir_instant(appointment.start),
        "end": fhir_instant(appointment.end),
        "created": fhir_instant(appointment.created_at),
        "slot": [reference("Slot", appointment.slot_id)] if appointment.slot_id is not None else None,
        "basedOn": [reference("ServiceRequest", appointment.referral_id)] if appointment.referral_id is not None else None,
        "participant": participants,
    }


def book_appointment_from_fhir(session: Session, user: User, resource: dict[str, Any]) -> Appointment:
    """An Appointment for a Slot and a ServiceRequest (basedOn): booked by the booking service,
    which decides the times, the patient and the description from the slot and the referral."""
    if resource.get("status") not in ("booked", "proposed", "pending"):
        raise InvalidInput("a new Appointment must be booked (or proposed/pending)")
    referral_id = referenced_id(resource, "basedOn", "ServiceRequest")
    slot_id = referenced_id(resource, "slot", "Slot")
    return book_appointment(session, user, referral_id, slot_id)


def update_appointment_from_fhir(
    session: Session, user: User, appointment: Appointment, resource: dict[str, Any]
) -> Appointment:
    """PUT Appointment: `status: cancelled` cancels it, a different `slot` moves it; both through
    the same services as the pages. Nothing else about a booking is the client's to change."""
    status = resource.get("status")
    if status == "cancelled":
        return cancel_appointment(session, user, appointment.id)
    if status != appointment.status.value:
        raise UnprocessableEntity(f"Appointment.status can only become 'cancelled' through FHIR, not {status!r}")
    slot_id = referenced_id(resource, "slot", "Slot")
    if slot_id != appointment.slot_id:
        return move_appointment(session, user, appointment.id, slot_id)
    return appointment


def study_uid_identifier(uid: str) -> dict[str, Any]:
    return {"system": DICOM_UID_SYSTEM, "value": f"{OID_PREFIX}{uid}"}


def imaging_study_to_fhir(study: ImagingStudy) -> dict[str, Any]:
    identifiers = [study_uid_identifier(study.study_instance_uid)]
    if study.accession_number:
        identifiers.append(referral_accession_identifier(study.accession_number))
    series = [_series_to_fhir(s) for s in study.series]
    modalities = list(dict.fromkeys(s.modality for s in study.series))
    return {
        "resourceType": "ImagingStudy",
        "id": str(study.id),
        "identifier": identifiers,
        "status": study.status.value,
        "modality": [modality_coding(m) for m in modalities] or None,
        "subject": _study_subject(study),
        "basedOn": [reference("ServiceRequest", study.referral_id)] if study.referral_id is not None else None,
        "started": fhir_instant(study.started),
        "numberOfSeries": len(series),
        "numberOfInstances": sum(len(s.instances) for s in study.series),
        "description": study.description,
        "series": series or None,
    }


def _study_subject(study: ImagingStudy) -> dict[str, Any]:
    if study.patient_id is not None:
        return {"reference": f"Patient/{study.patient_id}"}
    # Unmatched: ImagingStudy.subject is required, so say who the headers claim it is.
    subject: dict[str, Any] = {
        "type": "Patient",
        "display": f"Unmatched study: PatientID {study.dicom_patient_id or '?'}, "
        f"PatientName {study.dicom_patient_name or '?'}",
    }
    if study.dicom_patient_id:
        subject["identifier"] = {"value": study.dicom_patient_id}
    return subject


def _series_to_fhir(series: ImagingSeries) -> dict[str, Any]:
    return {
        "uid": series.series_instance_uid,
        "number": series.number,
        "modality": modality_coding(series.modality),
        "description": series.description,
        "numberOfInstances": len(series.instances),
        # DICOM BodyPartExamined terms have no FHIR code system URI; carried as display.
        "bodySite": {"display": series.body_part} if series.body_part else None,
        "instance": [
            {
                "uid": instance.sop_instance_uid,
                "sopClass": {"system": URI_SYSTEM, "code": f"{OID_PREFIX}{instance.sop_class_uid}"},
                "number": instance.number,
            }
            for instance in series.instances
        ]
        or None,
    }


def imaging_study_identifier_param() -> SearchParam:
    """Study Instance UID (urn:dicom:uid|urn:oid:1.2...) or accession number; no system: either."""

    def clause(value: str) -> ColumnElement[bool]:
        system, bar, code = value.rpartition("|")
        uid = code.removeprefix(OID_PREFIX)
        if not bar:
            return or_(ImagingStudy.study_instance_uid == uid, ImagingStudy.accession_number == code)
        if system == DICOM_UID_SYSTEM:
            return ImagingStudy.study_instance_uid == uid
        if system == ACCESSION_SYSTEM:
            return ImagingStudy.accession_number == code
        return false()

    return SearchParam("token", clause, "Study Instance UID (urn:dicom:uid) or accession number")


def register_fhir(app: Flask) -> None:
    register_resource(
        app,
        ResourceMapping(
            "Schedule",
            Schedule,
            schedule_to_fhir,
            None,
            {
                "_id": id_param(Schedule.id),
                "active": SearchParam("token", lambda value: Schedule.active == (value == "true"), "true | false"),
                "service-type": token_param(Schedule.modality, "DICOM modality code"),
            },
        ),
    )
    register_resource(
        app,
        ResourceMapping(
            "Slot",
            Slot,
            slot_to_fhir,
            None,
            {
                "_id": id_param(Slot.id),
                "schedule": reference_param(Slot.schedule_id, "Schedule", "The schedule the slot belongs to"),
                "status": token_param(Slot.status, "free | busy | busy-unavailable"),
                "start": date_param(Slot.start, "Slot start time (eq, ne, gt, lt, ge, le, sa, eb)"),
            },
        ),
    )
    appointment_patient = patient_reference_param(Appointment.patient_id, "participant")
    register_resource(
        app,
        ResourceMapping(
            "Appointment",
            Appointment,
            appointment_to_fhir,
            Appointment.patient_id,
            {
                "_id": id_param(Appointment.id),
                "patient": appointment_patient,
                "actor": appointment_patient,
                "status": token_param(Appointment.status, "booked | arrived | fulfilled | cancelled | noshow"),
                "based-on": reference_param(Appointment.referral_id, "ServiceRequest", "The referral it fulfils"),
                "slot": reference_param(Appointment.slot_id, "Slot", "The booked slot"),
                "date": date_param(Appointment.start, "Appointment start time"),
            },
            create=book_appointment_from_fhir,
            update=update_appointment_from_fhir,
        ),
    )
    study_patient = patient_reference_param(ImagingStudy.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "ImagingStudy",
            ImagingStudy,
            imaging_study_to_fhir,
            ImagingStudy.patient_id,
            unversioned_columns=frozenset({"last_instance_at"}),
            search_params={
                "_id": id_param(ImagingStudy.id),
                "patient": study_patient,
                "subject": study_patient,
                "status": token_param(ImagingStudy.status, "registered | available | cancelled"),
                "identifier": imaging_study_identifier_param(),
                "based-on": reference_param(ImagingStudy.referral_id, "ServiceRequest", "The referral it fulfils"),
                "started": date_param(ImagingStudy.started, "When the study started"),
            },
        ),
    )
