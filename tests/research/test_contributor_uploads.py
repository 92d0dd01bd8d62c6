"""A research contributor (a practitioner's or a partner institution's account) uploads studies with
labels, by the JSON API and by its page: checked whole, de-identified on arrival (the originals are
never kept), part of the next dataset version under the institution's data-use agreement, read by
retraining, and withdrawable. Bad uploads are refused with the reason and leave nothing behind."""

from __future__ import annotations

import io
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ai_services.retraining import labels_from_dataset_export
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from research import service
from research.models import Contribution, ContributionSource, ResearchInstance, ResearchUidMap, UidKind
from research.storage import research_dir, research_secret
from synthetic.dicom_factory import ct_series_datasets
from tests.referrals.test_referral_pages import csrf_token_of, sign_in

PATIENT_NAME = "Zhang^Wei"
PATIENT_ID = "EXT-77120"
INSTITUTION = "Riverside Partner Hospital"
LICENCE = "research-only"
SLICES, SIZE = 6, 32


def study_files(*, patient_id: str = PATIENT_ID, study_uid: str | None = None) -> list[tuple[str, bytes]]:
    """One external CT study as its files, full of what identifies the patient."""
    volume = np.full((SLICES, SIZE, SIZE), -50, dtype=np.int16)
    volume[2, 10:20, 12:22] = 60  # a lesion on slice 2
    datasets = ct_series_datasets(
        volume, patient_id=patient_id, patient_name=PATIENT_NAME, accession_number="ACC-55102",
        study_instance_uid=study_uid or generate_uid(), pixel_spacing_mm=0.8, slice_thickness_mm=2.0,
        study_datetime=datetime(2026, 10, 2, 9, 30), patient_birth_date=date(1959, 3, 8), patient_sex="M",
        referring_physician_name="Li^Na", institution_name=INSTITUTION,
    )
    files = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append((f"{ds.InstanceNumber:03d}.dcm", buffer.getvalue()))
    return files


def sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)


def multipart(files: list[tuple[str, bytes]], labels: Any = None, consent: str = "CONSENT-2026-0417") -> dict[str, Any]:
    data: dict[str, Any] = {"files": [(io.BytesIO(content), name) for name, content in files],
                            "consent_reference": consent}
    if labels is not None:
        data["labels"] = labels if isinstance(labels, str) else json.dumps(labels)
    return data


def upload(as_role: Any, files: list[tuple[str, bytes]], labels: Any = None, **kwargs: Any) -> Any:
    return as_role("contributor").post("/api/research/contributions", data=multipart(files, labels, **kwargs),
                                       content_type="multipart/form-data")


def stored_files(app: Flask) -> set[Path]:
    return set(research_dir(app).rglob("*.dcm"))


def nothing_kept(session: Session, app: Flask, files_before: set[Path]) -> bool:
    return session.scalar(select(func.count()).select_from(Contribution)) == 0 and session.scalar(
        select(func.count()).select_from(ResearchInstance)) == 0 and stored_files(app) == files_before


def test_an_upload_is_de_identified_on_arrival_enters_the_next_version_and_retraining_reads_its_labels(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, tmp_path: Path
) -> None:
    files = study_files()
    key = sop_uid(files[2][1])
    labels = [{"key_sop_instance_uid": key, "box": [12, 10, 22, 20], "decision": "accepted", "diameter_mm": 8.0},
              {"key_sop_instance_uid": sop_uid(files[4][1]), "box": [1, 1, 6, 6], "decision": "rejected"}]
    response = upload(as_role, files, labels)
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["images"] == SLICES and body["labels"] == 2 and body["kept_out"] == []

    contribution = db_session.get(Contribution, body["id"])
    assert contribution is not None and contribution.source is ContributionSource.UPLOAD
    assert contribution.organization_id == demo.users["contributor"].organization_id
    assert contribution.patient_id is None and contribution.consent_reference == "CONSENT-2026-0417"
    assert contribution.labels[0]["reviewer"] == f"contributor-{demo.users['contributor'].id}"
    # Only de-identified copies are kept; the original UIDs only in the map that never leaves.
    stored = sorted(research_dir(app) / i.path for i in db_session.scalars(
        select(ResearchInstance).where(ResearchInstance.contribution_id == contribution.id)))
    assert len(stored) == SLICES
    phi = [PATIENT_NAME, "Zhang", PATIENT_ID, INSTITUTION, "ACC-55102", "Li^Na", "19590308", "20261002", key]
    assert {(p.name, v) for p in stored for v in phi if v.encode() in p.read_bytes()} == set()
    assert db_session.scalar(select(ResearchUidMap.research_uid).where(
        ResearchUidMap.kind == UidKind.INSTANCE, ResearchUidMap.original_uid == key)) in {p.stem for p in stored}

    service.add_data_use_agreement(db_session, contribution.organization_id or 0, LICENCE, "DUA-2026-020")
    version = service.create_dataset_version(db_session, licence=LICENCE, created_by="test",
                                             dicom_dir=Path(app.config["DICOM_STORAGE_DIR"]),
                                             research_dir=research_dir(app), secret=research_secret(app))
    assert version.manifest["contributions"] == [contribution.id]
    assert version.manifest["counts"]["per_label"] == {"finding": 1}
    export = service.export_version(db_session, version.number, tmp_path / "v1", research_dir(app))
    exported = [p for p in export.rglob("*") if p.is_file()]
    assert {(p.name, v) for p in exported for v in phi if v.encode() in p.read_bytes()} == set()

    [case] = labels_from_dataset_export(export, heldout_percent=0).cases
    assert [(b.slice_index, b.box) for b in case.positives] == [(2, (12, 10, 22, 20))]
    assert [(b.slice_index, b.box) for b in case.negatives] == []  # a contributor's "rejected" is no AI miss
    assert len(case.instance_paths) == SLICES


def test_a_withdrawn_upload_leaves_later_versions_and_later_exports_of_earlier_ones(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, tmp_path: Path
) -> None:
    files = study_files()
    uploaded = upload(as_role, files, [{"key_sop_instance_uid": sop_uid(files[1][1]), "box": [0, 0, 4, 4]}])
    assert uploaded.status_code == 201
    upload_id = uploaded.get_json()["id"]
    organization_id = demo.users["contributor"].organization_id or 0
    service.add_data_use_agreement(db_session, organization_id, LICENCE, "DUA-2026-021")

    def version() -> Any:
        return service.create_dataset_version(db_session, licence=LICENCE, created_by="test",
                                              dicom_dir=Path(app.config["DICOM_STORAGE_DIR"]),
                                              research_dir=research_dir(app), secret=research_secret(app))

    first = version()
    assert first.manifest["contributions"] == [upload_id]
    # Nobody else withdraws it: another account, or an upload that is not one.
    assert as_role("clinician").post(f"/api/research/contributions/{upload_id}/withdraw").status_code == 403
    assert as_role("contributor").post("/api/research/contributions/999999/withdraw").status_code == 404

    withdrawn = as_role("contributor").post(f"/api/research/contributions/{upload_id}/withdraw")
    assert withdrawn.status_code == 200 and withdrawn.get_json()["withdrawn_at"]
    assert version().manifest["contributions"] == []
    assert [m.reason for m in service.version_marks(db_session, first)] == ["withdrawn by the contributor"]
    again = service.export_version(db_session, first.number, tmp_path / "again", research_dir(app))
    assert not list(again.rglob("*.dcm"))
    listed = as_role("contributor").get("/api/research/contributions").get_json()
    assert [(u["id"], bool(u["withdrawn_at"])) for u in listed] == [(upload_id, True)]

    # Each step is in the audit trail: the upload and its withdrawal by the contributor, the
    # versions made and the export (from the command line here: no account).
    trail = db_session.execute(select(AuditEvent.action, AuditEvent.entity_type, AuditEvent.entity_id,
                                      AuditEvent.user_id, AuditEvent.description)
                               .where(AuditEvent.entity_type.like("Research%")).order_by(AuditEvent.id)).all()
    contributor = demo.users["contributor"].id
    assert sorted((a, t, i, u or 0) for a, t, i, u, _ in trail) == sorted([
        ("C", "ResearchContribution", str(upload_id), contributor),
        ("C", "ResearchDatasetVersion", str(first.number), 0),
        ("U", "ResearchContribution", str(upload_id), contributor),
        ("C", "ResearchDatasetVersion", str(first.number + 1), 0),
        ("E", "ResearchDatasetVersion", str(first.number), 0),
    ])
    described = {(a, t): d or "" for a, t, _, _, d in trail}
    assert "6 images kept, 0 kept out, 1 labels; consent CONSENT-2026-0417" in described["C", "ResearchContribution"]
    assert str(tmp_path / "again") in described["E", "ResearchDatasetVersion"]


@pytest.mark.parametrize(("case", "status", "reason"), [
    ("not dicom", 400, "notes.txt is not a DICOM file"),
    ("two studies", 400, "one upload is one study"),
    ("same image twice", 400, "are the same image"),
    ("label on another image", 400, "which is not in this upload"),
    ("box outside the image", 400, "is not inside the 32 x 32 image"),
    ("box not numbers", 400, "label box must be a number"),
    ("labels not json", 400, "the labels are not valid JSON"),
    ("labels not a list", 400, "labels must be a JSON list"),
    ("bad decision", 400, "decision must be accepted or rejected"),
    ("no consent reference", 400, "where the patient's consent to research use is recorded"),
    ("no files", 400, "choose the study's DICOM files"),
    ("only burned-in screenshots", 400, "no image of this upload can be used for research"),
])
def test_a_bad_upload_is_refused_with_its_reason_and_nothing_is_kept(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, case: str, status: int, reason: str
) -> None:
    files = study_files()
    key = sop_uid(files[0][1])
    labels: Any = None
    consent = "CONSENT-1"
    if case == "not dicom":
        files = [*files, ("notes.txt", b"Patient Zhang Wei, see attached")]
    elif case == "two studies":
        files = [*files, *study_files()[:1]]
    elif case == "same image twice":
        files = [*files, files[0]]
    elif case == "label on another image":
        labels = [{"key_sop_instance_uid": "1.2.3.4", "box": [0, 0, 2, 2]}]
    elif case == "box outside the image":
        labels = [{"key_sop_instance_uid": key, "box": [20, 20, 40, 30]}]
    elif case == "box not numbers":
        labels = [{"key_sop_instance_uid": key, "box": ["a", 0, 2, 2]}]
    elif case == "labels not json":
        labels = "[{oops"
    elif case == "labels not a list":
        labels = {"key_sop_instance_uid": key}
    elif case == "bad decision":
        labels = [{"key_sop_instance_uid": key, "box": [0, 0, 2, 2], "decision": "maybe"}]
    elif case == "no consent reference":
        consent = "  "
    elif case == "no files":
        files = []
    elif case == "only burned-in screenshots":
        files = [screenshot()]
    before = stored_files(app)
    response = upload(as_role, files, labels, consent=consent)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json" and reason in response.get_json()["detail"]
    assert nothing_kept(db_session, app, before)


def screenshot() -> tuple[str, bytes]:
    ds = study_files()[0][1]
    dataset = pydicom.dcmread(io.BytesIO(ds))
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return "screen.dcm", buffer.getvalue()


def test_the_same_study_twice_is_refused_and_other_roles_cannot_upload(
    app: Flask, db_session: Session, as_role: Any
) -> None:
    study_uid = generate_uid()
    assert upload(as_role, study_files(study_uid=study_uid)).status_code == 201
    again = upload(as_role, study_files(study_uid=study_uid))
    assert again.status_code == 409 and "was uploaded before" in again.get_json()["detail"]
    for role in ("clinician", "patient", "partner", "radiologist"):
        response = as_role(role).post("/api/research/contributions", data=multipart(study_files()),
                                      content_type="multipart/form-data")
        assert response.status_code == 403, role
    assert db_session.scalar(select(func.count()).select_from(Contribution)) == 1


def test_the_uploads_page_in_both_languages(
    app: Flask, client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    sign_in(client, "contributor")
    page = client.get("/research/contributions")
    assert page.status_code == 200 and "You have not uploaded a study yet." in page.get_data(as_text=True)
    token = csrf_token_of(page.get_data(as_text=True))
    files = study_files()
    labels = json.dumps([{"key_sop_instance_uid": sop_uid(files[2][1]), "box": [12, 10, 22, 20]}])
    sent = client.post("/research/contributions", data={**multipart(files, consent="REG-9"), "labels": labels,
                                                          "csrf_token": token},
                       content_type="multipart/form-data", follow_redirects=True)
    html = sent.get_data(as_text=True)
    assert f"kept: {SLICES} images, de-identified, with 1 labels" in html and "REG-9" in html
    upload_id = db_session.scalar(select(Contribution.id))
    # Refused: the page says why and keeps nothing more.
    refused = client.post("/research/contributions", data={**multipart([("x.txt", b"hello")], consent="REG-9"),
                                                             "csrf_token": token},
                          content_type="multipart/form-data", follow_redirects=True)
    assert "x.txt is not a DICOM file" in refused.get_data(as_text=True)
    assert db_session.scalar(select(func.count()).select_from(Contribution)) == 1

    withdrawn = client.post(f"/research/contributions/{upload_id}/withdraw",
                            data={"csrf_token": token, "confirmed": "yes"}, follow_redirects=True)
    assert f"Upload {upload_id} is withdrawn." in withdrawn.get_data(as_text=True)

    chinese = client.get("/research/contributions", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "上传" in chinese and "Upload a study" not in chinese
