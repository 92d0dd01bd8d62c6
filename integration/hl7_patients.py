"""ADT in: A01/A04/A08 register or update a patient, A40 merges two records of one person.

Policy (create-or-match), for ADT and for the patient of an order alike: the patient is the one
whose MRN is PID-3's identifier of type MR (the first repetition when none says MR); the platform
has one MRN space, so a sending system's MRNs must be the hospital's. A record merged away answers
with its survivor. ADT A01/A04/A08 register an unknown MRN and update a known one (HL7's "update
or insert"); an order for an unknown MRN registers the patient from its PID, and an order for a
known one changes no demographics (ADT owns them). A40 merges only records that both exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.models import Patient
from hospital.patients import (
    PatientDetails,
    find_patient_by_mrn,
    merge_patients,
    register_patient_from_interface,
    update_patient_from_interface,
)
from integration.hl7_codec import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    MessageRefused,
    ReceivedMessage,
    parse_hl7_date,
)

logger = logging.getLogger(__name__)

SOURCE = "hl7"
GENDERS = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "unknown"}
HL7_NULL = '""'  # HL7's "delete this value", as opposed to empty: "no change"
MAX_MRN = 64


@dataclass(frozen=True)
class Applied:
    """What applying a message did: the MSA-3 text and the patient it concerned."""

    text: str
    patient_id: int | None = None


def describe(msg: ReceivedMessage) -> str:
    h = msg.header
    return f"HL7 {h.message_type} {h.control_id} from {h.sending_application}@{h.sending_facility}"


def mrn_of(msg: ReceivedMessage, field: str, where: str) -> str:
    """The MR-typed identifier among a CX field's repetitions (the first one when none is typed MR)."""
    first = ""
    for repetition in range(1, 11):
        value = msg.get(f"{field}.R{repetition}.C1")
        kind = msg.get(f"{field}.R{repetition}.C5")
        if not value and not kind:
            break
        if kind.upper() == "MR" and value:
            first = value
            break
        first = first or value
    if not first:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, f"{where} patient identifier (MRN) is missing", where)
    if len(first) > MAX_MRN:
        raise MessageRefused("AE", DATA_TYPE_ERROR, f"{where} MRN is longer than {MAX_MRN} characters", where)
    return first


def _value(msg: ReceivedMessage, path: str, current: str | None) -> str | None:
    value = msg.get(path)
    if value == HL7_NULL:
        return None
    return value or current


def details_from_pid(msg: ReceivedMessage, mrn: str, current: Patient | None = None) -> PatientDetails:
    """PID-5 name, PID-7 birth date, PID-8 sex, PID-13 phone and e-mail; what the message leaves
    empty keeps its current value."""
    family = msg.get("PID.F5.R1.C1") or (current.family_name if current else "")
    given = msg.get("PID.F5.R1.C2") or (current.given_name if current else "")
    if not family or not given:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "PID-5 patient name (family^given) is missing", "PID^1^5")
    raw_birth = msg.get("PID.F7.R1.C1")
    birth_date = None if raw_birth == HL7_NULL else (
        parse_hl7_date(raw_birth, "PID^1^7") if raw_birth else (current.birth_date if current else None))
    sex = msg.get("PID.F8.R1.C1").upper()
    if sex and sex not in GENDERS:
        raise MessageRefused("AE", TABLE_VALUE_NOT_FOUND, f"PID-8 sex {sex!r} is not in HL7 table 0001", "PID^1^8")
    gender = GENDERS[sex] if sex else (current.gender if current else "unknown")
    phone = _value(msg, "PID.F13.R1.C1", current.phone if current else None)
    email = _value(msg, "PID.F13.R1.C4", current.email if current else None)
    return PatientDetails(family_name=family[:100], given_name=given[:100], birth_date=birth_date, gender=gender,
                          phone=phone[:40] if phone else None, email=email[:200] if email else None, mrn=mrn)


def match_or_register_patient(session: Session, msg: ReceivedMessage) -> Patient:
    """The order's patient by MRN, registered from PID when unknown (see the module docstring)."""
    mrn = mrn_of(msg, "PID.F3", "PID^1^3")
    patient = find_patient_by_mrn(session, mrn)
    if patient is not None:
        return patient
    patient = register_patient_from_interface(session, details_from_pid(msg, mrn), source=SOURCE,
                                              description=f"{describe(msg)}: registered from the order's PID")
    logger.info("HL7 order registered patient %s (MRN from %s)", patient.id, msg.header.sending_facility)
    return patient


def apply_registration(session: Session, msg: ReceivedMessage) -> Applied:
    """ADT^A01 / A04 / A08: register the MRN or update its record."""
    mrn = mrn_of(msg, "PID.F3", "PID^1^3")
    patient = find_patient_by_mrn(session, mrn)
    if patient is None:
        patient = register_patient_from_interface(session, details_from_pid(msg, mrn), source=SOURCE,
                                                  description=describe(msg))
        return Applied(f"patient {mrn} registered", patient.id)
    patient = update_patient_from_interface(session, patient.id, details_from_pid(msg, patient.mrn, patient),
                                            source=SOURCE, description=describe(msg))
    return Applied(f"patient {mrn} updated", patient.id)


def apply_merge(session: Session, msg: ReceivedMessage) -> Applied:
    """ADT^A40: MRG-1's record is merged into PID-3's (hospital.patients.merge_patients says what
    moves). Both must exist; a merge already done is acknowledged and changes nothing."""
    surviving_mrn = mrn_of(msg, "PID.F3", "PID^1^3")
    merged_mrn = mrn_of(msg, "MRG.F1", "MRG^1^1")
    surviving = find_patient_by_mrn(session, surviving_mrn)
    if surviving is None:
        raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER, f"surviving patient {surviving_mrn} is not known here",
                             "PID^1^3")
    merged_id = session.scalar(select(Patient.id).where(Patient.mrn == merged_mrn))
    if merged_id is None:
        raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER, f"prior patient {merged_mrn} is not known here", "MRG^1^1")
    if merged_id == surviving.id:
        raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER, "a patient cannot be merged into itself", "MRG^1^1")
    moved = merge_patients(session, surviving.id, merged_id, source=SOURCE, description=describe(msg))
    if not moved and find_patient_by_mrn(session, merged_mrn) is surviving:
        return Applied(f"patient {merged_mrn} was already merged into {surviving_mrn}", surviving.id)
    summary = ", ".join(f"{name} {count}" for name, count in sorted(moved.items())) or "nothing to move"
    return Applied(f"patient {merged_mrn} merged into {surviving_mrn} ({summary})", surviving.id)
