"""FHIR mapping of referrals: a Referral is an imaging ServiceRequest (intent order).

Our workflow has more states than ServiceRequest.status: accepted, scheduled and in-progress are
all FHIR 'active' (the Appointment and ImagingStudy say how far it got), rejected and cancelled are
both 'revoked'.

A clinician who refers a patient not yet in their care says why they may open the record in an
extension (`ACCESS_REASON_EXTENSION`, valueString) on the ServiceRequest: reasonCode is the clinical
question for the radiologist, this is the access justification the audit trail keeps.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from sqlalchemy import ColumnElement, false
from sqlalchemy.orm import Session

from hospital.errors import InvalidInput, UnprocessableEntity
from hospital.fhir.registry import (
    CANONICAL_BASE,
    IDENTIFIER_SYSTEM_BASE,
    ResourceMapping,
    SearchParam,
    coding_code,
    date_param,
    fhir_instant,
    first_text,
    id_param,
    identifier_param,
    patient_reference_param,
    reference,
    reference_param,
    referenced_id,
    register_resource,
)
from hospital.models import User
from referrals.models import Priority, Referral, ReferralStatus
from referrals.service import ReferralRequest, cancel_referral, create_referral

logger = logging.getLogger(__name__)

ACCESSION_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/accession"
ACCESS_REASON_EXTENSION = f"{CANONICAL_BASE}/StructureDefinition/access-reason"
DICOM_MODALITY_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
IMAGING_CATEGORY = {"coding": [{"system": SNOMED, "code": "363679005", "display": "Imaging"}], "text": "Imaging"}
ACCESSION_TYPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN", "display": "Accession ID"}]
}

FHIR_STATUS = {
    ReferralStatus.ACTIVE: "active",
    ReferralStatus.ACCEPTED: "active",
    ReferralStatus.SCHEDULED: "active",
    ReferralStatus.IN_PROGRESS: "active",
    ReferralStatus.COMPLETED: "completed",
    ReferralStatus.REJECTED: "revoked",
    ReferralStatus.CANCELLED: "revoked",
}
STATUSES_BY_FHIR: dict[str, list[ReferralStatus]] = {}
for _ours, _theirs in FHIR_STATUS.items():
    STATUSES_BY_FHIR.setdefault(_theirs, []).append(_ours)


def referral_accession_identifier(accession_number: str) -> dict[str, Any]:
    """The accession number as an identifier; ImagingStudy uses the same one."""
    return {"use": "usual", "type": ACCESSION_TYPE, "system": ACCESSION_SYSTEM, "value": accession_number}


def service_request_to_fhir(referral: Referral) -> dict[str, Any]:
    status = ReferralStatus(referral.status)
    return {
        "resourceType": "ServiceRequest",
        "id": str(referral.id),
        "meta": {"lastUpdated": fhir_instant(referral.updated_at)},
        "identifier": [referral_accession_identifier(referral.accession_number)] if referral.accession_number else None,
        "replaces": [reference("ServiceRequest", referral.replaces_referral_id)] if referral.replaces_referral_id else None,
        "status": FHIR_STATUS[status],
        "intent": "order",
        "category": [IMAGING_CATEGORY],
        "priority": Priority(referral.priority).value if referral.priority is not None else None,
        "code": {
            "coding": [{"system": DICOM_MODALITY_SYSTEM, "code": referral.modality}],
            "text": referral.procedure_description,
        },
        "subject": reference("Patient", referral.patient_id),
        "authoredOn": fhir_instant(referral.created_at),
        "requester": reference("Practitioner", referral.requester_id),
        "performer": [reference("Organization", referral.performer_organization_id)],
        "reasonCode": [{"text": referral.reason}],
        "bodySite": [{"text": referral.body_part}],
        # Why it was rejected or cancelled: ServiceRequest has no statusReason in R4.
        "note": [{"text": f"{status.value}: {referral.status_reason}"}] if referral.status_reason else None,
    }


def referral_request_from_fhir(resource: dict[str, Any]) -> ReferralRequest:
    """A validated ServiceRequest as the referral the clinician's service creates."""
    code = resource.get("code") or {}
    modality = coding_code(code, DICOM_MODALITY_SYSTEM) or coding_code(code) or ""
    priority = resource.get("priority") or Priority.ROUTINE.value
    try:
        referral_priority = Priority(priority)
    except ValueError as exc:
        raise InvalidInput(f"priority {priority!r} is not one of {[p.value for p in Priority]}") from exc
    reason = first_text(resource.get("reasonCode")) or " ".join(n.get("text", "") for n in resource.get("note") or [])
    return ReferralRequest(
        patient_id=referenced_id(resource, "subject", "Patient"),
        performer_organization_id=referenced_id(resource, "performer", "Organization"),
        modality=modality,
        body_part=first_text(resource.get("bodySite")),
        procedure_description=code.get("text") or "",
        reason=reason,
        priority=referral_priority,
        access_reason=next((str(e.get("valueString") or "") for e in resource.get("extension") or []
                            if e.get("url") == ACCESS_REASON_EXTENSION), None),
    )


def create_service_request(session: Session, user: User, resource: dict[str, Any]) -> Referral:
    if resource.get("status") not in (None, "active", "draft"):
        raise InvalidInput("a new ServiceRequest must be active")
    return create_referral(session, user, referral_request_from_fhir(resource))


def update_service_request(session: Session, user: User, referral: Referral, resource: dict[str, Any]) -> Referral:
    """The one update the workflow allows a client: revoking (cancelling) the referral. Any other
    change is refused rather than silently dropped."""
    wanted = referral_request_from_fhir(resource)
    current = ReferralRequest(
        patient_id=referral.patient_id, performer_organization_id=referral.performer_organization_id,
        modality=referral.modality, body_part=referral.body_part, procedure_description=referral.procedure_description,
        reason=referral.reason, priority=Priority(referral.priority),
    )
    changed = [
        name for name in ("patient_id", "performer_organization_id", "modality", "priority")
        if getattr(wanted, name) != getattr(current, name)
    ]
    if changed:
        raise UnprocessableEntity(f"only the status of a ServiceRequest can change (to revoked); not {changed}")
    status = resource.get("status")
    if status == FHIR_STATUS[ReferralStatus(referral.status)]:
        return referral
    if status != "revoked":
        raise UnprocessableEntity(f"a ServiceRequest can only be revoked by a client, not set to {status!r}")
    notes = [n.get("text", "") for n in resource.get("note") or [] if n.get("text")]
    return cancel_referral(session, user, referral.id, notes[-1] if notes else "cancelled through FHIR")


def service_request_status_param() -> SearchParam:
    def clause(value: str) -> ColumnElement[bool]:
        statuses = STATUSES_BY_FHIR.get(value.split("|")[-1])
        return Referral.status.in_(statuses) if statuses else false()

    return SearchParam("token", clause, "active | completed | revoked")


def register_fhir(app: Flask) -> None:
    patient = patient_reference_param(Referral.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "ServiceRequest",
            Referral,
            service_request_to_fhir,
            Referral.patient_id,
            {
                "_id": id_param(Referral.id),
                "patient": patient,
                "subject": patient,
                "status": service_request_status_param(),
                "identifier": identifier_param(Referral.accession_number, ACCESSION_SYSTEM, "Accession number"),
                "requester": reference_param(Referral.requester_id, "Practitioner", "The referring practitioner"),
                "performer": reference_param(
                    Referral.performer_organization_id, "Organization", "The imaging centre asked to perform it"
                ),
                "authored": date_param(Referral.created_at, "When the referral was written"),
            },
            create=create_service_request,
            update=update_service_request,
        ),
    )
