"""Fuzzing: every operation of the OpenAPI description of /api with Schemathesis (data that fits
the description and data that does not), and FHIR JSON bodies POSTed to /fhir/Patient and /fhir
(Bundles) with Hypothesis. Whatever arrives, the answer is never a 5xx.

Each API operation is called as a role its guard admits, so the fuzz reaches the handler instead
of stopping at a 403. Examples are few per operation to keep the suite fast; the seed is derived
so a failure replays.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from hospital import openapi
from hospital.db import get_db
from hospital.models import Role
from hospital.seed import DEMO_PASSWORD, seed_demo
from tests.conftest import make_test_app
from tests.security.test_authorisation_matrix import allowed_roles

EXAMPLES_PER_OPERATION = 8
# STOW-RS bodies (the research database's DICOMweb upload): parts of arbitrary bytes between
# boundaries. The fuzzer's Content-Type names no boundary, so these reach the multipart parser and
# its refusals; tests/research/test_research_stow.py sends well-formed ones.
schemathesis.openapi.media_type("multipart/related", st.lists(st.binary(max_size=512), max_size=3).map(
    lambda parts: b"".join(b"--fuzz\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts)
    + b"--fuzz--\r\n"))
SKIPPED = {("POST", "/api/auth/revoke")}  # it revokes the fuzzer's own token; the matrix covers it
FUZZ_SETTINGS = settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture()
def fuzz_app(live_database: str, tmp_path: Path) -> Iterator[Flask]:
    app = make_test_app(live_database, tmp_path)
    with app.app_context(), get_db(app).transaction() as session:
        seed_demo(session, app)
    yield app


def bearer(app: Flask, username: str) -> dict[str, str]:
    response = app.test_client().post("/api/auth/token", json={"username": username, "password": DEMO_PASSWORD})
    assert response.status_code == 201
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def role_for(app: Flask, method: str, path: str) -> str:
    endpoint, _ = app.url_map.bind("localhost").match(path, method=method)
    roles = allowed_roles(app.view_functions[endpoint])
    return Role.ADMIN.value if roles is None or Role.ADMIN in roles else sorted(r.value for r in roles)[0]


def test_the_description_covers_every_api_route(fuzz_app: Flask) -> None:
    described = {(method.upper(), path.replace("{", "<int:").replace("}", ">"))
                 for path, ops in openapi.load_spec()["paths"].items() for method in ops}
    served = {(method, rule.rule) for rule in fuzz_app.url_map.iter_rules() if rule.rule.startswith("/api/")
              and rule.endpoint != "openapi.spec" for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    assert served - described == set(), "routes missing from hospital/openapi.json"
    assert described - served == set(), "operations described but not served"


def _fuzz_operation(operation: Any, mode: GenerationMode, headers: dict[str, str], label: str, failures: list[str]) -> None:
    """Run one operation's generated cases in one mode; a 5xx answer is recorded as a failure."""

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call(headers=headers)
        if response.status_code >= 500:
            failures.append(f"{label} {case.formatted_path} -> {response.status_code}: "
                            f"query={case.query!r} body={case.body!r}"[:400])

    fuzz()


def test_no_api_operation_answers_5xx_to_fuzzed_input(fuzz_app: Flask) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", fuzz_app)
    tokens: dict[str, dict[str, str]] = {}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40
    for operation in operations:
        method, path = operation.method.upper(), operation.path
        if (method, path) in SKIPPED:
            continue
        flask_path = path.replace("{", "<int:").replace("}", ">")
        rule_path = next(r.rule for r in fuzz_app.url_map.iter_rules() if r.rule == flask_path)
        role = role_for(fuzz_app, method, _sample(rule_path))
        headers = tokens.setdefault(role, bearer(fuzz_app, role))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, headers, f"{method} [{role}, {mode.value}]", failures)
    assert not failures, "\n".join(failures[:20])


def _sample(rule: str) -> str:
    return re.sub(r"<int:[a-z_]+>", "1", rule)


JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=40)
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)
PATIENT_KEYS = ["id", "meta", "identifier", "active", "name", "telecom", "gender", "birthDate", "address",
                "managingOrganization", "contained", "extension", "text"]
NAME = st.fixed_dictionaries({}, optional={"family": JSON | st.text(max_size=20), "given": st.lists(st.text(max_size=10), max_size=3) | JSON})
PATIENT = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Patient", "Patient", "patient", "Observation", ""])},
    optional={key: (st.lists(NAME, max_size=2) if key == "name" else
                    st.sampled_from(["male", "female", "other", "unknown", "x"]) if key == "gender" else
                    st.sampled_from(["1970-01-01", "2024-02-30", "1970", "yesterday"]) if key == "birthDate" else JSON)
              for key in PATIENT_KEYS},
)
ENTRY = st.fixed_dictionaries({}, optional={
    "fullUrl": st.sampled_from(["urn:uuid:1", "urn:uuid:2", "Patient/1", "", "urn:uuid:1"]) | JSON,
    "resource": PATIENT | JSON,
    "request": st.fixed_dictionaries({}, optional={
        "method": st.sampled_from(["POST", "PUT", "GET", "DELETE", "PATCH", "HEAD"]) | JSON,
        "url": st.sampled_from(["Patient", "Patient/1", "Patient?identifier=x", "Unknown/1", "/", "", "Patient/999999999999999999999"]) | JSON,
        "ifNoneExist": st.sampled_from(["identifier=x|y", "", "foo=bar"]) | JSON,
        "ifMatch": st.sampled_from(['W/"1"', "1", ""]) | JSON,
    }),
})
BUNDLE = st.fixed_dictionaries(
    {"resourceType": st.just("Bundle"), "type": st.sampled_from(["transaction", "batch", "collection", "x"]) | JSON},
    optional={"entry": st.lists(ENTRY, max_size=4) | JSON, "id": JSON},
)


def test_fhir_writes_never_answer_5xx_to_fuzzed_resources(fuzz_app: Flask) -> None:
    client = fuzz_app.test_client()
    headers = {**bearer(fuzz_app, "admin"), "Content-Type": "application/fhir+json"}
    failures: list[str] = []

    @settings(max_examples=120, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(url=st.sampled_from(["/fhir/Patient", "/fhir"]), body=PATIENT | BUNDLE | JSON)
    def fuzz(url: str, body: Any) -> None:
        response = client.post(url, json=body, headers=headers)
        if response.status_code >= 500:
            failures.append(f"POST {url} -> {response.status_code}: {str(body)[:300]}")

    fuzz()
    garbage = [b"", b"{", b"\xff\xfe", b"[]" * 1000, b'{"resourceType": "Patient", "name": ' + b"[" * 5000]
    for raw in garbage:
        for url in ("/fhir/Patient", "/fhir"):
            status = client.post(url, data=raw, headers=headers).status_code
            if status >= 500:
                failures.append(f"POST {url} raw {raw[:40]!r} -> {status}")
    api_headers = {**headers, "Content-Type": "application/json"}
    for raw in garbage:
        status = client.post("/api/referrals", data=raw, headers=api_headers).status_code
        if status >= 500:
            failures.append(f"POST /api/referrals raw {raw[:40]!r} -> {status}")
    assert not failures, "\n".join(failures[:20])
