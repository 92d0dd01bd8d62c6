"""Which FHIR resource types the platform serves, and how each maps to its table.

Stages register a `ResourceMapping` for each record they own from their `fhir.py`. The mapping
says how to render a row as FHIR JSON, which column ties it to a patient (for the compartment
check), and which search parameters work. The CapabilityStatement is generated from this table,
so it lists exactly what works.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from flask import Flask, current_app, has_app_context
from pydantic import ValidationError
from sqlalchemy import ColumnElement, and_, false, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from hospital.db import Base
from hospital.errors import InvalidInput
from hospital.models import Role, User

logger = logging.getLogger(__name__)

# Naming bases for the identifier systems and canonical URLs this platform mints.
CANONICAL_BASE = "https://closed-loop-hospital.example/fhir"
IDENTIFIER_SYSTEM_BASE = f"{CANONICAL_BASE}/sid"


class FhirValidationError(Exception):
    """A resource failed fhir.resources validation; the message names the failing fields."""


@dataclass(frozen=True)
class SearchParam:
    """A search parameter: its FHIR type and how a value becomes a WHERE clause."""

    type: str  # FHIR search param type: reference, token, date, string, number
    clause: Callable[[str], ColumnElement[bool]]
    documentation: str = ""
    # Reference params: the type they point at, and the element of the resource that holds the
    # reference (for _include); None: not includable.
    target: str | None = None
    path: str | None = None
    # The column to order by when the param is named in _sort (date and _id params).
    sort_column: Any = None


# Write handlers: parse a validated resource (its `from_fhir`) and call the stage's service, the
# same one the web pages use. They raise DomainError subclasses; the caller owns the transaction.
CreateHandler = Callable[[Session, User, dict[str, Any]], Any]
UpdateHandler = Callable[[Session, User, Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class ResourceMapping:
    type_name: str
    model: type[Base]
    to_fhir: Callable[[Any], dict[str, Any]]
    # Column holding the patient id; None for records outside any patient compartment.
    patient_column: InstrumentedAttribute[Any] | InstrumentedAttribute[int] | None
    search_params: dict[str, SearchParam] = field(default_factory=dict)
    # Roles that may read or search this type at all; None: every role (the compartment check
    # still applies). The audit trail, for one, is for administrators only.
    read_roles: frozenset[Role] | None = None
    create: CreateHandler | None = None
    update: UpdateHandler | None = None
    # Columns whose change alone is bookkeeping, not a new version (a study's last-instance time).
    unversioned_columns: frozenset[str] = frozenset()
    # For an append-only table (the audit trail): the column holding when each row was written.
    # Such a row never changes, so its one version is the row itself (versionId 1 at that time):
    # no rendered copy is stored per row, and there is no history to page through.
    append_only_at: InstrumentedAttribute[Any] | None = None
    # Loader options for the rows a read or search renders: the related rows `to_fhir` reads,
    # loaded with the rows instead of one lazy load per distinct parent (e.g. a finding's report).
    load_options: tuple[Any, ...] = ()

    def interactions(self) -> list[str]:
        """The FHIR interactions this type supports, for the CapabilityStatement."""
        if self.append_only_at is not None:
            return ["read", "vread", "search-type"]
        codes = ["read", "vread", "history-instance", "history-type", "search-type"]
        if self.create is not None:
            codes.append("create")
        if self.update is not None:
            codes.append("update")
        return codes

    def patient_id_of(self, row: Any) -> int | None:
        if self.patient_column is None:
            return None
        patient_id: int | None = getattr(row, self.patient_column.key)
        return patient_id

    def readable_by(self, role: Role) -> bool:
        return self.read_roles is None or role in self.read_roles


# Every registered model, by class, for the version tracker (it runs in session events, where
# there may be no app). Apps built in one process register the same mappings.
VERSIONED_MODELS: dict[type[Any], ResourceMapping] = {}


@dataclass
class FhirRegistry:
    mappings: dict[str, ResourceMapping] = field(default_factory=dict)
    # CapabilityStatement entries of resources served by their own routes (not a table mapping),
    # e.g. Subscription; and extensions for the `rest` element (the topics a server offers).
    extra_capabilities: list[dict[str, Any]] = field(default_factory=list)
    rest_extensions: list[dict[str, Any]] = field(default_factory=list)

    def add(self, mapping: ResourceMapping) -> None:
        if mapping.type_name in self.mappings:
            raise ValueError(f"FHIR type {mapping.type_name} registered twice")
        get_fhir_model_class(mapping.type_name)  # fails fast on a misspelt type
        self.mappings[mapping.type_name] = mapping
        VERSIONED_MODELS[mapping.model] = mapping

    def get(self, type_name: str) -> ResourceMapping | None:
        return self.mappings.get(type_name)


def init_app(app: Flask) -> None:
    app.extensions["hospital.fhir"] = FhirRegistry()


def register_resource(app: Flask, mapping: ResourceMapping) -> None:
    app.extensions["hospital.fhir"].add(mapping)


def register_capability(app: Flask, resource: dict[str, Any], rest_extensions: list[dict[str, Any]] | None = None) -> None:
    """Name in the CapabilityStatement a resource type served by its own routes."""
    registry: FhirRegistry = app.extensions["hospital.fhir"]
    registry.extra_capabilities.append(resource)
    registry.rest_extensions.extend(rest_extensions or [])


def fhir_registry() -> FhirRegistry:
    registry: FhirRegistry = current_app.extensions["hospital.fhir"]
    return registry


def validate_resource(data: dict[str, Any]) -> dict[str, Any]:
    """Validate FHIR JSON with fhir.resources and return it normalised (None fields dropped)."""
    normalised: dict[str, Any] = _validated(data).model_dump(mode="json", exclude_none=True)
    return normalised


def check_own_resource(data: dict[str, Any]) -> dict[str, Any]:
    """Our own rendering of a resource, None fields dropped and checked against fhir.resources.

    Validation costs about half a millisecond per resource, more than the rest of a search: with
    `FHIR_OUTPUT_CHECK_EVERY` = N above 1 (production's default, 100), one resource of each type in
    N is checked per process, and one that fails is logged and counted
    (`hospital_fhir_invalid_output_total`, an alert) and still sent, like the unchecked ones of the
    same shape; our mappings' output is what is checked, not what clients sent. With 1 (the suite,
    and anyone who wants it) every resource is checked and an invalid one refused with
    FhirValidationError.

    It is validated, not serialised back through the model: that round trip cost twice the
    validation itself and, for output our mappings make, gives back what went in. Under TESTING it
    is made anyway and must equal what is returned, so a mapping whose output the model would
    write differently fails the suite instead of reaching a client."""
    pruned: dict[str, Any] = _without_none(data)
    every = int(current_app.config["FHIR_OUTPUT_CHECK_EVERY"]) if has_app_context() else 1
    if every > 1:
        counter = _OUTPUT_CHECKS.setdefault(str(pruned.get("resourceType")), itertools.count())
        if next(counter) % every:
            return pruned
        try:
            _validated(pruned)
        except FhirValidationError as exc:
            from hospital.metrics import FHIR_INVALID_OUTPUT  # noqa: PLC0415 - metrics imports the FHIR layer's users

            FHIR_INVALID_OUTPUT.labels(resource_type=str(pruned.get("resourceType"))[:64]).inc()
            logger.error("our own %s failed FHIR validation (sent as it is, checked 1 in %d): %s",
                         pruned.get("resourceType"), every, exc)
        return pruned
    resource = _validated(pruned)
    if has_app_context() and current_app.config.get("TESTING"):
        normalised = resource.model_dump(mode="json", exclude_none=True)
        if _comparable(normalised) != _comparable(pruned):
            raise FhirValidationError(f"{data.get('resourceType')}: fhir.resources writes this resource "
                                      f"differently: {normalised!r} != {pruned!r}")
    return pruned


# Per resource type, how many of our own resources this process rendered (for the 1-in-N check).
_OUTPUT_CHECKS: dict[str, itertools.count[int]] = {}


def _comparable(value: Any) -> Any:
    """`value` as the model would write it where the difference is only of form, so that the
    comparison under TESTING sees only differences that matter: a UTC offset as "Z" (not "+00:00";
    FHIR takes both), a number as a Decimal (the model keeps decimals as Decimal, we write floats)."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if isinstance(value, str) and value.endswith("+00:00") and "T" in value:
        return value.removesuffix("+00:00") + "Z"
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


def _without_none(value: Any) -> Any:
    # Only containers are walked: a call per leaf value cost as much as rendering the resource.
    if isinstance(value, dict):
        return {key: _without_none(item) if isinstance(item, (dict, list)) else item
                for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) if isinstance(item, (dict, list)) else item for item in value if item is not None]
    return value


def _validated(data: dict[str, Any]) -> Any:
    type_name = data.get("resourceType")
    if not isinstance(type_name, str):
        raise FhirValidationError("resourceType is missing")
    try:
        model_cls = get_fhir_model_class(type_name)
    except (ValueError, KeyError) as exc:  # fhir.resources raises KeyError for a wrongly cased name
        raise FhirValidationError(f"unknown resourceType {type_name!r}") from exc
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise FhirValidationError(f"{type_name}: {exc}") from exc
    except KeyError as exc:  # a contained resource of an unknown (e.g. wrongly cased) type
        raise FhirValidationError(f"{type_name}: unknown resource type {exc}") from exc
    except RecursionError as exc:
        raise FhirValidationError(f"{type_name}: nested too deeply") from exc


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


def patient_reference_param(column: InstrumentedAttribute[Any], path: str = "subject") -> SearchParam:
    return reference_param(column, "Patient", "The patient the resource is about", path)


def reference_param(
    column: InstrumentedAttribute[Any], type_name: str, documentation: str = "", path: str | None = None
) -> SearchParam:
    """A reference search on a foreign-key column: 'Practitioner/3', '3' or a full URL."""
    return SearchParam(
        "reference", lambda value: column == reference_id(value, type_name), documentation, target=type_name, path=path
    )


# The ids this server hands out: a row's integer key, written in ASCII digits without a leading zero.
_ROW_ID = re.compile(r"[1-9][0-9]{0,9}")
MAX_ROW_ID = 2**31 - 1  # the keys are PostgreSQL integers


def row_id(value: str) -> int | None:
    """The row key a resource id names, or None when it names none: "007", "１" (a full-width
    digit) or an id past the keys' range is no id of ours (404), not another spelling of one or
    a value the database refuses."""
    if _ROW_ID.fullmatch(value) is None:
        return None
    key = int(value)
    return key if key <= MAX_ROW_ID else None


def id_param(column: InstrumentedAttribute[Any]) -> SearchParam:
    """`_id`: the integer primary key; anything else is a bad value, not an empty result."""

    def clause(value: str) -> ColumnElement[bool]:
        key = row_id(value)
        if key is None:
            raise ValueError(f"not a resource id: {value!r}")
        return column == key

    return SearchParam("token", clause, "The logical id of the resource", sort_column=column)


def token_param(column: InstrumentedAttribute[Any], documentation: str = "") -> SearchParam:
    return SearchParam("token", lambda value: column == value.split("|")[-1], documentation)


DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


def parse_date_search(value: str) -> tuple[str, datetime, datetime]:
    """Split a FHIR date search value into (prefix, start, end): the half-open UTC range its
    precision covers ('2024' is the whole year, '2024-03-05T10:00:00Z' one second). Values
    without a zone are read as UTC, the zone everything is stored in."""
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    raw = value[2:] if value[:2] in DATE_PREFIXES else value
    try:
        if len(raw) == 4 and raw.isdigit():
            start = datetime(int(raw), 1, 1, tzinfo=UTC)
            return prefix, start, start.replace(year=start.year + 1)
        if len(raw) == 7 and raw[4] == "-":
            start = datetime(int(raw[:4]), int(raw[5:7]), 1, tzinfo=UTC)
            end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
            return prefix, start, end
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return prefix, start, start + timedelta(days=1)
        start = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"not a FHIR date: {value!r}") from exc
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start = start.astimezone(UTC)
    return prefix, start, start + (timedelta(microseconds=1) if start.microsecond else timedelta(seconds=1))


def date_clause(column: ColumnElement[Any] | InstrumentedAttribute[Any], value: str, *, is_date_column: bool = False) -> ColumnElement[bool]:
    """The WHERE clause of one FHIR date search value (prefixes eq, ne, gt, lt, ge, le, sa, eb;
    the value's precision sets the range it matches) on a timestamp or date expression."""
    prefix, start, end = parse_date_search(value)
    low: date | datetime = start
    high: date | datetime = end
    if is_date_column:
        low = start.date()
        high = end.date() if end.time() == datetime.min.time() else low + timedelta(days=1)
    if prefix == "eq":
        return and_(column >= low, column < high)
    if prefix == "ne":
        return or_(column < low, column >= high)
    if prefix in ("gt", "sa"):
        return column >= high
    if prefix in ("lt", "eb"):
        return column < low
    if prefix == "ge":
        return column >= low
    return column < high  # le


def date_param(column: InstrumentedAttribute[Any], documentation: str = "") -> SearchParam:
    """A date search with the FHIR prefixes on a timestamp or a date column."""
    is_date_column = column.type.python_type is date

    def clause(value: str) -> ColumnElement[bool]:
        return date_clause(column, value, is_date_column=is_date_column)

    return SearchParam("date", clause, documentation, sort_column=column)


def identifier_param(column: InstrumentedAttribute[Any], system: str, documentation: str = "") -> SearchParam:
    """An identifier token: 'value', or 'system|value' which matches only under our system."""

    def clause(value: str) -> ColumnElement[bool]:
        if "|" in value:
            given_system, _, code = value.partition("|")
            if given_system != system:
                return false()
            return column == code
        return column == value

    return SearchParam("token", clause, documentation)


# --- parsing resources that clients send (each stage's from_fhir uses these) ---------------------


def referenced_id(resource: dict[str, Any], element: str, type_name: str) -> int:
    """The id of the `type_name` reference in `resource[element]` (a Reference, or a list of
    them: the first); a missing or mistyped reference is InvalidInput naming the element."""
    value = resource.get(element)
    if isinstance(value, list):
        value = value[0] if value else None
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str):
        raise InvalidInput(f"{resource.get('resourceType')}.{element} must reference a {type_name}")
    try:
        return reference_id(ref, type_name)
    except ValueError as exc:
        raise InvalidInput(f"{resource.get('resourceType')}.{element}: {exc}") from exc


def first_text(concepts: Any) -> str:
    """The text of a CodeableConcept (or the first of a list), else its first coding's display or code."""
    if isinstance(concepts, list):
        concepts = concepts[0] if concepts else None
    if not isinstance(concepts, dict):
        return ""
    if concepts.get("text"):
        return str(concepts["text"])
    coding = (concepts.get("coding") or [{}])[0]
    return str(coding.get("display") or coding.get("code") or "")


def coding_code(concept: Any, system: str | None = None) -> str | None:
    """The code of the first coding (under `system`, when given) of a CodeableConcept."""
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if system is None or coding.get("system") == system:
            code = coding.get("code")
            return str(code) if code is not None else None
    return None
