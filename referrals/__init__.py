"""Referrals: a clinician orders an imaging examination online (FHIR ServiceRequest)."""
