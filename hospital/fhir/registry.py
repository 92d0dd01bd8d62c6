"""Which FHIR resource types the platform serves, and how each maps to its table.

Stages register a `ResourceMapping` for each record they own from their `fhir.py`. The mapping
says how to render a row as FHIR JSON, which column ties it to a patient (for the compartment
check), and which search parameters work. The CapabilityStatement is generated from this table,
so it lists exactly what works.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from flask import Flask, current_app
from pydantic import ValidationError
from sqlalchemy import ColumnElement
from sqlalchemy.orm import InstrumentedAttribute

from hospital.db import Base

logger = logging.getLogger(__name__)


class FhirValidationError(Exception):
    """A resource failed fhir.resources validation; the message names the failing fields."""


@dataclass(frozen=True)
class SearchParam:
    """A search parameter: its FHIR type and how a value becomes a WHERE clause."""

    type: str  # FHIR search param type: reference, token, date, string, number
    clause: Callable[[str], ColumnElement[bool]]
    documentation: str = ""


@dataclass(frozen=True)
class ResourceMapping:
    type_name: str
    model: type[Base]
    to_fhir: Callable[[Any], dict[str, Any]]
    # Column holding the patient id; None for records outside any patient compartment.
    patient_column: InstrumentedAttribute[Any] | InstrumentedAttribute[int] | None
    search_params: dict[str, SearchParam] = field(default_factory=dict)

    def patient_id_of(self, row: Any) -> int | None:
        if self.patient_column is None:
            return None
        return getattr(row, self.patient_column.key)


@dataclass
class FhirRegistry:
    mappings: dict[str, ResourceMapping] = field(default_factory=dict)

    def add(self, mapping: ResourceMapping) -> None:
        if mapping.type_name in self.mappings:
            raise ValueError(f"FHIR type {mapping.type_name} registered twice")
        get_fhir_model_class(mapping.type_name)  # fails fast on a misspelt type
        self.mappings[mapping.type_name] = mapping

    def get(self, type_name: str) -> ResourceMapping | None:
        return self.mappings.get(type_name)


def init_app(app: Flask) -> None:
    app.extensions["hospital.fhir"] = FhirRegistry()


def register_resource(app: Flask, mapping: ResourceMapping) -> None:
    app.extensions["hospital.fhir"].add(mapping)


def fhir_registry() -> FhirRegistry:
    return current_app.extensions["hospital.fhir"]


def validate_resource(data: dict[str, Any]) -> dict[str, Any]:
    """Validate FHIR JSON with fhir.resources and return it normalised (None fields dropped)."""
    type_name = data.get("resourceType")
    if not isinstance(type_name, str):
        raise FhirValidationError("resourceType is missing")
    try:
        model_cls = get_fhir_model_class(type_name)
    except ValueError as exc:
        raise FhirValidationError(f"unknown resourceType {type_name!r}") from exc
    try:
        resource = model_cls.model_validate(data)
    except ValidationError as exc:
        raise FhirValidationError(f"{type_name}: {exc}") from exc
    return resource.model_dump(mode="json", exclude_none=True)


def reference(type_name: str, row_id: int | str | None, display: str | None = None) -> dict[str, Any] | None:
    if row_id is None:
        return None
    ref: dict[str, Any] = {"reference": f"{type_name}/{row_id}"}
    if display:
        ref["display"] = display
    return ref


def fhir_instant(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def fhir_date(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def reference_id(value: str, type_name: str) -> int:
    """Parse 'Patient/12', '12' or a full URL ending in Patient/12 into 12."""
    tail = value.rstrip("/").split("/")
    if len(tail) >= 2 and tail[-2] != type_name:
        raise ValueError(f"expected a {type_name} reference, got {value!r}")
    try:
        return int(tail[-1])
    except ValueError as exc:
        raise ValueError(f"not a {type_name} id: {value!r}") from exc


def patient_reference_param(column: InstrumentedAttribute[Any]) -> SearchParam:
    return SearchParam(
        "reference",
        lambda value: column == reference_id(value, "Patient"),
        "The patient the resource is about",
    )


def token_param(column: InstrumentedAttribute[Any], documentation: str = "") -> SearchParam:
    return SearchParam("token", lambda value: column == value.split("|")[-1], documentation)
