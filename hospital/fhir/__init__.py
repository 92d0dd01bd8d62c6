"""The FHIR R4 layer: resource mappings registered by each stage, validation through
fhir.resources (its R4B models, which validate R4 JSON), the REST routes and OperationOutcome."""

from hospital.fhir.outcome import operation_outcome
from hospital.fhir.registry import (
    FhirRegistry,
    ResourceMapping,
    SearchParam,
    reference,
    register_resource,
    validate_resource,
)

__all__ = [
    "FhirRegistry",
    "ResourceMapping",
    "SearchParam",
    "operation_outcome",
    "reference",
    "register_resource",
    "validate_resource",
]
