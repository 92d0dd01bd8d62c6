"""Events the follow-up stage publishes (see hospital.events)."""

from __future__ import annotations

from dataclasses import dataclass

from hospital.events import DomainEvent


@dataclass(frozen=True)
class ConsultationFinished(DomainEvent):
    """A consultation ended: one billable consultation. `ai_attributed` when the report that opened
    it holds an AI finding the radiologist did not reject (care the AI made possible)."""

    name = "followup.consultation_finished"

    consultation_id: int
    patient_id: int
    organization_id: int | None
    ended_at: str | None
    ai_attributed: bool


@dataclass(frozen=True)
class MedicationDispensed(DomainEvent):
    """A pharmacy handed over medication (one dispense: a quantity of one coded item)."""

    name = "followup.medication_dispensed"

    dispense_id: int
    patient_id: int
    pharmacy_organization_id: int | None
    medication_code: str
    quantity: int
    dispensed_at: str | None
    ai_attributed: bool
