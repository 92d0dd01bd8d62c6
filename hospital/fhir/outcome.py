"""OperationOutcome: the FHIR way to say what went wrong."""

from __future__ import annotations

from typing import Any

FHIR_JSON = "application/fhir+json"


def operation_outcome(diagnostics: str, *, code: str = "processing", severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
