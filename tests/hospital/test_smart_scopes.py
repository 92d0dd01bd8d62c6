"""SMART scope parsing and what a token's scopes grant (pure: no app, no database)."""

from __future__ import annotations

import pytest

from hospital.smart_scopes import InvalidScope, ResourceScope, SmartAccess, parse_resource_scope, scope_within


def test_v2_and_v1_forms_parse_to_interactions() -> None:
    assert parse_resource_scope("patient/*.rs") == ResourceScope("patient", "*", frozenset("rs"))
    assert parse_resource_scope("user/Observation.read") == ResourceScope("user", "Observation", frozenset("rs"))
    assert parse_resource_scope("system/*.write") == ResourceScope("system", "*", frozenset("cud"))
    assert parse_resource_scope("user/*.*") == ResourceScope("user", "*", frozenset("cruds"))
    assert parse_resource_scope("launch/patient") is None


@pytest.mark.parametrize("bad", ["patient/*.sr", "patient/*.", "clinic/*.rs", "patient/Obs-ervation.rs",
                                 "patient/Observation.rs?code=1234", "openid"])
def test_malformed_or_unsupported_scopes_are_refused_by_name(bad: str) -> None:
    with pytest.raises(InvalidScope, match="scope|permissions"):
        parse_resource_scope(bad)


def test_a_requested_scope_must_be_no_wider_than_the_registration() -> None:
    allowed = ["patient/*.rs", "launch/patient"]
    assert scope_within("patient/Observation.rs", allowed)
    assert scope_within("patient/Observation.read", allowed)
    assert not scope_within("patient/*.cruds", allowed)
    assert not scope_within("user/*.rs", allowed)
    assert not scope_within("offline_access", allowed)


def test_patient_scopes_hold_a_type_to_the_launch_patient_unless_a_user_scope_opens_it() -> None:
    access = SmartAccess.from_token("app", "launch/patient patient/*.rs user/Practitioner.rs", 7)
    assert access.allows("Observation", "R") and not access.allows("Observation", "U")
    assert access.patient_restriction("Observation") == 7
    assert access.patient_restriction("Practitioner") is None
    assert SmartAccess.from_token("app", "patient/*.rs", None).patient_restriction("Patient") == -1
