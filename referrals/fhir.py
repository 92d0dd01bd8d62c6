"""FHIR mapping of referrals: a Referral is an imaging ServiceRequest (intent order).

Our workflow has more states than ServiceRequest.status: accepted, scheduled and in-progress are
all FHIR 'active' (the Appointment and ImagingStudy say how far it got), rejected and cancelled are
both 'revoked'.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from sqlalchemy import ColumnElement, false

from hospital.fhir.registry import (
    IDENTIFIER_SYSTEM_BASE,
    ResourceMapping,
    SearchParam,
    date_param,
    fhir_instant,
    id_param,
    identifier_param,
    patient_reference_param,
    reference,
    reference_param,
    register_resource,
)
from referrals.models import Priority, Referral, ReferralStatus

logger = logging.getLogger(__name__)

ACCESSION_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/accession"
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
        ),
    )
