"""Uploads are size-limited: an oversized body is refused with 413 before it is read whole."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from hospital.seed import DemoSeed


def test_oversized_bodies_are_refused_with_413(app: Flask, as_role: Any, demo: DemoSeed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 64 * 1024)  # restored after the test
    staff = as_role("imaging_staff")
    big = b"x" * (128 * 1024)
    stow = staff.post("/dicomweb/studies", data=big,
                      headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert stow.status_code == 413
    assert stow.mimetype == "application/problem+json"
    fhir = staff.post("/fhir/Patient", data=big, headers={"Content-Type": "application/fhir+json"})
    assert fhir.status_code == 413 and fhir.get_json()["resourceType"] == "OperationOutcome"
