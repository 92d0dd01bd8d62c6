"""Patient registration and demographic updates: the one place a Patient row is written.

Clinicians and administrators register patients (a referral needs one); a patient may correct
their own contact details; a clinician or administrator who may see a patient may update them.
The medical record number is the key DICOM headers carry, so it is fixed once assigned.

Another hospital's system (HL7 v2 ADT and orders, `integration/`) registers and updates patients
too, with no user behind it: the `*_from_interface` functions, audited with the interface as their
source. Two records of one person are merged (ADT^A40) by `merge_patients`, which moves every row
that names the merged record to the surviving one (see its docstring for what stays).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Column, Table, select, update
from sqlalchemy.orm import Session

from hospital.access import can_access_patient, ensure_patient_access
from hospital.audit import record_access
from hospital.db import Base
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound, UnprocessableEntity
from hospital.i18n import gettext as _
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
        raise InvalidInput(_("a patient needs a family name and a given name"))
    if details.gender not in GENDERS:
        raise InvalidInput(_("gender must be one of %(choices)s, got %(value)s", choices=", ".join(sorted(GENDERS)),
                             value=repr(details.gender)))
    if details.birth_date is not None and details.birth_date > date.today():
        raise InvalidInput(_("birth date %(date)s is in the future", date=details.birth_date.isoformat()))
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
        raise Conflict(_("a patient with MRN %(mrn)s already exists", mrn=mrn))
    logger.info("user %s tried to register an MRN already in use outside their care", user.id)
    raise UnprocessableEntity(_("this medical record number cannot be used; leave it empty to have one assigned"))


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


# --- registration by another system (HL7 ADT, orders) -------------------------------------------


def find_patient_by_mrn(session: Session, mrn: str) -> Patient | None:
    """The patient known by `mrn`; a record merged into another answers with the survivor, so a
    sender still using the old MRN reaches the right person."""
    patient = session.scalar(select(Patient).where(Patient.mrn == mrn))
    seen: set[int] = set()
    while patient is not None and patient.merged_into_id is not None and patient.id not in seen:
        seen.add(patient.id)
        patient = session.get(Patient, patient.merged_into_id)
    return patient


def register_patient_from_interface(session: Session, details: PatientDetails, *, source: str,
                                    description: str) -> Patient:
    """A patient registered by another system, under the MRN that system gave (required: it is how
    that system names the patient in every later message)."""
    details = _checked(details)
    mrn = (details.mrn or "").strip()
    if not mrn:
        raise InvalidInput("a patient registered by another system needs its MRN")
    if session.scalar(select(Patient.id).where(Patient.mrn == mrn)) is not None:
        raise Conflict(f"a patient with MRN {mrn} already exists")
    patient = Patient(
        mrn=mrn, family_name=details.family_name.strip(), given_name=details.given_name.strip(),
        birth_date=details.birth_date, gender=details.gender, phone=details.phone, email=details.email,
    )
    session.add(patient)
    session.flush()
    record_access(session, None, "C", "Patient", patient.id, patient_id=patient.id, source=source,
                  description=description)
    return patient


def update_patient_from_interface(session: Session, patient_id: int, details: PatientDetails, *, source: str,
                                  description: str) -> Patient:
    """Demographics as another system now has them (the whole record: the caller fills in what the
    message left out from the current values). The MRN is never changed here."""
    patient = session.get(Patient, patient_id, with_for_update=True)
    if patient is None:
        raise NotFound(f"patient {patient_id} does not exist")
    details = _checked(details)
    patient.family_name = details.family_name.strip()
    patient.given_name = details.given_name.strip()
    patient.birth_date = details.birth_date
    patient.gender = details.gender
    patient.phone = details.phone
    patient.email = details.email
    session.flush()
    record_access(session, None, "U", "Patient", patient.id, patient_id=patient.id, source=source,
                  description=description)
    return patient


# What a merge leaves with the merged record: the audit trail (append-only, and it must still say
# whose record was opened then), emergency access grants (each was an accountable act about that
# record), and the merge link itself.
KEPT_ON_MERGE = frozenset({("audit_event", "patient_id"), ("emergency_access", "patient_id"),
                           ("patient", "merged_into_id")})


def patient_references() -> list[tuple[Table, Column[int]]]:
    """Every (table, column) whose foreign key names a patient, across all mapped tables, less
    `KEPT_ON_MERGE`: what a merge moves. Read from the metadata, so a table a stage adds later
    follows a merge without this module naming it."""
    found: list[tuple[Table, Column[int]]] = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            if fk.column.table.name == "patient" and (table.name, fk.parent.name) not in KEPT_ON_MERGE:
                found.append((table, fk.parent))
    return found


def merge_patients(session: Session, surviving_id: int, merged_id: int, *, source: str,
                   description: str) -> dict[str, int]:
    """Merge the record `merged_id` into `surviving_id` (two records of one person).

    Everything that names the merged patient moves to the survivor: referrals (and with them the
    worklist), archive studies, appointments, reports and findings, consultations, plans,
    prescriptions, charges and invoices, portal accounts, results sent out: every foreign key to
    `patient` except `KEPT_ON_MERGE`. The merged row stays, marked `merged_into_id`, so its MRN
    still finds the survivor. Files in the archive keep the PatientID they were received with.
    Returns rows moved per `table.column`. Merging a record already merged into this survivor
    changes nothing; a unique key the move would break raises (nothing is moved: the caller's
    transaction rolls back).
    """
    if surviving_id == merged_id:
        raise InvalidInput("a patient cannot be merged into itself")
    # Lock both rows in id order, so two merges of the same pair cannot deadlock.
    rows = {p.id: p for p in session.scalars(
        select(Patient).where(Patient.id.in_((surviving_id, merged_id))).order_by(Patient.id).with_for_update()
    )}
    surviving, merged = rows.get(surviving_id), rows.get(merged_id)
    if surviving is None or merged is None:
        raise NotFound(f"patient {surviving_id if surviving is None else merged_id} does not exist")
    if merged.merged_into_id == surviving.id:
        return {}
    if merged.merged_into_id is not None:
        raise Conflict(f"patient {merged.mrn} was already merged into another record")
    if surviving.merged_into_id is not None:
        raise Conflict(f"patient {surviving.mrn} was itself merged into another record")
    moved: dict[str, int] = {}
    for table, column in patient_references():
        result = session.execute(
            update(table).where(column == merged.id).values({column.name: surviving.id})
            .execution_options(synchronize_session=False)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            moved[f"{table.name}.{column.name}"] = int(result.rowcount)  # type: ignore[attr-defined]
    merged.merged_into_id = surviving.id
    session.flush()
    # Rows already loaded in this session still name the merged patient; read them again.
    session.expire_all()
    summary = ", ".join(f"{name}: {count}" for name, count in sorted(moved.items())) or "nothing to move"
    record_access(session, None, "U", "Patient", surviving_id, patient_id=surviving_id, source=source,
                  description=f"{description}; merged patient {merged_id} into {surviving_id} ({summary})")
    record_access(session, None, "U", "Patient", merged_id, patient_id=merged_id, source=source,
                  description=f"{description}; merged into patient {surviving_id}")
    logger.info("patient %s merged into %s: %s", merged_id, surviving_id, summary)
    return moved
