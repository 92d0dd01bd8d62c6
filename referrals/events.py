"""Events the referrals stage publishes (see hospital.events)."""

from __future__ import annotations

from dataclasses import dataclass

from hospital.events import DomainEvent


@dataclass(frozen=True)
class ReferralCancelled(DomainEvent):
    """The requester withdrew an order before it was performed (a page, the API, FHIR, an HL7 ORC-1
    CA/DC): what later stages hold for it (a booked slot, a worklist entry) must go too."""

    name = "referrals.referral_cancelled"

    referral_id: int
    patient_id: int
    performer_organization_id: int
