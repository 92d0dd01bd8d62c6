"""The research image database end to end: consent in the patient's page, a signed report's study
contributed, de-identified into a dataset version (and the PHI scan of the export), withdrawal,
immutable versions, diffs, data-use agreements on export, FHIR Consent."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ai_services.models import DiagnosticReport, Finding, ModelVersion
from hospital.models import AuditEvent, JobRecord
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from research import service
from research.models import Contribution, DatasetVersion, ResearchUidMap, UidKind, VersionIsImmutable
from tests.factories import make_preliminary_report, store_report_slices
from tests.referrals.test_referral_pages import csrf_token_of, sign_in

INSTITUTION = "Saint Example Imaging Institute"
REFERRER = "Referrer^Rita^Q"
ADDRESS = "12 Harbour Lane, Exampletown"
BIRTH_DATE = date(1961, 7, 14)
STUDY_DATE = "20260917"
OTHER_ID = "NHS-998877"


def choose(client: FlaskClient, decision: str) -> str:
    page = client.get("/research/consent").get_data(as_text=True)
    response = client.post("/research/consent", data={"decision": decision, "csrf_token": csrf_token_of(page)},
                           follow_redirects=True)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def _add_phi(path: Path) -> None:
    """What a real modality writes beside the name and ID: the PHI the scan must not find later."""
    ds = pydicom.dcmread(path)
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = REFERRER
    ds.InstitutionAddress = ADDRESS
    ds.PatientBirthDate = BIRTH_DATE.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = STUDY_DATE
    ds.OtherPatientIDs = OTHER_ID
    ds.StudyDescription = f"CT chest {ds.PatientName.family_name}"
    ds.add_new(0x00091010, "LO", f"private {ds.PatientID}")  # a private tag carrying the ID
    ds.add_new(0x00090010, "LO", "ACME")
    ds.BurnedInAnnotation = "NO"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _add_secondary_capture(session: Session, storage: Path, study: ImagingStudy, burned_in: str | None) -> str:
    """A screenshot-like image in the study: kept out (text in its pixels)."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_instance_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Screen^Shot", "X", "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(64)
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    series = ImagingSeries(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID, number=9, modality="OT")
    session.add(series)
    session.flush()
    path = storage / "sc" / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    session.add(ImagingInstance(series_id=series.id, sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                                transfer_syntax_uid=ExplicitVRLittleEndian, number=1,
                                path=str(path.relative_to(storage)), size_bytes=path.stat().st_size, sha256="0" * 64))
    session.flush()
    return str(ds.SOPInstanceUID)


def signed_study(session: Session, demo: DemoSeed, app: Flask, as_role: Any) -> tuple[DiagnosticReport, list[str]]:
    """A study of demo.patient with a CT series full of PHI and two screenshots, its one AI finding
    accepted by the radiologist and the report signed through the API. Returns the source files'
    paths."""
    demo.patient.birth_date = BIRTH_DATE
    report = make_preliminary_report(session, demo, [(10, 10, 30, 30)])
    model = session.scalar(select(ModelVersion).where(ModelVersion.active.is_(True)))
    assert model is not None
    for finding in session.scalars(select(Finding).where(Finding.report_id == report.id)):
        finding.model_version_id = model.id
    # A UID of its own: the factory's (pydicom's root + referral id) can equal pydicom's own
    # ImplementationClassUID, which every written file carries and which identifies no one.
    study = session.get(ImagingStudy, report.study_id)
    assert study is not None
    study.study_instance_uid = generate_uid()
    storage = Path(app.config["DICOM_STORAGE_DIR"])
    store_report_slices(session, storage, report, np.zeros((10, 32, 32), dtype=np.int16),
                        pixel_spacing_mm=0.7, slice_thickness_mm=2.5)
    paths = [str(storage / path) for path in session.scalars(
        select(ImagingInstance.path).join(ImagingSeries).where(ImagingSeries.study_id == study.id))]
    assert len(paths) == 10
    for path in paths:
        _add_phi(Path(path))
    _add_secondary_capture(session, storage, study, "YES")
    _add_secondary_capture(session, storage, study, None)
    session.commit()
    radiologist = as_role("radiologist")
    finding_id = report.findings[0].id
    reviewed = radiologist.post(f"/api/reports/{report.id}/findings/{finding_id}/review", json={"decision": "accepted"})
    assert reviewed.status_code == 200
    assert radiologist.post(f"/api/reports/{report.id}/sign", json={}).status_code == 200
    return report, paths


def _phi_of(session: Session, demo: DemoSeed, report: DiagnosticReport, paths: list[str]) -> set[str]:
    study = session.get(ImagingStudy, report.study_id)
    assert study is not None and study.accession_number
    sources = [pydicom.dcmread(p) for p in paths]
    phi = {demo.patient.mrn, demo.patient.family_name, demo.patient.given_name, study.accession_number,
           INSTITUTION, "Referrer", "Harbour Lane", OTHER_ID, BIRTH_DATE.strftime("%Y%m%d"), STUDY_DATE,
           study.study_instance_uid}
    for ds in sources:
        phi |= {str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.FrameOfReferenceUID)}
    return {p for p in phi if p}


def _version(session: Session, app: Flask, licence: str = "research-only") -> DatasetVersion:
    return service.create_dataset_version(
        session, licence=licence, created_by="test", dicom_dir=Path(app.config["DICOM_STORAGE_DIR"]),
        research_dir=Path(app.config["INSTANCE_DIR"]) / "research", secret="test-research-secret",
    )


def test_consenting_patients_reviewed_study_is_in_the_next_version_de_identified_and_withdrawal_keeps_it_out(
    app: Flask, client: FlaskClient, demo: DemoSeed, db_session: Session, as_role: Any, tmp_path: Path
) -> None:
    sign_in(client, "patient")
    assert "Your images may now be used for research" in choose(client, "permit")
    report, paths = signed_study(db_session, demo, app, as_role)

    handlers = db_session.scalars(select(JobRecord.handler).where(JobRecord.event == "ai.report_signed")).all()
    assert "research.jobs.record_contribution_for_report" in handlers
    contribution = db_session.scalar(select(Contribution).where(Contribution.study_id == report.study_id))
    assert contribution is not None
    [label] = contribution.labels
    assert label["decision"] == "accepted" and label["reviewer"] == f"reviewer-{demo.users['radiologist'].id}"
    assert label["model_version"] and label["source"] == "ai"

    first = _version(db_session, app)
    manifest = first.manifest
    assert manifest["counts"]["studies"] == 1 and manifest["counts"]["instances"] == 10
    assert manifest["counts"]["per_institution"] == {f"institution-{demo.imaging_centre.id}": 1}
    assert manifest["counts"]["per_label"] == {"finding": 1}
    # The two screenshots (burned-in YES, and not stated for secondary capture) are kept out, and
    # so are the report's SR and key images the AI stage stored back into the study.
    reasons = [k["reason"] for k in manifest["kept_out"]]
    assert "burned-in annotation: YES" in reasons
    assert "burned-in annotation not stated for Secondary Capture" in reasons
    [study_uid] = manifest["studies"]
    study = db_session.get(ImagingStudy, report.study_id)
    assert study is not None
    # The retained-UID mapping is kept apart: the original -> research UID is in its table only.
    mapped = db_session.scalar(select(ResearchUidMap.research_uid).where(
        ResearchUidMap.kind == UidKind.STUDY, ResearchUidMap.original_uid == study.study_instance_uid))
    assert mapped == study_uid != study.study_instance_uid
    [finding] = manifest["studies"][study_uid]["findings"]
    assert finding["key_sop_instance_uid"] in {i["sop_instance_uid"] for i in manifest["instances"]}

    service.add_data_use_agreement(db_session, demo.imaging_centre.id, "research-only", "DUA-2026-001")
    export = service.export_version(db_session, first.number, tmp_path / "v1", Path(app.config["INSTANCE_DIR"]) / "research")
    exported = sorted(p for p in export.rglob("*") if p.is_file())
    dicoms = [p for p in exported if p.suffix == ".dcm"]
    assert len(dicoms) == 10
    # The PHI scan: every exported file, byte for byte, for what the source carried.
    phi = _phi_of(db_session, demo, report, paths)
    found = {(p.name, value) for p in exported for value in phi if value.encode() in p.read_bytes()}
    assert found == set()
    for path in dicoms:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert "113100" in {c.CodeValue for c in ds.DeidentificationMethodCodeSequence}
        assert not any(element.tag.is_private for element in ds)
    lines = [json.loads(line) for line in (export / "labels.jsonl").read_text().splitlines()]
    assert [line["study_instance_uid"] for line in lines] == [study_uid] and len(lines[0]["slices"]) == 10
    assert all((export / s).is_file() for s in lines[0]["slices"])

    # Withdrawal: out of every later version; the earlier one stays as it was, marked.
    assert "will not be used in any research dataset made from now on" in choose(client, "deny")
    second = _version(db_session, app)
    assert second.manifest["studies"] == {} and second.manifest["counts"]["instances"] == 0
    db_session.refresh(first)
    assert service.manifest_sha256(first.manifest) == first.manifest_sha256 and study_uid in first.manifest["studies"]
    assert [m.reason for m in service.version_marks(db_session, first)] == ["consent withdrawn"]
    diff = service.diff_versions(db_session, first.number, second.number)
    assert diff.removed_studies == (study_uid,) and len(diff.removed_instances) == 10 and diff.added_studies == ()
    again = service.export_version(db_session, first.number, tmp_path / "v1-again", Path(app.config["INSTANCE_DIR"]) / "research")
    assert not list(again.rglob("*.dcm")) and "consent withdrawn" in (again / "VERSION").read_text()


def test_a_patient_who_never_said_yes_is_not_in_a_version(
    app: Flask, demo: DemoSeed, db_session: Session, as_role: Any
) -> None:
    report, _ = signed_study(db_session, demo, app, as_role)
    assert db_session.scalar(select(Contribution).where(Contribution.study_id == report.study_id)) is not None
    version = _version(db_session, app)
    assert version.manifest["studies"] == {} and version.manifest["counts"]["instances"] == 0
    assert db_session.scalars(select(ResearchUidMap)).all() == []  # nothing was even de-identified


def test_a_version_cannot_be_changed_or_deleted(app: Flask, demo: DemoSeed, db_session: Session) -> None:
    version = _version(db_session, app)
    db_session.commit()
    version.licence = "anything-goes"
    with pytest.raises(VersionIsImmutable):
        db_session.flush()
    db_session.rollback()
    for statement in ("UPDATE dataset_version SET licence = 'x'", "DELETE FROM dataset_version"):
        with pytest.raises(DBAPIError, match="immutable"), db_session.begin_nested():
            db_session.execute(text(statement))
    assert db_session.scalar(select(DatasetVersion.licence).where(DatasetVersion.id == version.id)) == "research-only"


def test_export_is_refused_without_a_data_use_agreement_for_the_licence(
    app: Flask, client: FlaskClient, demo: DemoSeed, db_session: Session, as_role: Any, tmp_path: Path
) -> None:
    sign_in(client, "patient")
    choose(client, "permit")
    signed_study(db_session, demo, app, as_role)
    version = _version(db_session, app, licence="CC-BY-NC-4.0")
    service.add_data_use_agreement(db_session, demo.imaging_centre.id, "research-only", "DUA-OTHER")
    with pytest.raises(service.DataUseNotAgreed, match=f"institution-{demo.imaging_centre.id}"):
        service.export_version(db_session, version.number, tmp_path / "out", Path(app.config["INSTANCE_DIR"]) / "research")
    assert not (tmp_path / "out").exists()


def test_consent_is_fhir_consent_for_the_patient_and_admins_only(
    client: FlaskClient, demo: DemoSeed, db_session: Session, as_role: Any
) -> None:
    sign_in(client, "patient")
    choose(client, "permit")
    choose(client, "deny")
    patient = as_role("patient")
    bundle = patient.get(f"/fhir/Consent?patient=Patient/{demo.patient.id}&_sort=_id").get_json()
    consents = [e["resource"] for e in bundle["entry"]]
    assert [(c["status"], c["provision"]["type"]) for c in consents] == [("inactive", "permit"), ("active", "deny")]
    assert consents[0]["scope"]["coding"][0]["code"] == "research"
    assert consents[1]["provision"]["purpose"][0]["code"] == "HRESCH"
    assert as_role("admin").get(f"/fhir/Consent/{consents[1]['id']}").status_code == 200
    assert as_role("clinician").get(f"/fhir/Consent/{consents[1]['id']}").status_code == 403
    audited = db_session.execute(select(AuditEvent.user_id, AuditEvent.outcome).where(
        AuditEvent.entity_type == "Consent", AuditEvent.entity_id == consents[1]["id"])).all()
    assert (demo.users["admin"].id, 0) in audited and any(
        user == demo.users["clinician"].id and outcome != 0 for user, outcome in audited)


def test_a_choice_that_is_neither_yes_nor_no_is_refused_and_nothing_is_stored(
    client: FlaskClient, demo: DemoSeed, db_session: Session
) -> None:
    sign_in(client, "patient")
    page = choose(client, "maybe")
    assert "decision must be" in page and "You have not chosen yet" in page
    assert service.current_consent(db_session, demo.patient.id) is None


def test_the_hospital_research_command_creates_diffs_and_exports_versions(
    app: Flask, client: FlaskClient, demo: DemoSeed, db_session: Session, as_role: Any, tmp_path: Path
) -> None:
    sign_in(client, "patient")
    choose(client, "permit")
    signed_study(db_session, demo, app, as_role)
    runner = app.test_cli_runner()

    refused = runner.invoke(args=["research", "agreement", "add", "999999", "--licence", "research-only", "--reference", "R"])
    assert refused.exit_code == 1 and "no organization 999999" in refused.output
    added = runner.invoke(args=["research", "agreement", "add", str(demo.imaging_centre.id), "--licence", "research-only",
                                "--reference", "DUA-2026-007"])
    assert added.exit_code == 0, added.output
    first = runner.invoke(args=["research", "dataset", "create", "--licence", "research-only"])
    assert first.exit_code == 0, first.output
    assert "dataset version 1: 1 studies, 10 instances" in first.output and '"finding": 1' in first.output
    assert runner.invoke(args=["research", "dataset", "create", "--licence", "research-only"]).exit_code == 0
    diff = runner.invoke(args=["research", "dataset", "diff", "1", "2"])
    assert diff.exit_code == 0 and json.loads(diff.output)["added_instances"] == []
    assert "no dataset version 7" in runner.invoke(args=["research", "dataset", "diff", "1", "7"]).output

    exported = runner.invoke(args=["research", "dataset", "export", "1", str(tmp_path / "v1")])
    assert exported.exit_code == 0, exported.output
    assert len(list((tmp_path / "v1" / "studies").rglob("*.dcm"))) == 10
    assert json.loads((tmp_path / "v1" / "manifest.json").read_text())["version"] == 1
    again = runner.invoke(args=["research", "dataset", "export", "1", str(tmp_path / "v1")])
    assert again.exit_code == 1 and "is not empty" in again.output
