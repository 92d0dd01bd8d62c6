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


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1.evil.example/cb", "http://localhost.evil.example/cb", "http://example.org/cb",
    "https:///no-host", "javascript:alert(1)",
])
def test_a_redirect_uri_must_be_https_or_this_machine(db_session, uri: str) -> None:
    """Plain http only to the machine itself (an app under development), judged by the URI's host,
    not by how its text begins."""
    from hospital.smart import register_client

    with pytest.raises(ValueError, match="redirect URI"):
        register_client(db_session, name="app", scopes="patient/*.rs launch/patient", redirect_uris=[uri])
    for good in ("https://app.example/cb", "http://127.0.0.1:8123/cb", "http://localhost/cb", "http://[::1]:9/cb"):
        assert register_client(db_session, name="app", scopes="patient/*.rs launch/patient", redirect_uris=[good])


def test_a_jwks_url_must_be_https_or_this_machine(db_session) -> None:
    from hospital.models import Role, User
    from hospital.smart import register_client

    service = User(username="svc-jwks", password_hash="x", role=Role.ADMIN)
    db_session.add(service)
    db_session.flush()
    with pytest.raises(ValueError, match="JWKS URL"):
        register_client(db_session, name="svc", scopes="system/Patient.rs", jwks_uri="http://10.0.0.5/jwks.json",
                        service_user=service)
