"""Research consent as FHIR Consent (R4, validated through fhir.resources' R4B models).

One Consent per choice the patient made: the current one is `active`, earlier ones `inactive`;
`provision.type` says permit or deny for the purpose HRESCH (research)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from hospital.fhir.registry import (
    ResourceMapping,
    date_param,
    fhir_instant,
    id_param,
    patient_reference_param,
    reference,
    register_resource,
)
from hospital.models import Role
from research.models import ResearchConsent

logger = logging.getLogger(__name__)

CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def consent_to_fhir(consent: ResearchConsent) -> dict[str, Any]:
    permit = consent.decision.value == "permit"
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": str(consent.id),
        "meta": {"lastUpdated": fhir_instant(consent.superseded_at or consent.recorded_at)},
        "status": "inactive" if consent.superseded_at else "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": "research", "display": "Research"}]},
        "category": [{"coding": [{"system": ACT_CODE_SYSTEM, "code": "RESEARCH", "display": "research information access"}],
                      "text": "Use of my images for research"}],
        "patient": reference("Patient", consent.patient_id),
        "dateTime": fhir_instant(consent.recorded_at),
        "policyRule": {"coding": [{"system": ACT_CODE_SYSTEM, "code": "OPTIN" if permit else "OPTOUT"}]},
        "provision": {
            "type": "permit" if permit else "deny",
            "purpose": [{"system": ACT_REASON_SYSTEM, "code": "HRESCH", "display": "healthcare research"}],
        },
    }
    if consent.superseded_at:
        resource["provision"]["period"] = {"start": fhir_instant(consent.recorded_at),
                                           "end": fhir_instant(consent.superseded_at)}
    return resource


def register_fhir(app: Flask) -> None:
    patient = patient_reference_param(ResearchConsent.patient_id, path="patient")
    register_resource(
        app,
        ResourceMapping(
            "Consent",
            ResearchConsent,
            consent_to_fhir,
            ResearchConsent.patient_id,
            {
                "_id": id_param(ResearchConsent.id),
                "patient": patient,
                "date": date_param(ResearchConsent.recorded_at, "When the patient made the choice"),
            },
            read_roles=frozenset({Role.PATIENT, Role.ADMIN}),
        ),
    )
