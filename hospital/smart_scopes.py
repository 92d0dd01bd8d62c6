"""SMART on FHIR scopes: parsing them, and what a SMART access token lets its bearer do.

Scopes narrow, never widen: a token acts for a user (for a backend service, the service account
the administrator tied the app to), and `hospital.access` applies the scopes on top of that user's
role and care relationships. `patient/` scopes further hold the token to its launch patient.
Both SMART v2 (`patient/Observation.rs`, `user/*.cruds`) and v1 (`patient/*.read`, `user/*.write`,
`.*`) forms are read; query-constrained v2 scopes (`?category=...`) are not supported and are
refused by name rather than silently widened.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from flask import g, has_request_context

from hospital.models import User

logger = logging.getLogger(__name__)

CONTEXTS = ("patient", "user", "system")
# Scopes that carry no resource access: identity, launch context, refresh tokens.
NON_RESOURCE_SCOPES = frozenset({
    "launch", "launch/patient", "offline_access", "online_access",
})
V1_INTERACTIONS = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}
_V2_PATTERN = re.compile(r"^c?r?u?d?s?$")
_SCOPE_PATTERN = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([A-Za-z*]+)$")
# The audit trail's `action` codes, as the SMART interactions that permit them.
ACTION_INTERACTIONS = {"C": frozenset("c"), "R": frozenset("rs"), "U": frozenset("u"), "D": frozenset("d"),
                       "E": frozenset("s")}


class InvalidScope(ValueError):
    """A scope string this server does not understand; the message names it."""


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a FHIR type name, or "*"
    interactions: frozenset[str]  # of c r u d s

    def covers(self, resource_type: str, interactions: frozenset[str]) -> bool:
        return self.resource_type in ("*", resource_type) and bool(self.interactions & interactions)


def parse_resource_scope(text: str) -> ResourceScope | None:
    """One scope as a ResourceScope; None for a non-resource scope (`openid`, `launch`, ...)."""
    if text in NON_RESOURCE_SCOPES:
        return None
    if "?" in text:
        raise InvalidScope(f"query-constrained scopes are not supported: {text!r}")
    match = _SCOPE_PATTERN.match(text)
    if match is None:
        raise InvalidScope(f"unknown scope {text!r}")
    context, resource_type, permission = match.groups()
    interactions = V1_INTERACTIONS.get(permission)
    if interactions is None:
        if not permission or _V2_PATTERN.match(permission) is None:
            raise InvalidScope(f"{text!r}: permissions must be v1 read/write/* or v2 letters in the order cruds")
        interactions = frozenset(permission)
    return ResourceScope(context, resource_type, interactions)


def split_scopes(scope: str) -> list[str]:
    return [part for part in scope.split(" ") if part]


def validate_scopes(scope: str) -> list[str]:
    """Every scope in a space-separated string, checked (InvalidScope names the first bad one)."""
    parts = split_scopes(scope)
    for part in parts:
        parse_resource_scope(part)
    return parts


def scope_within(requested: str, allowed: list[str]) -> bool:
    """Whether one requested scope is no wider than some scope the app was registered for."""
    if requested in allowed:
        return True
    wanted = parse_resource_scope(requested)
    if wanted is None:
        return False
    for candidate in allowed:
        granted = parse_resource_scope(candidate)
        if (granted is not None and granted.context == wanted.context
                and granted.resource_type in ("*", wanted.resource_type)
                and wanted.interactions <= granted.interactions):
            return True
    return False


@dataclass(frozen=True)
class SmartAccess:
    """What one SMART access token grants: its app, its resource scopes and launch patient."""

    client_id: str
    scopes: tuple[ResourceScope, ...]
    patient_id: int | None

    @classmethod
    def from_token(cls, client_id: str, scope: str, patient_id: int | None) -> SmartAccess:
        parsed = (parse_resource_scope(part) for part in split_scopes(scope))
        return cls(client_id, tuple(s for s in parsed if s is not None), patient_id)

    def allows(self, resource_type: str, action: str) -> bool:
        """Whether some scope permits `action` (an audit action code) on `resource_type`."""
        wanted = ACTION_INTERACTIONS.get(action, frozenset())
        return any(scope.covers(resource_type, wanted) for scope in self.scopes)

    def patient_restriction(self, resource_type: str, action: str = "R") -> int | None:
        """The one patient this type is limited to, or None when a user/ or system/ scope opens
        it (within the user's own access). With only patient/ scopes and no launch patient,
        -1: no patient at all."""
        wanted = ACTION_INTERACTIONS.get(action, frozenset())
        covering = [scope for scope in self.scopes if scope.covers(resource_type, wanted)]
        if any(scope.context != "patient" for scope in covering):
            return None
        return self.patient_id if self.patient_id is not None else -1


def current_smart_access(user: User) -> SmartAccess | None:
    """The SMART grant of this request's token when `user` is the caller it authenticated."""
    if not has_request_context():
        return None
    access: SmartAccess | None = g.get("smart_access")
    if access is None or g.get("current_user") is not user:
        return None
    return access
