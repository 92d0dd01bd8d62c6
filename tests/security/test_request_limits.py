"""Request limits (issue 13, finding 6): a FHIR or JSON API body has its own size limit
(`MAX_JSON_BYTES`), far below the DICOM upload limit that STOW-RS keeps, and is refused before it
is parsed; a transaction or batch Bundle has at most `FHIR_MAX_BUNDLE_ENTRIES` entries. Both answer
413: an OperationOutcome under /fhir, an HTTP problem under /api."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask

from hospital.config import load_config
from hospital.seed import DemoSeed

LIMIT = 4096


@pytest.fixture()
def small_json_limit(app: Flask, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setitem(app.config, "MAX_JSON_BYTES", LIMIT)  # restored after the test
    return LIMIT


def test_defaults_are_ten_mebibytes_and_a_thousand_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAX_JSON_BYTES", raising=False)
    monkeypatch.delenv("FHIR_MAX_BUNDLE_ENTRIES", raising=False)
    config = load_config({"SECRET_KEY": "x"})
    assert config["MAX_JSON_BYTES"] == 10 * 1024 * 1024
    assert config["FHIR_MAX_BUNDLE_ENTRIES"] == 1000
    assert config["MAX_CONTENT_LENGTH"] == 512 * 1024 * 1024  # the DICOM upload limit is its own


def test_a_fhir_body_over_the_json_limit_is_refused_before_it_is_parsed(
    as_role: Any, demo: DemoSeed, small_json_limit: int
) -> None:
    clinician = as_role("clinician")
    not_even_json = b"{" * (small_json_limit + 1)  # parsed, it would be a 400
    response = clinician.post("/fhir/Patient", data=not_even_json, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 413
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "too-long"
    bundle = clinician.post("/fhir", data=not_even_json, headers={"Content-Type": "application/fhir+json"})
    assert bundle.status_code == 413 and bundle.get_json()["resourceType"] == "OperationOutcome"


def test_an_api_body_over_the_json_limit_is_a_413_problem(as_role: Any, demo: DemoSeed, small_json_limit: int) -> None:
    clinician = as_role("clinician")
    response = clinician.post("/api/referrals", data=b"[" * (small_json_limit + 1),
                              headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.mimetype == "application/problem+json"


def test_a_body_within_the_json_limit_is_read_as_before(as_role: Any, demo: DemoSeed, small_json_limit: int) -> None:
    response = as_role("clinician").post("/fhir/Patient", data=b"{" * 10, headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 400


def test_stow_rs_keeps_the_upload_limit(as_role: Any, demo: DemoSeed, small_json_limit: int) -> None:
    staff = as_role("imaging_staff")
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + b"x" * (small_json_limit * 4) + b"\r\n--b--\r\n"
    response = staff.post("/dicomweb/studies", data=body,
                          headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert response.status_code != 413, response.get_data(as_text=True)


def _batch(count: int) -> bytes:
    entries = [{"request": {"method": "GET", "url": "Organization"}} for _ in range(count)]
    return json.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries}).encode()


def test_a_bundle_over_the_entry_limit_is_refused_with_an_operation_outcome(
    app: Flask, as_role: Any, demo: DemoSeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "FHIR_MAX_BUNDLE_ENTRIES", 3)
    clinician = as_role("clinician")
    headers = {"Content-Type": "application/fhir+json"}
    assert clinician.post("/fhir", data=_batch(3), headers=headers).status_code == 200
    refused = clinician.post("/fhir", data=_batch(4), headers=headers)
    assert refused.status_code == 413
    outcome = refused.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "too-long"
    assert "3" in outcome["issue"][0]["diagnostics"]
