"""Least privilege: which kinds of patient record each role may see, as one table.

The patient compartment (`hospital.access`) answers *whose* record a user may see, through the care
relationships each stage registers. This table answers *which parts* of that record: a role reads
only the resource types listed for it, whatever relationship opened the patient's record. It is
enforced where the compartment check happens (`ensure_patient_access`, `patient_filter`), so the
API, FHIR (read, search, _include, _revinclude, history, Bundles), DICOMweb and the pages obey the
same rows. Records that belong to no patient (catalog, schedules, organisations) are governed by
role guards alone and are not listed here.

Resource types are the FHIR type names the record is served as; the pages and APIs pass the same
names to the access check ("DiagnosticReport", "ImagingStudy", "Invoice", ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hospital.models import Role

logger = logging.getLogger(__name__)

# Every patient-bound type the role may read (within the patients its relationship opens).
EVERY_TYPE: frozenset[str] = frozenset({"*"})


@dataclass(frozen=True)
class Grant:
    role: Role
    resource_types: frozenset[str]
    # The relationship that opens a patient's record to this role, in words (README, admin pages).
    relationship: str


# What each kind of work needs to see of a record it may open.
IMAGING_RECORD: frozenset[str] = frozenset(
    {"Patient", "ServiceRequest", "Appointment", "ImagingStudy", "DiagnosticReport", "DocumentReference", "Observation"}
)
CARE_RECORD: frozenset[str] = IMAGING_RECORD | frozenset(
    {"Encounter", "Communication", "CarePlan", "Task", "MedicationRequest", "MedicationDispense"}
)

POLICY: tuple[Grant, ...] = (
    Grant(Role.ADMIN, EVERY_TYPE, "every patient; every access is audited"),
    Grant(Role.PATIENT, EVERY_TYPE, "their own record only"),
    # The care record, not the bills: charges and invoices are the patient's and the billing office's.
    Grant(Role.CLINICIAN, CARE_RECORD,
          "an active care relationship: their own referral that is live or completed within "
          "CARE_RELATIONSHIP_DAYS, or a consultation they hold that is open or ended within "
          "CARE_RELATIONSHIP_DAYS; or their own emergency access grant for EMERGENCY_ACCESS_MINUTES"),
    # The examination and its reading: not the consultation, its messages, prescriptions or bills.
    Grant(Role.IMAGING_STAFF, IMAGING_RECORD, "an order to their centre that is live or was performed there"),
    Grant(Role.RADIOLOGIST, IMAGING_RECORD, "an order to their centre that is live or was performed there; or "
          "their own emergency access grant for EMERGENCY_ACCESS_MINUTES"),
    # Dispensing needs the prescription, what was dispensed, and who the patient is; not images,
    # reports, results, bills or visits.
    Grant(Role.PHARMACIST, frozenset({"Patient", "MedicationRequest", "MedicationDispense"}),
          "a prescription sent to their pharmacy"),
    # An AI partner sees its own model packages and statements, never a patient's record.
    Grant(Role.PARTNER, frozenset(), "none: their organisation's model packages and statements only"),
    # A research contributor uploads to the research database and sees its own uploads, no record.
    Grant(Role.CONTRIBUTOR, frozenset(), "none: their own research contributions only"),
)

_TYPES_BY_ROLE: dict[Role, frozenset[str]] = {grant.role: grant.resource_types for grant in POLICY}


def may_see_type(role: Role, resource_type: str) -> bool:
    """Whether `role` may see patient records of `resource_type` at all (a role not in the table
    sees none)."""
    allowed = _TYPES_BY_ROLE.get(role, frozenset())
    return allowed is EVERY_TYPE or resource_type in allowed


def grant_for(role: Role) -> Grant | None:
    return next((grant for grant in POLICY if grant.role is role), None)
