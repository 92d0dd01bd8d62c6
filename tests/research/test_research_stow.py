"""Issue #19: contributors upload studies to the research database by STOW-RS as well as by the page
and the upload API. A real DICOMweb client (dicomweb-client) stores a study over HTTP; labels
travel as one application/json part; images kept out of research are answered as failed; an upload
that cannot be taken is refused whole with the reason, and nothing is kept."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from flask import Flask
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.dicom_status import PROCESSING_FAILURE
from hospital.seed import DemoSeed, seed_demo
from research.models import Contribution, ResearchInstance
from research.storage import research_dir
from tests.conftest import make_test_app
from tests.imaging_orders.test_dicomweb_client_live import bearer, serving
from tests.research.test_contributor_uploads import (
    INSTITUTION,
    PATIENT_ID,
    PATIENT_NAME,
    nothing_kept,
    sop_uid,
    stored_files,
    study_files,
)

CONSENT = "CONSENT-2026-1201"
BOUNDARY = "ResearchBoundary7"


@pytest.fixture()
def live(live_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Flask]]:
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)
    app = make_test_app(live_database, tmp_path)
    with app.app_context(), get_db(app).transaction() as session:
        seed_demo(session, app)
    with serving(app) as base:
        yield base, app


def test_a_contributor_stores_a_study_with_dicomweb_client_and_only_de_identified_copies_are_kept(
    live: tuple[str, Flask]
) -> None:
    base, app = live
    files = study_files()
    datasets = [pydicom.dcmread(io.BytesIO(data)) for _, data in files]
    client = DICOMwebClient(url=f"{base}/api/research/dicomweb",
                            headers={**bearer(base, "contributor"), "Research-Consent-Reference": CONSENT})
    answer = client.store_instances(datasets)
    referenced = {item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence}
    assert referenced == {ds.SOPInstanceUID for ds in datasets}
    assert "FailedSOPSequence" not in answer

    with app.app_context(), get_db(app).session() as session:
        contribution = session.scalar(select(Contribution))
        assert contribution is not None and contribution.consent_reference == CONSENT and contribution.labels == []
        kept = session.scalars(select(ResearchInstance).where(ResearchInstance.contribution_id == contribution.id)).all()
        assert len(kept) == len(files) and all(r.excluded_reason is None for r in kept)
        stored = [research_dir(app) / r.path for r in kept]
    phi = [PATIENT_NAME, PATIENT_ID, INSTITUTION, "ACC-55102", *referenced]
    assert {(p.name, v) for p in stored for v in phi if v.encode() in p.read_bytes()} == set()

    other_roles = requests.post(f"{base}/api/research/dicomweb/studies", timeout=10, data=b"",
                                headers={**bearer(base, "imaging_staff"), "Content-Type": "multipart/related"})
    assert other_roles.status_code == 403


def _screenshot_of(data: bytes) -> bytes:
    """A secondary capture with burned-in text, in the same study as `data`."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _body(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    body = b"".join(b"--" + BOUNDARY.encode() + f"\r\nContent-Type: {kind}\r\n\r\n".encode() + content + b"\r\n"
                    for kind, content in parts) + b"--" + BOUNDARY.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _stow(as_role: Any, parts: list[tuple[str, bytes]], consent: str | None = CONSENT, role: str = "contributor") -> Any:
    body, content_type = _body(parts)
    headers = {"Research-Consent-Reference": consent} if consent is not None else {}
    return as_role(role).post("/api/research/dicomweb/studies", data=body, content_type=content_type, headers=headers)


def test_labels_travel_as_a_json_part_and_an_image_kept_out_is_answered_as_failed(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    files = study_files()
    key = sop_uid(files[2][1])
    labels = [{"key_sop_instance_uid": key, "box": [12, 10, 22, 20], "decision": "accepted", "diameter_mm": 8.0}]
    shot = _screenshot_of(files[0][1])
    parts = [("application/dicom", data) for _, data in files] + [("application/dicom", shot)]
    response = _stow(as_role, [*parts, ("application/json", json.dumps(labels).encode())])
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.mimetype == "application/dicom+json"
    answer = pydicom.Dataset.from_json(response.get_json())
    assert len(answer.ReferencedSOPSequence) == len(files)
    [failed] = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == sop_uid(shot) and failed.FailureReason == PROCESSING_FAILURE
    contribution = db_session.scalar(select(Contribution))
    assert contribution is not None and len(contribution.labels) == 1
    assert contribution.labels[0]["key_sop_instance_uid"] == key


@pytest.mark.parametrize(("parts", "consent", "status", "reason"), [
    ("study", None, 400, "consent"),
    ("study+text", CONSENT, 415, "part 7 is 'text/plain'"),
    ("study+bad-json", CONSENT, 400, "not valid JSON"),
    ("study+two-json", CONSENT, 400, "one application/json part"),
    ("not-dicom", CONSENT, 400, "part 1 is not a DICOM file"),
    ("study+label-elsewhere", CONSENT, 400, "label"),
])
def test_an_upload_that_cannot_be_taken_is_refused_whole_with_the_reason(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, parts: str, consent: str | None, status: int,
    reason: str
) -> None:
    study = [("application/dicom", data) for _, data in study_files()]
    elsewhere = [{"key_sop_instance_uid": "1.2.3.4", "box": [1, 1, 5, 5], "decision": "accepted"}]
    chosen = {
        "study": study,
        "study+text": [*study, ("text/plain", b"hello")],
        "study+bad-json": [*study, ("application/json", b"[{")],
        "study+two-json": [*study, ("application/json", b"[]"), ("application/json", b"[]")],
        "not-dicom": [("application/dicom", b"this is not DICOM at all" * 20)],
        "study+label-elsewhere": [*study, ("application/json", json.dumps(elsewhere).encode())],
    }[parts]
    before = stored_files(app)
    response = _stow(as_role, chosen, consent)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert reason.casefold() in response.get_json()["detail"].casefold()
    assert nothing_kept(db_session, app, before)
    assert db_session.scalar(select(func.count()).select_from(Contribution)) == 0
