"""Retraining reads an exported research dataset version: the labels it finds there are the
radiologists' decisions on the consenting patients' signed reports, on the de-identified pixels,
and nothing the version does not vouch for (a changed file, a changed manifest, a path outside the
export) is trained on."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.models import DiagnosticReport, ModelStatus
from ai_services.retraining import DatasetExportError, ReviewedCase, collect_labels, labels_from_dataset_export, retrain
from ai_services.service import active_model_version
from hospital.seed import DemoSeed
from research import service
from research.models import Contribution
from tests.ai_services.test_retraining import CONFIG, correct_labels, lesion_crops, sign_cases

LICENCE = "research-only"


@pytest.fixture
def exported(app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path) -> Path:
    """At least six signed hypodense-lesion studies of a consenting patient (the radiologist drew each box
    the AI missed), made into dataset version 1 and exported."""
    service.record_consent(db_session, demo.users["patient"], demo.patient.id, "permit")
    sign_cases(app, db_session, demo, lesion_crops(("hypodense",), 10.0), correct_labels, ai_finds_truth=False,
               finetune=6, heldout=0)
    for report_id in db_session.scalars(select(DiagnosticReport.id)):
        service.record_contribution(db_session, report_id)  # what the ReportSigned job does
    service.add_data_use_agreement(db_session, demo.imaging_centre.id, LICENCE, "DUA-2026-011")
    service.create_dataset_version(
        db_session, licence=LICENCE, created_by="test", dicom_dir=Path(app.config["DICOM_STORAGE_DIR"]),
        research_dir=Path(app.config["INSTANCE_DIR"]) / "research", secret="test-research-secret",
    )
    db_session.commit()
    target = tmp_path / "dataset-v1"
    service.export_version(db_session, 1, target, Path(app.config["INSTANCE_DIR"]) / "research")
    return target


def test_the_export_gives_the_same_labels_on_the_same_pixels_as_the_signed_reports(
    app: Flask, db_session: Session, exported: Path
) -> None:
    from_reports = collect_labels(db_session, Path(app.config["DICOM_STORAGE_DIR"]), heldout_percent=0)
    from_dataset = labels_from_dataset_export(exported, heldout_percent=0)

    contributions = db_session.scalars(select(Contribution)).all()
    assert len(from_dataset.cases) == len(from_reports.cases) == len(contributions) >= 6
    def boxes(cases: list[ReviewedCase]) -> list[str]:
        return sorted(repr((c.positives, c.negatives)) for c in cases)

    assert boxes(from_dataset.cases) == boxes(from_reports.cases)
    assert all(c.research_study_uid and c.report_id is None for c in from_dataset.cases)
    # The same training examples: de-identification leaves the pixels and geometry alone.
    key = lambda s: s.hu.tobytes()  # noqa: E731
    for ours, theirs in zip(sorted(from_dataset.finetune, key=key), sorted(from_reports.finetune, key=key), strict=True):
        np.testing.assert_array_equal(ours.hu, theirs.hu)
        assert np.array_equal(ours.mask, theirs.mask) and ours.mask.any()
    assert from_dataset.dataset is not None and from_dataset.dataset["version"] == 1
    assert f"manifest sha256 {from_dataset.dataset['manifest_sha256']}" in (exported / "VERSION").read_text()
    # Every case goes to the held-out side with 100 %, none to fine-tuning.
    assert labels_from_dataset_export(exported, heldout_percent=100).finetune == []


def test_retraining_from_a_dataset_version_records_it_as_the_candidates_provenance(
    app: Flask, db_session: Session, exported: Path, tmp_path: Path
) -> None:
    parent = active_model_version(db_session)
    assert parent is not None
    # Every case fine-tunes: the research UIDs are new each run, so a hashed split would vary.
    config = replace(CONFIG, heldout_percent=0)
    version = retrain(db_session, Path(app.config["DICOM_STORAGE_DIR"]), tmp_path / "models", config,
                      dataset_dir=exported)
    db_session.commit()

    assert version is not None and version.status in (ModelStatus.ACTIVE, ModelStatus.REJECTED)
    assert version.parent_version_id == parent.id and version.decision_reason
    provenance = version.manifest["retraining"]
    assert provenance["dataset"]["version"] == 1
    assert provenance["dataset"]["manifest_sha256"] in (exported / "VERSION").read_text()
    assert provenance["reviewed_cases"] == len(db_session.scalars(select(Contribution)).all()) >= 6
    assert provenance["finetune_slices"] == len(labels_from_dataset_export(exported, heldout_percent=0).finetune) >= 6


def _copy(exported: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(exported, tmp_path / name))


def test_an_export_that_is_not_what_the_version_vouches_for_is_refused_with_the_reason(
    app: Flask, exported: Path, tmp_path: Path
) -> None:
    changed_file = _copy(exported, tmp_path, "changed-file")
    victim = next((changed_file / "studies").rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-64] + b"\0" * 64)
    with pytest.raises(DatasetExportError, match="changed since export"):
        labels_from_dataset_export(changed_file)

    changed_manifest = _copy(exported, tmp_path, "changed-manifest")
    manifest = json.loads((changed_manifest / "manifest.json").read_text())
    manifest["licence"] = "CC0"
    (changed_manifest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetExportError, match="is not the manifest of dataset version 1"):
        labels_from_dataset_export(changed_manifest)

    escaping = _copy(exported, tmp_path, "escaping")
    line = json.loads((escaping / "labels.jsonl").read_text().splitlines()[0])
    line["slices"] = ["../../etc/passwd"]
    (escaping / "labels.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(DatasetExportError, match="outside the export"):
        labels_from_dataset_export(escaping)

    # The command says why and changes nothing.
    result = app.test_cli_runner().invoke(args=["ai", "retrain", "--dataset", str(changed_file), "--steps", "1"])
    assert result.exit_code == 1 and "changed since export" in result.output
    result = app.test_cli_runner().invoke(args=["ai", "retrain", "--dataset", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_hospital_ai_train_trains_on_a_dataset_version_and_scores_its_held_out_studies(
    app: Flask, exported: Path, tmp_path: Path
) -> None:
    runner = app.test_cli_runner()
    small = ["--phantoms", "2", "--epochs", "1", "--steps-per-epoch", "4", "--validation-phantoms", "1",
             "--heldout-phantoms", "1"]
    result = runner.invoke(args=["ai", "train", "--out", str(tmp_path / "w"), *small, "--dataset", str(exported),
                                 "--dataset-heldout-percent", "50"])
    assert result.exit_code == 0, result.output
    labels = labels_from_dataset_export(exported, heldout_percent=50)
    assert labels.finetune and labels.heldout  # both sides of the split hold studies
    manifest = json.loads(next((tmp_path / "w").glob("*.json")).read_text())
    used = manifest["training_data"]["dataset"]
    assert labels.dataset is not None
    assert (used["version"], used["manifest_sha256"]) == (labels.dataset["version"], labels.dataset["manifest_sha256"])
    assert used["slices"] == len(labels.finetune) and 0.25 <= used["patch_fraction"] <= 0.5
    assert used["patches_drawn"] > 0
    assert "the dataset's held-out studies: " in result.output

    # An export that does not match its own manifest is refused before anything trains.
    tampered = tmp_path / "tampered"
    shutil.copytree(exported, tampered)
    labels_file = tampered / "labels.jsonl"
    labels_file.write_text(labels_file.read_text().replace('"accepted"', '"rejected"', 1))
    before = {p.name for p in (tmp_path / "w").iterdir()}
    refused = runner.invoke(args=["ai", "train", "--out", str(tmp_path / "w2"), *small, "--dataset", str(tampered)])
    assert refused.exit_code == 1 and len(refused.output.splitlines()) == 1
    assert refused.output.startswith("Error: labels.jsonl: the labels of study ") and "not the manifest's" in refused.output
    assert not (tmp_path / "w2").exists() and {p.name for p in (tmp_path / "w").iterdir()} == before
