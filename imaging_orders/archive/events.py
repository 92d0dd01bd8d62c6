"""Events the archive publishes (see hospital.events)."""

from __future__ import annotations

from dataclasses import dataclass

from hospital.events import DomainEvent


@dataclass(frozen=True)
class StudyCompleted(DomainEvent):
    """A study matched to its order is complete (no instance for STUDY_QUIET_SECONDS): the AI may
    read it and the scan may be billed. Published at most once per order (`OrderFulfilment`)."""

    name = "imaging.study_completed"

    study_id: int
    patient_id: int
    referral_id: int
    organization_id: int | None
    modality: str
    completed_at: str | None
