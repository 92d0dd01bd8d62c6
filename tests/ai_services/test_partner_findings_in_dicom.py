"""Partner models' findings in the study's DICOM outputs (issue #19): the TID 1500 SR names the
model of every group (the built-in model, a partner's detection, a partner's classification as a
group without an image region, each silent model's "nothing found"), and a partner segmentation's
region becomes a segment of a BINARY DICOM Segmentation whose pixels are the region's."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from flask import Flask
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.dicom_outputs import (
    PRIVATE_SCHEME,
    SC_SERIES_NUMBER,
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    OutputFinding,
    OutputMask,
    OutputModel,
    OutputReport,
    ParsedAlgorithm,
    ParsedEvaluation,
    build_report_outputs,
    read_image_evaluations,
    read_measurement_report,
)
from ai_services.masks import MaskError, decode_mask, encode_mask
from ai_services.models import Finding, PackageAnalysis, ReviewStatus
from ai_services.package_jobs import run_packages_on_report
from ai_services.report_outputs import store_report_outputs
from ai_services.service import failed_outputs, review_finding
from hospital.models import JobRecord
from hospital.seed import DemoSeed
from synthetic.dicom_factory import ct_series_datasets
from synthetic.phantoms import make_ct_phantom
from tests.ai_services.package_factory import make_classifier_package, make_map_package
from tests.ai_services.studies import output_instances, store_study_with_report
from tests.ai_services.test_package_runs import approved, block_volume

DETECTOR = OutputModel(analysis_id=5, name="bright-detection", version="1.0.0", partner="Acme Imaging AI")
CLASSIFIER = OutputModel(analysis_id=6, name="nodule-classifier", version="2.1", partner="Beta Radiology AI")
SEGMENTER = OutputModel(analysis_id=7, name="bright-segmentation", version="1.0.0", partner="Acme Imaging AI")
BUILT_IN = ParsedAlgorithm("lesion-detector", "3", None)


def _round_trip(dataset: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _uids(dataset: pydicom.Dataset | None) -> list[str]:
    """Every UID in the dataset, nested ones too, in order."""
    found: list[str] = []
    assert dataset is not None
    dataset.walk(lambda _, element: found.append(str(element.value)) if element.VR == "UI" else None)
    return found


def _slices() -> dict[str, pydicom.Dataset]:
    datasets = ct_series_datasets(make_ct_phantom(3, n_slices=3, size=64), patient_id="P1", patient_name="Doe^Jo",
                                  accession_number="ACC1")
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def test_masks_round_trip_as_run_lengths() -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[0, 0] = True  # foreground first: the runs start with an empty background run
    mask[2:4, 3:6] = True
    runs = encode_mask(mask)
    assert runs[:2] == [0, 1] and sum(runs) == 42
    assert np.array_equal(decode_mask(runs, 6, 7), mask)
    assert encode_mask(np.zeros((2, 2), dtype=bool)) == [4]
    with pytest.raises(MaskError, match="41"):
        decode_mask(runs[:-1] + [runs[-1] - 1], 6, 7)


def test_the_sr_names_the_model_of_every_finding() -> None:
    slices = _slices()
    first, second, _ = slices
    report = OutputReport(12, "preliminary", (
        OutputFinding(1, first, (10, 12, 20, 22), 15.0, 0.83, "pending", "ai"),
        OutputFinding(2, second, (30, 30, 40, 44), 21.0, 0.9, "accepted", "ai", package=DETECTOR),
        OutputFinding(3, second, (0, 0, 64, 64), 0.0, 0.87, "accepted", "ai", package=CLASSIFIER,
                      kind="classification", label="abnormal"),
        OutputFinding(4, first, (40, 40, 50, 52), 15.0, None, "accepted", "radiologist"),
    ), model_version="3", packages=(DETECTOR, CLASSIFIER))

    outputs = build_report_outputs(report, slices)
    stored = _round_trip(outputs.structured_report)

    assert stored.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    rois = read_measurement_report(stored)
    assert [(r.tracking_identifier, r.algorithm, r.review_status, r.source) for r in rois] == [
        ("Finding 1", BUILT_IN, "PENDING", "AI"),
        ("Finding 2", ParsedAlgorithm("bright-detection", "1.0.0", "Acme Imaging AI"), "ACCEPTED", "AI"),
        ("Finding 4", None, "ACCEPTED", "RADIOLOGIST"),  # the radiologist's own: no algorithm
    ]
    assert (rois[1].referenced_sop_instance_uid, rois[1].diameter_mm, rois[1].certainty_percent) == (second, 21.0, 90.0)
    # The classification: a group without an image region, its class a code of ours, its probability in %.
    assert read_image_evaluations(stored) == [ParsedEvaluation(
        "Finding 3", second, ParsedAlgorithm("nodule-classifier", "2.1", "Beta Radiology AI"), "abnormal", 87.0,
        None, "ACCEPTED", "AI")]
    sr = hd.sr.Comprehensive3DSR.from_dataset(stored)
    [group] = sr.content.get_image_measurement_groups()
    [verdict] = group.get_qualitative_evaluations(name=codes.SCT.Classification)
    assert verdict.value.scheme_designator == PRIVATE_SCHEME and len(verdict.value.value) <= 16
    assert {e[2] for e in sr.get_evidence()} == {first, second}
    # Key images: the classification's box is only the field its model saw, so it is not drawn.
    assert [c.SourceImageSequence[0].ReferencedSOPInstanceUID for c in outputs.secondary_captures] == [first, second]
    assert outputs.segmentation is None
    # Same state, same UIDs; a partner finding reviewed, a new SR.
    assert build_report_outputs(report, slices).structured_report.SOPInstanceUID == stored.SOPInstanceUID
    reviewed = replace(report, findings=(report.findings[0], replace(report.findings[1], review_status="rejected"),
                                         *report.findings[2:]))
    assert build_report_outputs(reviewed, slices).structured_report.SOPInstanceUID != stored.SOPInstanceUID


def test_each_model_that_found_nothing_says_so_in_its_own_group() -> None:
    slices = _slices()
    first = next(iter(slices))
    report = OutputReport(13, "final", (), model_version="3", signed_by="Rad^Rita", packages=(DETECTOR,))

    stored = _round_trip(build_report_outputs(report, slices).structured_report)

    assert (stored.CompletionFlag, stored.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert read_measurement_report(stored) == []
    assert [(e.tracking_identifier, e.algorithm, e.presence, e.source_sop_instance_uid)
            for e in read_image_evaluations(stored)] == [
        ("No finding", BUILT_IN, "Absent", first),
        ("No finding (bright-detection 1.0.0)", ParsedAlgorithm("bright-detection", "1.0.0", "Acme Imaging AI"),
         "Absent", first),
    ]


def test_a_study_the_built_in_model_did_not_read_has_the_partner_models_findings_only() -> None:
    slices = _slices()
    second = list(slices)[1]
    report = OutputReport(14, "preliminary", (
        OutputFinding(1, second, (30, 30, 40, 44), 21.0, 0.9, "pending", "ai", package=DETECTOR),
    ), model_version="3", packages=(DETECTOR,), builtin_read=False)

    stored = _round_trip(build_report_outputs(report, slices).structured_report)

    assert [r.algorithm for r in read_measurement_report(stored)] == [
        ParsedAlgorithm("bright-detection", "1.0.0", "Acme Imaging AI")]
    assert read_image_evaluations(stored) == []  # no "nothing found" of a model that did not look
    [device] = find_content_items(stored, name=codes.DCM.DeviceObserverName, recursive=True)
    assert device.TextValue == "bright-detection 1.0.0"


def _segmentation_finding(finding_id: int, sop_uid: str, mask: np.ndarray, review_status: str) -> OutputFinding:
    ys, xs = np.nonzero(mask)
    return OutputFinding(finding_id, sop_uid, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                         12.0, 0.8, review_status, "ai", package=SEGMENTER, kind="segmentation",
                         label="segmented region", volume_mm3=float(mask.sum()) * 2.5,
                         mask=OutputMask(mask.shape[0], mask.shape[1], tuple(encode_mask(mask))))


def test_a_segmented_region_becomes_a_segment_of_a_dicom_segmentation() -> None:
    slices = _slices()
    first, second, _ = slices
    region = np.zeros((64, 64), dtype=bool)
    region[20:30, 25:33] = True
    region[22, 25] = False  # not just its box
    other = np.zeros((64, 64), dtype=bool)
    other[5:9, 5:9] = True
    report = OutputReport(15, "preliminary", (
        _segmentation_finding(1, second, region, "pending"),
        _segmentation_finding(2, first, other, "rejected"),  # a rejected region is no segment
    ), packages=(SEGMENTER,))

    outputs = build_report_outputs(report, slices)
    assert outputs.segmentation is not None
    stored = _round_trip(outputs.segmentation)

    assert stored.SOPClassUID == pydicom.uid.SegmentationStorage and stored.Modality == "SEG"
    assert stored.SeriesNumber == SEG_SERIES_NUMBER and stored.StudyInstanceUID == slices[second].StudyInstanceUID
    seg = hd.seg.Segmentation.from_dataset(stored)
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert {uids[2] for uids in seg.get_source_image_uids()} == {second}
    pixels = seg.get_pixels_by_source_instance([second], segment_numbers=[1])
    assert pixels.shape == (1, 64, 64, 1) and np.array_equal(pixels[0, :, :, 0].astype(bool), region)
    description = seg.get_segment_description(1)
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    [algorithm] = description.algorithm_identification or []
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion, algorithm.AlgorithmSource) == (
        "bright-segmentation", "1.0.0", "Acme Imaging AI")
    assert description.tracking_id == "Finding 1"
    [roi, _] = read_measurement_report(_round_trip(outputs.structured_report))
    assert roi.volume_mm3 == pytest.approx(float(region.sum()) * 2.5)
    assert _uids(build_report_outputs(report, slices).segmentation) == _uids(outputs.segmentation)  # the same state

    # The radiologist's corrected box clips the region (made with a person: SEMIAUTOMATIC), in a new
    # instance of the same series; once rejected, there is no Segmentation.
    edited = replace(report.findings[0], review_status="edited", box=(25, 20, 30, 30))
    again = build_report_outputs(replace(report, findings=(edited, report.findings[1])), slices).segmentation
    assert again is not None
    assert again.SOPInstanceUID != stored.SOPInstanceUID and again.SeriesInstanceUID == stored.SeriesInstanceUID
    clipped = hd.seg.Segmentation.from_dataset(_round_trip(again))
    expected = region.copy()
    expected[:, 30:] = False
    assert np.array_equal(clipped.get_pixels_by_source_instance([second], segment_numbers=[1])[0, :, :, 0].astype(bool),
                          expected)
    assert clipped.get_segment_description(1).algorithm_type == hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    rejected = replace(report.findings[0], review_status="rejected")
    assert build_report_outputs(replace(report, findings=(rejected, report.findings[1])), slices).segmentation is None


def test_every_models_findings_are_stored_in_the_study_with_the_segmentation(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    detector = approved(db_session, demo, make_map_package(tmp_path / "d", "detection"), app)
    segmenter = approved(db_session, demo, make_map_package(tmp_path / "s", "segmentation"), app)
    approved(db_session, demo, make_classifier_package(tmp_path / "c"), app)
    db_session.commit()
    partner = detector.partner_organization.name
    study = store_study_with_report(app, db_session, demo, block_volume(), pixel_spacing_mm=0.75,
                                    ai_boxes=[(1, (10, 10, 20, 18), 0.9)])
    storage = Path(app.config["DICOM_STORAGE_DIR"])

    run_packages_on_report(study.report_id)
    # Each partner model's findings remake the outputs (one job per completed run).
    remakes = db_session.scalars(select(JobRecord).where(JobRecord.event == "ai.package_analysis_completed",
                                                         JobRecord.handler == "ai_services.jobs.make_report_outputs"))
    assert len(remakes.all()) == 3
    assert failed_outputs(db_session, study.study_id) is None  # they ran (inline here) without failing
    store_report_outputs(app, study.report_id)

    outputs = output_instances(db_session, study.study_id)
    assert {n: len(rows) for n, rows in outputs.items()} == {SR_SERIES_NUMBER: 1, SC_SERIES_NUMBER: 2,
                                                              SEG_SERIES_NUMBER: 1}
    sr = pydicom.dcmread(storage / outputs[SR_SERIES_NUMBER][0].path)
    rois = read_measurement_report(sr)
    assert sorted((r.algorithm.name, r.algorithm.manufacturer) for r in rois if r.algorithm) == [
        ("bright-detection", partner), ("bright-segmentation", partner), ("lesion-detector", None)]
    assert [r.volume_mm3 for r in rois if r.algorithm and r.algorithm.name == "bright-segmentation"] == [
        pytest.approx(5 * 5 * 1.5 * 1.5 * 5.0, abs=0.1)]
    [verdict] = read_image_evaluations(sr)
    assert verdict.algorithm == ParsedAlgorithm("nodule-classifier", "1.0.0", partner)
    assert verdict.label in ("normal", "abnormal") and verdict.certainty_percent is not None

    [region] = db_session.scalars(select(Finding).join(PackageAnalysis)
                                  .where(PackageAnalysis.model_package_id == segmenter.id)).all()
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(storage / outputs[SEG_SERIES_NUMBER][0].path))
    pixels = seg.get_pixels_by_source_instance([region.sop_instance_uid], segment_numbers=[1])[0, :, :, 0]
    expected = np.zeros((128, 128), dtype=bool)
    expected[region.y0:region.y1, region.x0:region.x1] = True  # the block: the finding's whole box
    assert (region.x0, region.y0, region.x1, region.y1) == (60, 40, 70, 50)
    assert np.array_equal(pixels.astype(bool), expected)
    [algorithm] = seg.get_segment_description(1).algorithm_identification or []
    assert (algorithm.AlgorithmName, algorithm.AlgorithmSource) == ("bright-segmentation", partner)

    # The radiologist rejects the region: the new outputs hold no Segmentation, the old one is withdrawn.
    review_finding(db_session, demo.users["radiologist"], study.report_id, region.id, ReviewStatus.REJECTED)
    db_session.commit()
    store_report_outputs(app, study.report_id)
    outputs = output_instances(db_session, study.study_id)
    assert set(outputs) == {SR_SERIES_NUMBER, SC_SERIES_NUMBER}
    sr = pydicom.dcmread(storage / outputs[SR_SERIES_NUMBER][0].path)
    assert [r.review_status for r in read_measurement_report(sr)
            if r.algorithm and r.algorithm.name == "bright-segmentation"] == ["REJECTED"]
