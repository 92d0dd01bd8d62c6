"""FHIR mappings of the core tables: Patient, Practitioner, Organization and AuditEvent.

The audit trail is served as AuditEvent for administrators only; the other three are the people
and places every stage's resources point at.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from flask import Flask
from sqlalchemy import ColumnElement, func, or_
from sqlalchemy.orm import InstrumentedAttribute, Session, object_session

from hospital.fhir.registry import (
    CANONICAL_BASE,
    IDENTIFIER_SYSTEM_BASE,
    ResourceMapping,
    SearchParam,
    date_param,
    fhir_date,
    fhir_instant,
    id_param,
    identifier_param,
    patient_reference_param,
    reference,
    register_resource,
    token_param,
)
from hospital.models import AuditEvent, Organization, OrganizationKind, Patient, Practitioner, Role, User
from hospital.patients import PatientDetails, create_patient, update_patient

logger = logging.getLogger(__name__)

MRN_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/mrn"
AE_TITLE_SYSTEM = f"{IDENTIFIER_SYSTEM_BASE}/dicom-ae-title"
ORGANIZATION_KIND_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/organization-kind"
# R4's core extension for an IANA time zone (R5 renames it `timezone`): the centre's wall clock.
TIMEZONE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/tz-code"
ORGANIZATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/organization-type"
AUDIT_EVENT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
AUDIT_SOURCE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/security-source-type"
RESTFUL_INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
PLATFORM_NAME = "closed-loop-hospital"

FHIR_GENDERS = {"male", "female", "other", "unknown"}
GENDER_ALIASES = {"m": "male", "f": "female", "o": "other", "u": "unknown"}
ORGANIZATION_KIND_DISPLAY = {
    OrganizationKind.IMAGING_CENTRE: "Imaging centre",
    OrganizationKind.CLINIC: "Clinic",
    OrganizationKind.PHARMACY: "Pharmacy",
    OrganizationKind.HOSPITAL: "Hospital",
    OrganizationKind.AI_PARTNER: "AI partner",
}
AUDIT_SUBTYPES = {"C": "create", "R": "read", "U": "update", "D": "delete"}


def fhir_gender(value: str | None) -> str:
    """Our free-text gender as FHIR administrative gender; anything unrecognised is 'unknown'."""
    normalised = (value or "").strip().lower()
    normalised = GENDER_ALIASES.get(normalised, normalised)
    return normalised if normalised in FHIR_GENDERS else "unknown"


def patient_to_fhir(patient: Patient) -> dict[str, Any]:
    telecom = []
    if patient.phone:
        telecom.append({"system": "phone", "value": patient.phone})
    if patient.email:
        telecom.append({"system": "email", "value": patient.email})
    return {
        "resourceType": "Patient",
        "id": str(patient.id),
        "meta": {"lastUpdated": fhir_instant(patient.updated_at)},
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": MRN_SYSTEM,
                "value": patient.mrn,
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": patient.family_name, "given": [patient.given_name]}],
        "telecom": telecom or None,
        "gender": fhir_gender(patient.gender),
        "birthDate": fhir_date(patient.birth_date),
    }


def patient_details_from_fhir(resource: dict[str, Any]) -> PatientDetails:
    """A validated Patient resource as the details the patient service takes."""
    names = resource.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    telecom = resource.get("telecom") or []
    mrn = next((i.get("value") for i in resource.get("identifier") or [] if i.get("system") == MRN_SYSTEM), None)
    return PatientDetails(
        family_name=name.get("family") or "",
        given_name=" ".join(name.get("given") or []),
        birth_date=date.fromisoformat(resource["birthDate"]) if len(resource.get("birthDate") or "") == 10 else None,
        gender=resource.get("gender") or "unknown",
        phone=next((t.get("value") for t in telecom if t.get("system") == "phone"), None),
        email=next((t.get("value") for t in telecom if t.get("system") == "email"), None),
        mrn=mrn,
    )


def create_patient_from_fhir(session: Session, user: User, resource: dict[str, Any]) -> Patient:
    return create_patient(session, user, patient_details_from_fhir(resource))


def update_patient_from_fhir(session: Session, user: User, patient: Patient, resource: dict[str, Any]) -> Patient:
    return update_patient(session, user, patient.id, patient_details_from_fhir(resource))


def practitioner_to_fhir(practitioner: Practitioner) -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "id": str(practitioner.id),
        "active": True,
        "name": [{"use": "official", "family": practitioner.family_name, "given": [practitioner.given_name]}],
    }


def organization_to_fhir(organization: Organization) -> dict[str, Any]:
    identifiers = []
    if organization.ae_title:
        identifiers.append({"system": AE_TITLE_SYSTEM, "value": organization.ae_title})
    kind = OrganizationKind(organization.kind)
    return {
        "resourceType": "Organization",
        "id": str(organization.id),
        "extension": [{"url": TIMEZONE_EXTENSION, "valueCode": organization.timezone or "UTC"}],
        "identifier": identifiers or None,
        "active": True,
        "type": [
            {
                "coding": [
                    {"system": ORGANIZATION_KIND_SYSTEM, "code": kind.value, "display": ORGANIZATION_KIND_DISPLAY[kind]},
                    {"system": ORGANIZATION_TYPE_SYSTEM, "code": "prov", "display": "Healthcare Provider"}
                    if kind is not OrganizationKind.AI_PARTNER else
                    {"system": ORGANIZATION_TYPE_SYSTEM, "code": "bus", "display": "Non-Healthcare Business or Corporation"},
                ],
                "text": ORGANIZATION_KIND_DISPLAY[kind],
            }
        ],
        "name": organization.name,
    }


def audit_event_to_fhir(event: AuditEvent, requester: User | None = None) -> dict[str, Any]:
    """The audit record as a FHIR AuditEvent (RESTful operation).

    `requester` is the user behind `event.user_id`; when not given it is loaded through the
    session the event came from (AuditEvent has no relationship to keep the table append-only
    and narrow).
    """
    if requester is None and event.user_id is not None:
        session = object_session(event)
        requester = session.get(User, event.user_id) if session is not None else None
    subtype = AUDIT_SUBTYPES.get(event.action)
    # A search touches no single record: then the entity names only the type searched.
    entity: dict[str, Any] = {"what": reference(event.entity_type, event.entity_id), "description": event.description}
    if _is_fhir_type(event.entity_type):
        entity["type"] = {"system": RESOURCE_TYPES_SYSTEM, "code": event.entity_type}
    else:
        entity["name"] = event.entity_type
    entities = [entity]
    if event.patient_id is not None and not (event.entity_type == "Patient" and event.entity_id == str(event.patient_id)):
        entities.append(
            {
                "what": reference("Patient", event.patient_id),
                "role": {"system": OBJECT_ROLE_SYSTEM, "code": "1", "display": "Patient"},
            }
        )
    return {
        "resourceType": "AuditEvent",
        "id": str(event.id),
        "type": {"system": AUDIT_EVENT_TYPE_SYSTEM, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION_SYSTEM, "code": subtype}] if subtype else None,
        "action": event.action,
        "recorded": fhir_instant(event.recorded_at),
        "outcome": str(event.outcome),
        "outcomeDesc": event.description if event.outcome != 0 else None,
        "agent": [_audit_agent(event, requester)],
        "source": {
            "observer": {"display": f"{PLATFORM_NAME} ({event.source})" if event.source else PLATFORM_NAME},
            "type": [{"system": AUDIT_SOURCE_TYPE_SYSTEM, "code": "4", "display": "Application Server"}],
        },
        "entity": entities,
    }


def _audit_agent(event: AuditEvent, requester: User | None) -> dict[str, Any]:
    if event.user_id is None:
        return {"who": {"display": f"{PLATFORM_NAME} (system)"}, "requestor": True}
    if requester is None:
        return {"who": {"display": f"user {event.user_id}"}, "requestor": True}
    if requester.practitioner_id is not None:
        who = reference("Practitioner", requester.practitioner_id, requester.username)
    elif requester.patient_id is not None:
        who = reference("Patient", requester.patient_id, requester.username)
    else:
        who = {"display": requester.username}
    return {
        "type": {"text": Role(requester.role).value},
        "who": who,
        "altId": requester.username,
        "requestor": True,
    }


def _is_fhir_type(type_name: str) -> bool:
    try:
        get_fhir_model_class(type_name)
    except ValueError:
        return False
    return True


def string_param(*columns: InstrumentedAttribute[str], documentation: str = "") -> SearchParam:
    """FHIR string search: case-insensitive 'starts with' on any of the columns."""

    def clause(value: str) -> ColumnElement[bool]:
        # lower() on both sides rather than ILIKE: a prefix LIKE on lower(column) uses its index.
        pattern = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return or_(*(func.lower(column).like(pattern, escape="\\") for column in columns))

    return SearchParam("string", clause, documentation)


def gender_param() -> SearchParam:
    def clause(value: str) -> ColumnElement[bool]:
        gender = value.split("|")[-1]
        if gender == "unknown":
            return Patient.gender.notin_(FHIR_GENDERS - {"unknown"})
        return Patient.gender == gender

    return SearchParam("token", clause, "male | female | other | unknown")


def register_fhir(app: Flask) -> None:
    register_resource(
        app,
        ResourceMapping(
            "Patient",
            Patient,
            patient_to_fhir,
            Patient.id,
            {
                "_id": id_param(Patient.id),
                "identifier": identifier_param(Patient.mrn, MRN_SYSTEM, "Medical record number"),
                "family": string_param(Patient.family_name, documentation="Family name, starts with"),
                "given": string_param(Patient.given_name, documentation="Given name, starts with"),
                "name": string_param(Patient.family_name, Patient.given_name, documentation="Any name part, starts with"),
                "birthdate": date_param(Patient.birth_date, "Date of birth"),
                "gender": gender_param(),
            },
            create=create_patient_from_fhir,
            update=update_patient_from_fhir,
        ),
    )
    register_resource(
        app,
        ResourceMapping(
            "Practitioner",
            Practitioner,
            practitioner_to_fhir,
            None,
            {
                "_id": id_param(Practitioner.id),
                "family": string_param(Practitioner.family_name, documentation="Family name, starts with"),
                "name": string_param(
                    Practitioner.family_name, Practitioner.given_name, documentation="Any name part, starts with"
                ),
            },
        ),
    )
    register_resource(
        app,
        ResourceMapping(
            "Organization",
            Organization,
            organization_to_fhir,
            None,
            {
                "_id": id_param(Organization.id),
                "name": string_param(Organization.name, documentation="Name, starts with"),
                "type": token_param(Organization.kind, f"Organisation kind ({ORGANIZATION_KIND_SYSTEM})"),
                "identifier": identifier_param(Organization.ae_title, AE_TITLE_SYSTEM, "DICOM AE title"),
            },
        ),
    )
    register_resource(
        app,
        ResourceMapping(
            "AuditEvent",
            AuditEvent,
            audit_event_to_fhir,
            AuditEvent.patient_id,
            {
                "_id": id_param(AuditEvent.id),
                "patient": patient_reference_param(AuditEvent.patient_id, "entity"),
                "date": date_param(AuditEvent.recorded_at, "When the event was recorded"),
                "action": token_param(AuditEvent.action, "C | R | U | D | E"),
                "outcome": SearchParam(
                    "token", lambda value: AuditEvent.outcome == _outcome_code(value), "0 | 4 | 8 | 12"
                ),
            },
            read_roles=frozenset({Role.ADMIN}),
            append_only_at=AuditEvent.recorded_at,
        ),
    )


def _outcome_code(value: str) -> int:
    code = value.split("|")[-1]
    if code not in {"0", "4", "8", "12"}:
        raise ValueError(f"audit outcome must be 0, 4, 8 or 12, got {code!r}")
    return int(code)
