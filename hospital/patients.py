"""Patient registration and demographic updates: the one place a Patient row is written.

Clinicians and administrators register patients (a referral needs one); a patient may correct
their own contact details; a clinician or administrator who may see a patient may update them.
The medical record number is the key DICOM headers carry, so it is fixed once assigned.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.access import can_access_patient, ensure_patient_access
from hospital.audit import record_access
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound, UnprocessableEntity
from hospital.models import Patient, Role, User

logger = logging.getLogger(__name__)

REGISTERING_ROLES = frozenset({Role.CLINICIAN, Role.ADMIN})
GENDERS = frozenset({"male", "female", "other", "unknown"})


@dataclass(frozen=True)
class PatientDetails:
    family_name: str
    given_name: str
    birth_date: date | None = None
    gender: str = "unknown"
    phone: str | None = None
    email: str | None = None
    mrn: str | None = None  # None: the platform assigns one


def _checked(details: PatientDetails) -> PatientDetails:
    if not details.family_name.strip() or not details.given_name.strip():
        raise InvalidInput("a patient needs a family name and a given name")
    if details.gender not in GENDERS:
        raise InvalidInput(f"gender must be one of {sorted(GENDERS)}, got {details.gender!r}")
    if details.birth_date is not None and details.birth_date > date.today():
        raise InvalidInput(f"birth date {details.birth_date} is in the future")
    return details


def new_mrn() -> str:
    return f"MRN-{secrets.token_hex(5).upper()}"


def create_patient(session: Session, user: User, details: PatientDetails) -> Patient:
    if user.role not in REGISTERING_ROLES:
        raise Forbidden("only clinicians and administrators register patients")
    details = _checked(details)
    mrn = (details.mrn or "").strip() or new_mrn()
    existing_id = session.scalar(select(Patient.id).where(Patient.mrn == mrn))
    if existing_id is not None:
        _refuse_taken_mrn(session, user, existing_id, mrn)
    patient = Patient(
        mrn=mrn, family_name=details.family_name.strip(), given_name=details.given_name.strip(),
        birth_date=details.birth_date, gender=details.gender, phone=details.phone, email=details.email,
    )
    session.add(patient)
    session.flush()
    record_access(session, user, "C", "Patient", patient.id, patient_id=patient.id)
    return patient


def _refuse_taken_mrn(session: Session, user: User, existing_id: int, mrn: str) -> None:
    """Say that `mrn` is taken without telling someone who may not see that patient whose it is.
    That the MRN is in use cannot be hidden (it is unique), but the answer names neither the MRN
    nor the record, and is the same whatever the client sent it through (page, FHIR, a conditional
    create whose If-None-Exist found nothing the caller may see)."""
    if can_access_patient(session, user, existing_id):
        raise Conflict(f"a patient with MRN {mrn} already exists")
    logger.info("user %s tried to register an MRN already in use outside their care", user.id)
    raise UnprocessableEntity("this medical record number cannot be used; leave it empty to have one assigned")


def update_patient(session: Session, user: User, patient_id: int, details: PatientDetails) -> Patient:
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise NotFound(f"patient {patient_id} does not exist")
    ensure_patient_access(session, user, patient.id, "Patient", patient.id, "U")
    if user.role not in REGISTERING_ROLES and not (user.role is Role.PATIENT and user.patient_id == patient.id):
        raise Forbidden("only the patient, their clinicians or an administrator may update this record")
    details = _checked(details)
    if details.mrn is not None and details.mrn != patient.mrn:
        raise InvalidInput(f"the MRN {patient.mrn} cannot be changed")
    patient.family_name = details.family_name.strip()
    patient.given_name = details.given_name.strip()
    patient.birth_date = details.birth_date
    patient.gender = details.gender
    patient.phone = details.phone
    patient.email = details.email
    record_access(session, user, "U", "Patient", patient.id, patient_id=patient.id)
    return patient
