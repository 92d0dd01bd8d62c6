"""FHIR mappings of care after the report: the consultation as a virtual Encounter, its CarePlan
and Tasks, prescriptions (MedicationRequest) and their dispenses (MedicationDispense).

R4 Encounter.reasonReference may not point at a DiagnosticReport, so the report that opened the
consultation is linked with the core `workflow-reasonReference` extension and the reason text
goes in reasonCode.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session

from followup.formulary import ATC_SYSTEM, RXNORM_SYSTEM
from followup.models import (
    CarePlan,
    Consultation,
    ConsultationStatus,
    FollowUpTask,
    MedicationDispense,
    MedicationRequest,
    MedicationRequestStatus,
    Message,
    TaskStatus,
)
from followup.pharmacy import return_to_prescriber
from followup.plan_changes import TaskChange, cancel_plan_task, change_plan_task, task_due_day
from followup.service import Prescription, prescribe, send_message, update_task_status
from hospital.errors import InvalidInput, UnprocessableEntity
from hospital.fhir.registry import (
    CANONICAL_BASE,
    ResourceMapping,
    coding_code,
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

logger = logging.getLogger(__name__)

REASON_REFERENCE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/workflow-reasonReference"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_PRIORITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActPriority"
PARTICIPATION_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
TASK_KIND_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/followup-task-kind"
# The code system of prescriptions written before the formulary (their code is whatever was typed).
MEDICATION_CATALOG_SYSTEM = f"{CANONICAL_BASE}/CodeSystem/medication-catalog"
STATUS_REASON_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-status-reason"
# A prescription the pharmacy returns to its prescriber needs their clarification.
NEEDS_CLARIFICATION = {"system": STATUS_REASON_SYSTEM, "code": "clarif", "display": "Prescription requires clarification"}

VIRTUAL_CLASS = {"system": ACT_CODE_SYSTEM, "code": "VR", "display": "virtual"}
ACT_PRIORITY = {
    "routine": ("R", "routine"),
    "urgent": ("UR", "urgent"),
    "asap": ("A", "ASAP"),
    "stat": ("S", "stat"),
    "emergency": ("EM", "emergency"),
}
PRIMARY_PERFORMER = {"system": PARTICIPATION_TYPE_SYSTEM, "code": "PPRF", "display": "primary performer"}
CARE_PLAN_STATUSES = {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}


def encounter_to_fhir(consultation: Consultation) -> dict[str, Any]:
    period = {"start": fhir_instant(consultation.started_at), "end": fhir_instant(consultation.ended_at)}
    report = reference("DiagnosticReport", consultation.report_id)
    return {
        "resourceType": "Encounter",
        "id": str(consultation.id),
        "extension": [{"url": REASON_REFERENCE_EXTENSION, "valueReference": report}],
        "status": ConsultationStatus(consultation.status).value,
        "class": VIRTUAL_CLASS,
        "priority": encounter_priority(consultation.priority),
        "subject": reference("Patient", consultation.patient_id),
        "participant": [
            {
                "type": [{"coding": [PRIMARY_PERFORMER]}],
                "individual": reference("Practitioner", consultation.practitioner_id),
            }
        ],
        "period": period if period["start"] or period["end"] else None,
        "reasonCode": [{"text": consultation.reason}] if consultation.reason else None,
    }


def encounter_priority(priority: str | None) -> dict[str, Any] | None:
    if not priority:
        return None
    code = ACT_PRIORITY.get(priority)
    if code is None:
        return {"text": priority}
    return {"coding": [{"system": ACT_PRIORITY_SYSTEM, "code": code[0], "display": code[1]}], "text": priority}


def care_plan_to_fhir(care_plan: CarePlan) -> dict[str, Any]:
    status = care_plan.status if care_plan.status in CARE_PLAN_STATUSES else "unknown"
    return {
        "resourceType": "CarePlan",
        "id": str(care_plan.id),
        "status": status,
        "intent": "plan",
        "title": care_plan.title,
        "subject": reference("Patient", care_plan.patient_id),
        "encounter": reference("Encounter", care_plan.consultation_id),
        "created": fhir_instant(care_plan.created_at),
        "activity": [{"reference": reference("Task", task.id)} for task in care_plan.tasks] or None,
    }


def task_to_fhir(task: FollowUpTask) -> dict[str, Any]:
    status = TaskStatus(task.status)
    return {
        "resourceType": "Task",
        "id": str(task.id),
        # The care plan it belongs to, and the order (ServiceRequest) a repeat scan carries.
        "basedOn": [reference("CarePlan", task.care_plan_id)]
        + ([reference("ServiceRequest", task.referral_id)] if task.referral_id else []),
        "status": status.value,
        "statusReason": {"text": task.status_reason} if task.status_reason else None,
        "intent": "order",
        "code": {"coding": [{"system": TASK_KIND_SYSTEM, "code": task.kind}], "text": task.kind},
        "description": task.description,
        "for": reference("Patient", task.patient_id),
        "authoredOn": fhir_instant(task.created_at),
        "executionPeriod": {"end": fhir_instant(task.completed_at)} if task.completed_at else None,
        "restriction": {"period": {"end": fhir_instant(task.due_at)}} if task.due_at else None,
    }


def medication_concept(request: MedicationRequest) -> dict[str, Any]:
    system = request.medication_system or MEDICATION_CATALOG_SYSTEM
    display = request.medication_display
    return {"coding": [{"system": system, "code": request.medication_code, "display": display}], "text": display}


def medication_request_to_fhir(request: MedicationRequest) -> dict[str, Any]:
    status = MedicationRequestStatus(request.status)
    returned = status is MedicationRequestStatus.ON_HOLD and request.status_reason
    return {
        "resourceType": "MedicationRequest",
        "id": str(request.id),
        "status": status.value,
        "statusReason": {"coding": [NEEDS_CLARIFICATION], "text": request.status_reason} if returned else None,
        "intent": "order",
        "medicationCodeableConcept": medication_concept(request),
        "subject": reference("Patient", request.patient_id),
        "encounter": reference("Encounter", request.consultation_id),
        "authoredOn": fhir_instant(request.created_at),
        "requester": reference("Practitioner", request.prescriber_id),
        "dosageInstruction": [{"text": request.dosage_text}],
        "dispenseRequest": {
            "quantity": {"value": request.quantity},
            "numberOfRepeatsAllowed": request.refills or 0,
            "performer": reference("Organization", request.pharmacy_organization_id),
        },
    }


def prescription_from_fhir(resource: dict[str, Any]) -> tuple[int, Prescription]:
    """A validated MedicationRequest as (consultation id, prescription) for the prescribing service."""
    concept = resource.get("medicationCodeableConcept")
    if not isinstance(concept, dict):
        raise InvalidInput("MedicationRequest.medicationCodeableConcept is required (medicationReference is not supported)")
    # The formulary's own systems first; a bare code is looked up in the formulary all the same.
    code = (coding_code(concept, ATC_SYSTEM) or coding_code(concept, RXNORM_SYSTEM)
            or coding_code(concept, MEDICATION_CATALOG_SYSTEM) or coding_code(concept) or "")
    dispense_request = resource.get("dispenseRequest") or {}
    quantity = (dispense_request.get("quantity") or {}).get("value")
    if quantity is None or float(quantity) != int(float(quantity)):
        raise InvalidInput("MedicationRequest.dispenseRequest.quantity.value must be a whole number")
    return referenced_id(resource, "encounter", "Encounter"), Prescription(
        medication_code=code,
        dosage_text=" ".join(d.get("text", "") for d in resource.get("dosageInstruction") or []).strip(),
        quantity=int(float(quantity)),
        refills=int(dispense_request.get("numberOfRepeatsAllowed") or 0),
        pharmacy_organization_id=referenced_id(dispense_request, "performer", "Organization"),
    )


def create_medication_request(session: Session, user: User, resource: dict[str, Any]) -> MedicationRequest:
    if resource.get("status") != "active" or resource.get("intent") != "order":
        raise InvalidInput("a new MedicationRequest must be an active order")
    consultation_id, prescription = prescription_from_fhir(resource)
    return prescribe(session, user, consultation_id, prescription)


def update_medication_request(
    session: Session, user: User, request: MedicationRequest, resource: dict[str, Any]
) -> MedicationRequest:
    """The one change a client makes to a prescription through FHIR: the pharmacy returns it to the
    prescriber (status `on-hold` with a statusReason saying why), through the same service as the page."""
    if resource.get("status") != "on-hold":
        raise UnprocessableEntity("a MedicationRequest can only be put on-hold (returned to the prescriber, with a "
                                  "statusReason) through update")
    for field in ("dosageInstruction", "dispenseRequest", "medicationCodeableConcept"):
        if field in resource and resource[field] != medication_request_to_fhir(request).get(field):
            raise UnprocessableEntity(f"MedicationRequest.{field} cannot be changed; only status and statusReason")
    status_reason = resource.get("statusReason") or {}
    reason = status_reason.get("text") or next(
        (c.get("display") for c in status_reason.get("coding") or [] if c.get("display")), "")
    return return_to_prescriber(session, user, request.id, str(reason))


def update_task(session: Session, user: User, task: FollowUpTask, resource: dict[str, Any]) -> FollowUpTask:
    """Clients move a task's status on, or change the plan as the plan's page does (through
    `followup.plan_changes`, with its checks): a new `description`, a new due date
    (`restriction.period.end`, read as a day on the patient's calendar), or `cancelled` with a
    `statusReason`."""
    try:
        status = TaskStatus(resource.get("status"))
    except ValueError as exc:
        raise UnprocessableEntity(
            f"Task.status {resource.get('status')!r} is not one of {[s.value for s in TaskStatus]}"
        ) from exc
    if status is TaskStatus.CANCELLED and task.status is not TaskStatus.CANCELLED:
        return cancel_plan_task(session, user, task.id, _status_reason_text(resource))
    description = resource.get("description", task.description)
    if not isinstance(description, str):
        raise UnprocessableEntity("Task.description must be a string")
    due = _restriction_end(resource)
    change = TaskChange(
        details=description if description != task.description else None,
        due_on=task_due_day(session, task, due) if due is not None and due != task.due_at else None,
    )
    if change != TaskChange():
        change_plan_task(session, user, task.id, change)
    return update_task_status(session, user, task.id, status)


def _status_reason_text(resource: dict[str, Any]) -> str:
    reason = resource.get("statusReason") or {}
    if not isinstance(reason, dict):
        raise UnprocessableEntity("Task.statusReason must be a CodeableConcept")
    text = reason.get("text") or next((c.get("display") for c in reason.get("coding") or []
                                       if isinstance(c, dict) and c.get("display")), "")
    return str(text or "")


def _restriction_end(resource: dict[str, Any]) -> datetime | None:
    restriction = resource.get("restriction") or {}
    end = restriction.get("period", {}).get("end") if isinstance(restriction, dict) else None
    if end is None:
        return None
    try:
        instant = datetime.fromisoformat(str(end))
    except ValueError as exc:
        raise UnprocessableEntity(f"Task.restriction.period.end {str(end)[:40]!r} is not a dateTime") from exc
    if instant.tzinfo is None:
        raise UnprocessableEntity("Task.restriction.period.end needs a time zone")
    return instant


def medication_dispense_to_fhir(dispense: MedicationDispense) -> dict[str, Any]:
    request = dispense.request
    dispenser = dispense.dispensed_by
    if dispenser is not None and dispenser.practitioner_id is not None:
        actor = reference("Practitioner", dispenser.practitioner_id, dispenser.username)
    else:
        actor = {"display": dispenser.username if dispenser is not None else f"user {dispense.dispensed_by_user_id}"}
    return {
        "resourceType": "MedicationDispense",
        "id": str(dispense.id),
        "status": "completed",
        "medicationCodeableConcept": medication_concept(request),
        "subject": reference("Patient", dispense.patient_id),
        "context": reference("Encounter", request.consultation_id),
        "performer": [{"actor": actor}],
        "authorizingPrescription": [reference("MedicationRequest", dispense.request_id)],
        "quantity": {"value": dispense.quantity},
        "whenHandedOver": fhir_instant(dispense.dispensed_at),
        "dosageInstruction": [{"text": request.dosage_text}],
    }


def communication_to_fhir(message: Message) -> dict[str, Any]:
    consultation = message.consultation
    clinician = reference("Practitioner", consultation.practitioner_id)
    patient = reference("Patient", message.patient_id)
    from_patient = message.recipient_role == "clinician"
    return {
        "resourceType": "Communication",
        "id": str(message.id),
        "status": "completed",
        "category": [{"text": "Secure message in a consultation"}],
        "subject": patient,
        "encounter": reference("Encounter", message.consultation_id),
        "sent": fhir_instant(message.sent_at),
        "received": fhir_instant(message.read_at),
        "sender": patient if from_patient else clinician,
        "recipient": [clinician if from_patient else patient],
        "payload": [{"contentString": message.body}],
    }


def create_communication(session: Session, user: User, resource: dict[str, Any]) -> Message:
    """POST /fhir/Communication: a message in the consultation named by `encounter`."""
    consultation_id = referenced_id(resource, "encounter", "Encounter")
    payload = resource.get("payload") or []
    text = next((p.get("contentString") for p in payload if isinstance(p, dict) and p.get("contentString")), None)
    if not text:
        raise InvalidInput("Communication.payload needs a contentString")
    return send_message(session, user, consultation_id, text)


def register_fhir(app: Flask) -> None:
    communication_patient = patient_reference_param(Message.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "Communication",
            Message,
            communication_to_fhir,
            Message.patient_id,
            {
                "_id": id_param(Message.id),
                "patient": communication_patient,
                "subject": communication_patient,
                "encounter": reference_param(Message.consultation_id, "Encounter", "The consultation it belongs to"),
                "sent": date_param(Message.sent_at, "When it was sent"),
            },
            create=create_communication,
        ),
    )
    encounter_patient = patient_reference_param(Consultation.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "Encounter",
            Consultation,
            encounter_to_fhir,
            Consultation.patient_id,
            {
                "_id": id_param(Consultation.id),
                "patient": encounter_patient,
                "subject": encounter_patient,
                "status": token_param(Consultation.status, "planned | in-progress | finished | cancelled"),
                "practitioner": reference_param(
                    Consultation.practitioner_id, "Practitioner", "The clinician holding it", path="participant"
                ),
                "date": date_param(Consultation.started_at, "When the consultation started"),
            },
        ),
    )
    care_plan_patient = patient_reference_param(CarePlan.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "CarePlan",
            CarePlan,
            care_plan_to_fhir,
            CarePlan.patient_id,
            {
                "_id": id_param(CarePlan.id),
                "patient": care_plan_patient,
                "subject": care_plan_patient,
                "status": token_param(CarePlan.status, "active | completed | revoked ..."),
                "encounter": reference_param(CarePlan.consultation_id, "Encounter", "The consultation that made it"),
            },
        ),
    )
    task_patient = patient_reference_param(FollowUpTask.patient_id, "for")
    register_resource(
        app,
        ResourceMapping(
            "Task",
            FollowUpTask,
            task_to_fhir,
            FollowUpTask.patient_id,
            {
                "_id": id_param(FollowUpTask.id),
                "patient": task_patient,
                "subject": task_patient,
                "status": token_param(FollowUpTask.status, "requested | in-progress | completed | cancelled"),
                "based-on": reference_param(FollowUpTask.care_plan_id, "CarePlan", "The care plan it belongs to"),
                "code": token_param(FollowUpTask.kind, f"Task kind ({TASK_KIND_SYSTEM})"),
            },
            update=update_task,
        ),
    )
    request_patient = patient_reference_param(MedicationRequest.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "MedicationRequest",
            MedicationRequest,
            medication_request_to_fhir,
            MedicationRequest.patient_id,
            {
                "_id": id_param(MedicationRequest.id),
                "patient": request_patient,
                "subject": request_patient,
                "status": token_param(MedicationRequest.status, "active | on-hold | completed | cancelled"),
                "encounter": reference_param(MedicationRequest.consultation_id, "Encounter", "The consultation"),
                "requester": reference_param(MedicationRequest.prescriber_id, "Practitioner", "The prescriber"),
                "authoredon": date_param(MedicationRequest.created_at, "When it was prescribed"),
            },
            create=create_medication_request,
            update=update_medication_request,
        ),
    )
    dispense_patient = patient_reference_param(MedicationDispense.patient_id)
    register_resource(
        app,
        ResourceMapping(
            "MedicationDispense",
            MedicationDispense,
            medication_dispense_to_fhir,
            MedicationDispense.patient_id,
            {
                "_id": id_param(MedicationDispense.id),
                "patient": dispense_patient,
                "subject": dispense_patient,
                "prescription": reference_param(
                    MedicationDispense.request_id, "MedicationRequest", "The prescription", path="authorizingPrescription"
                ),
                "whenhandedover": date_param(MedicationDispense.dispensed_at, "When it was handed over"),
            },
        ),
    )
