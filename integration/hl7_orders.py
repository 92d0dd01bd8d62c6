"""Orders in: ORM^O01 and OMI^O23 (new orders, ORC-1 NW) become referrals (FHIR ServiceRequest);
later messages for the same placer order number cancel it (ORC-1 CA, cancel; DC, discontinue) or
change it (XO: reason, procedure, body part, priority; another modality is another order).

The order is the ordering provider's: ORC-12 (or OBR-16) names them by the sender's provider id,
which an administrator maps to a practitioner (`hospital hl7 map provider`); the referral is
created through `referrals.public.create_referral` as that practitioner's clinician account, with
the same checks and audit as one typed in a page. The performing centre is MSH-6 (the receiving
facility), mapped the same way (`hospital hl7 map centre`). Either unknown: AE 204, nothing stored.
The placer order number (ORC-2, else OBR-2) is kept per sending facility: an order sent again
under a new control id is acknowledged with the referral it already made. A cancel or change is
made as the order's requesting clinician, through `referrals.public`, with its checks: an order
already performed (in progress, completed) is neither cancelled nor changed (AE, with its status),
and a cancel sent twice is acknowledged as already done.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.models import Organization, OrganizationKind, Practitioner, Role, User
from integration.hl7_codec import (
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    MessageRefused,
    ReceivedMessage,
)
from integration.hl7_patients import SOURCE, Applied, describe, match_or_register_patient
from integration.models import CodeKind, Hl7CodeMap, PlacerOrder
from referrals.public import (
    MODALITIES,
    Priority,
    ReferralChange,
    ReferralRequest,
    ReferralStatus,
    ReferralSummary,
    cancel_referral,
    change_referral,
    create_referral,
    referral_summary,
)

logger = logging.getLogger(__name__)

# HL7 table 0027 (TQ1-9 / ORC-7.6 priority) -> ServiceRequest.priority.
PRIORITIES = {"S": Priority.STAT, "A": Priority.ASAP, "R": Priority.ROUTINE, "T": Priority.URGENT,
              "P": Priority.URGENT, "C": Priority.URGENT}


def mapped_target(session: Session, kind: CodeKind, code: str) -> int | None:
    return session.scalar(select(Hl7CodeMap.target_id).where(Hl7CodeMap.kind == kind, Hl7CodeMap.code == code))


def ordering_clinician(session: Session, msg: ReceivedMessage) -> User:
    provider = msg.get("ORC.F12.R1.C1") or msg.get("OBR.F16.R1.C1")
    if not provider:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "ORC-12 ordering provider is missing", "ORC^1^12")
    practitioner_id = mapped_target(session, CodeKind.PROVIDER, provider)
    practitioner = None if practitioner_id is None else session.get(Practitioner, practitioner_id)
    if practitioner is None:
        raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER,
                             f"ordering provider {provider} is not mapped to a practitioner here", "ORC^1^12")
    user = session.scalar(select(User).where(User.practitioner_id == practitioner.id, User.role == Role.CLINICIAN,
                                             User.active.is_(True)).order_by(User.id).limit(1))
    if user is None:
        raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER,
                             f"ordering provider {provider} has no active clinician account here", "ORC^1^12")
    return user


def performing_centre(session: Session, msg: ReceivedMessage) -> Organization:
    code = msg.get("MSH.F6.R1.C1")
    centre_id = mapped_target(session, CodeKind.CENTRE, code) if code else None
    centre = None if centre_id is None else session.get(Organization, centre_id)
    if centre is None or centre.kind is not OrganizationKind.IMAGING_CENTRE:
        raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER,
                             f"receiving facility {code or '(none)'} is not mapped to an imaging centre here",
                             "MSH^1^6")
    return centre


# ORC-1 order control codes (HL7 table 0119) a placer may send us.
ORDER_CONTROLS = ("NW", "CA", "DC", "XO")


def apply_order(session: Session, msg: ReceivedMessage, message_id: int) -> Applied:
    control = msg.get("ORC.F1.R1.C1").upper()
    if control not in ORDER_CONTROLS:
        raise MessageRefused("AE", TABLE_VALUE_NOT_FOUND,
                             f"order control {control or '(none)'} is not supported (only {', '.join(ORDER_CONTROLS)})",
                             "ORC^1^1")
    placer = msg.get("ORC.F2.R1.C1") or msg.get("OBR.F2.R1.C1")
    if not placer:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "ORC-2 placer order number is missing", "ORC^1^2")
    facility = msg.header.sending_facility
    known = session.scalar(select(PlacerOrder).where(PlacerOrder.sending_facility == facility,
                                                     PlacerOrder.placer_order_number == placer))
    if control != "NW":
        if known is None:
            raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER,
                                 f"order {placer} from {facility} is not known here", "ORC^1^2")
        if control == "XO":
            return _change_order(session, msg, known, placer)
        return _cancel_order(session, msg, known, placer, control)
    if known is not None:
        return Applied(f"order {placer} was already received as ServiceRequest {known.referral_id}")
    centre = performing_centre(session, msg)
    clinician = ordering_clinician(session, msg)
    modality = (msg.get("OBR.F24.R1.C1") or msg.get("IPC.F5.R1.C1")).upper()
    if modality not in MODALITIES:
        raise MessageRefused("AE", TABLE_VALUE_NOT_FOUND,
                             f"modality {modality or '(none)'} (OBR-24) is not one of {', '.join(sorted(MODALITIES))}",
                             "OBR^1^24")
    reason = msg.get("OBR.F31.R1.C2") or msg.get("OBR.F31.R1.C1") or msg.get("OBR.F13.R1.C1")
    if not reason:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "OBR-31 reason for study is missing", "OBR^1^31")
    priority_code = (msg.get("ORC.F7.R1.C6") or msg.get("OBR.F27.R1.C6") or msg.get("TQ1.F9.R1.C1") or "R").upper()
    patient = match_or_register_patient(session, msg)
    referral = create_referral(session, clinician, ReferralRequest(
        patient_id=patient.id, performer_organization_id=centre.id, modality=modality,
        body_part=msg.get("OBR.F15.R1.C4")[:64], procedure_description=(msg.get("OBR.F4.R1.C2") or msg.get("OBR.F4.R1.C1"))[:200],
        reason=reason, priority=PRIORITIES.get(priority_code, Priority.ROUTINE),
        access_reason=f"HL7 order {placer} from {facility}",
    ))
    session.add(PlacerOrder(sending_facility=facility, placer_order_number=placer, referral_id=referral.referral_id,
                            message_id=message_id))
    session.flush()
    record_access(session, None, "C", "ServiceRequest", referral.referral_id, patient_id=patient.id, source=SOURCE,
                  description=f"{describe(msg)}: placer order {placer} for practitioner {clinician.practitioner_id}")
    return Applied(f"order {placer} received as ServiceRequest {referral.referral_id}", patient.id)


def _requester_account(session: Session, referral: ReferralSummary) -> User:
    user = session.scalar(select(User).where(User.practitioner_id == referral.requester_id, User.role == Role.CLINICIAN,
                                             User.active.is_(True)).order_by(User.id).limit(1))
    if user is None:
        raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER,
                             f"the requester of ServiceRequest {referral.referral_id} has no active clinician account",
                             "ORC^1^12")
    return user


def _known_referral(session: Session, order: PlacerOrder) -> ReferralSummary:
    referral = referral_summary(session, order.referral_id)
    if referral is None:  # the referral row is never deleted; a placer row without one is corrupt
        raise MessageRefused("AE", UNKNOWN_KEY_IDENTIFIER, f"ServiceRequest {order.referral_id} is gone", "ORC^1^2")
    return referral


def _cancel_order(session: Session, msg: ReceivedMessage, order: PlacerOrder, placer: str, control: str) -> Applied:
    referral = _known_referral(session, order)
    if referral.status is ReferralStatus.CANCELLED:
        return Applied(f"order {placer} was already cancelled (ServiceRequest {referral.referral_id})",
                       referral.patient_id)
    verb = "cancelled" if control == "CA" else "discontinued"
    why = msg.get("ORC.F16.R1.C2") or msg.get("ORC.F16.R1.C1")
    reason = f"{verb} by HL7 order control {control} from {msg.header.sending_facility}" + (f": {why}" if why else "")
    cancelled = cancel_referral(session, _requester_account(session, referral), referral.referral_id, reason[:500])
    return Applied(f"order {placer} {verb}: ServiceRequest {cancelled.referral_id} revoked", cancelled.patient_id)


def _change_order(session: Session, msg: ReceivedMessage, order: PlacerOrder, placer: str) -> Applied:
    referral = _known_referral(session, order)
    modality = (msg.get("OBR.F24.R1.C1") or msg.get("IPC.F5.R1.C1")).upper()
    if modality and modality != referral.modality:
        raise MessageRefused("AE", TABLE_VALUE_NOT_FOUND,
                             f"modality {referral.modality} cannot change to {modality}: another modality is a new "
                             f"order (cancel {placer} with CA and send NW)", "OBR^1^24")
    priority_code = (msg.get("ORC.F7.R1.C6") or msg.get("OBR.F27.R1.C6") or msg.get("TQ1.F9.R1.C1")).upper()
    change = ReferralChange(
        reason=(msg.get("OBR.F31.R1.C2") or msg.get("OBR.F31.R1.C1") or msg.get("OBR.F13.R1.C1")) or None,
        procedure_description=((msg.get("OBR.F4.R1.C2") or msg.get("OBR.F4.R1.C1"))[:200]) or None,
        body_part=msg.get("OBR.F15.R1.C4")[:64] or None,
        priority=PRIORITIES.get(priority_code) if priority_code else None,
    )
    changed = change_referral(session, _requester_account(session, referral), referral.referral_id, change)
    return Applied(f"order {placer} changed: ServiceRequest {changed.referral_id}", changed.patient_id)
