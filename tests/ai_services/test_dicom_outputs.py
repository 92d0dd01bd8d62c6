"""DICOM outputs of a report: the TID 1500 SR and the key-image captures, built purely and stored
back into the study idempotently, refreshed when the report is signed."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from flask import Flask
from sqlalchemy.orm import Session

from ai_services.dicom_outputs import (
    PRESENCE_CONCEPT,
    SC_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    DicomOutputError,
    OutputFinding,
    OutputReport,
    build_report_outputs,
    read_measurement_report,
)
from ai_services.events import ReportSigned
from ai_services.jobs import make_report_outputs
from ai_services.models import DiagnosticReport, ReviewStatus
from ai_services.report_outputs import store_report_outputs
from ai_services.service import Box, add_finding, review_finding, sign_report
from hospital.seed import DemoSeed
from synthetic.dicom_factory import ct_series_datasets
from synthetic.phantoms import make_ct_phantom
from tests.ai_services.studies import output_instances, store_study_with_report
from tests.factories import analysis_completed


def _round_trip(dataset: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _slices() -> dict[str, pydicom.Dataset]:
    datasets = ct_series_datasets(make_ct_phantom(3, n_slices=3, size=64), patient_id="P1", patient_name="Doe^Jo",
                                  accession_number="ACC1")
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def test_sr_is_a_tid1500_measurement_report_that_round_trips() -> None:
    slices = _slices()
    first, second, _ = slices
    report = OutputReport(7, "final", (
        OutputFinding(1, first, (10, 12, 20, 22), 15.0, 0.83, "accepted", "ai"),
        OutputFinding(2, first, (30, 30, 40, 44), 21.0, None, "accepted", "radiologist"),
        OutputFinding(3, second, (5, 5, 9, 9), 6.0, 0.4, "rejected", "ai"),
    ), model_version="1", signed_by="Rad^Rita")

    outputs = build_report_outputs(report, slices)
    stored = _round_trip(outputs.structured_report)

    assert stored.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert stored.Modality == "SR" and stored.SeriesNumber == SR_SERIES_NUMBER
    assert stored.StudyInstanceUID == slices[first].StudyInstanceUID and stored.PatientID == "P1"
    assert (stored.CompletionFlag, stored.VerificationFlag) == ("COMPLETE", "VERIFIED")
    title = stored.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("126000", "DCM")  # Imaging Measurement Report
    assert stored.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    rois = read_measurement_report(stored)
    assert [(r.tracking_identifier, r.referenced_sop_instance_uid, r.review_status, r.source) for r in rois] == [
        ("Finding 1", first, "ACCEPTED", "AI"), ("Finding 2", first, "ACCEPTED", "RADIOLOGIST"),
        ("Finding 3", second, "REJECTED", "AI"),
    ]
    assert rois[0].graphic_type == "POLYLINE"
    assert rois[0].graphic_data == [(10, 12), (20, 12), (20, 22), (10, 22), (10, 12)]  # closed, on pixel edges
    assert (rois[0].diameter_mm, rois[0].certainty_percent) == (15.0, 83.0)
    assert rois[1].certainty_percent is None
    sr = hd.sr.Comprehensive3DSR.from_dataset(stored)
    assert {e[2] for e in sr.get_evidence()} == {first, second}  # (study, series, SOP instance, SOP class)


def test_key_images_have_the_boxes_burned_in_and_skip_rejected_findings() -> None:
    slices = _slices()
    first, second, _ = slices
    report = OutputReport(8, "preliminary", (
        OutputFinding(1, first, (10, 12, 20, 22), 15.0, 0.83, "pending", "ai"),
        OutputFinding(3, second, (5, 5, 9, 9), 6.0, 0.4, "rejected", "ai"),
    ))

    outputs = build_report_outputs(report, slices)

    assert outputs.structured_report.CompletionFlag == "PARTIAL"
    assert len(outputs.secondary_captures) == 1  # the rejected finding's slice gets no key image
    capture = _round_trip(outputs.secondary_captures[0])
    assert capture.SeriesNumber == SC_SERIES_NUMBER and capture.BurnedInAnnotation == "YES"
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == first
    pixels = capture.pixel_array
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert tuple(pixels[11, 15]) == (255, 204, 0)  # top edge of the pending box, one pixel outside
    assert pixels[16, 15, 0] == pixels[16, 15, 1] == pixels[16, 15, 2]  # inside the box stays grey


def test_same_report_state_gives_same_uids_and_a_change_gives_new_ones() -> None:
    slices = _slices()
    first = next(iter(slices))
    pending = OutputReport(9, "preliminary", (OutputFinding(1, first, (10, 12, 20, 22), 15.0, 0.8, "pending", "ai"),))
    again = build_report_outputs(pending, slices)
    once = build_report_outputs(pending, slices)
    accepted = build_report_outputs(
        OutputReport(9, "preliminary", (OutputFinding(1, first, (10, 12, 20, 22), 15.0, 0.8, "accepted", "ai"),)), slices)

    assert [d.SOPInstanceUID for d in once.datasets] == [d.SOPInstanceUID for d in again.datasets]
    assert once.structured_report.SOPInstanceUID != accepted.structured_report.SOPInstanceUID
    assert once.structured_report.SeriesInstanceUID == accepted.structured_report.SeriesInstanceUID


def test_a_report_with_no_finding_gets_an_sr_saying_so() -> None:
    slices = _slices()
    first = next(iter(slices))
    report = OutputReport(11, "final", (), model_version="1", signed_by="Rad^Rita")

    outputs = build_report_outputs(report, slices)
    stored = _round_trip(outputs.structured_report)

    assert outputs.secondary_captures == []
    assert stored.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert (stored.CompletionFlag, stored.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert read_measurement_report(stored) == []  # no region, no measurement
    sr = hd.sr.Comprehensive3DSR.from_dataset(stored)
    [group] = sr.content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations(name=PRESENCE_CONCEPT)
    assert (evaluation.value.value, evaluation.value.scheme_designator) == ("272519000", "SCT")  # Absent
    assert {e[2] for e in sr.get_evidence()} == {first}


def test_a_missing_key_slice_is_refused() -> None:
    report = OutputReport(10, "preliminary", (OutputFinding(1, "1.2.3.4", (1, 1, 4, 4), 3.0, 0.5, "pending", "ai"),))
    with pytest.raises(DicomOutputError, match="1.2.3.4"):
        build_report_outputs(report, _slices())


def test_outputs_are_stored_in_the_study_idempotently_and_refreshed_when_signed(
    app: Flask, db_session: Session, demo: DemoSeed
) -> None:
    phantom = make_ct_phantom(11, n_slices=4, size=64)
    stored = store_study_with_report(app, db_session, demo, phantom.volume_hu, pixel_spacing_mm=1.5,
                                     ai_boxes=[(1, (10, 10, 20, 18), 0.9), (2, (30, 30, 36, 36), 0.3)])
    storage = Path(app.config["DICOM_STORAGE_DIR"])

    first = store_report_outputs(app, stored.report_id)
    again = store_report_outputs(app, stored.report_id)

    assert len(first) == 3 and not any(r.duplicate for r in first)  # SR + one key image per slice
    assert [r.sop_instance_uid for r in again] == [r.sop_instance_uid for r in first]
    assert all(r.duplicate for r in again)
    outputs = output_instances(db_session, stored.study_id)
    assert {n: len(rows) for n, rows in outputs.items()} == {SR_SERIES_NUMBER: 1, SC_SERIES_NUMBER: 2}
    sr = pydicom.dcmread(storage / outputs[SR_SERIES_NUMBER][0].path)
    assert [r.review_status for r in read_measurement_report(sr)] == ["PENDING", "PENDING"]

    radiologist = demo.users["radiologist"]
    report = db_session.get(DiagnosticReport, stored.report_id)
    assert report is not None
    keep, drop = report.findings
    review_finding(db_session, radiologist, report.id, keep.id, ReviewStatus.ACCEPTED)
    review_finding(db_session, radiologist, report.id, drop.id, ReviewStatus.REJECTED)
    add_finding(db_session, radiologist, report.id, 3, Box(40, 40, 50, 52))
    sign_report(db_session, radiologist, report.id)
    db_session.commit()
    old_paths = [storage / r.path for r in first]

    signed = ReportSigned(report_id=report.id, patient_id=report.patient_id, referral_id=report.referral_id)
    make_report_outputs(db_session, signed)  # the job the ReportSigned event runs

    outputs = output_instances(db_session, stored.study_id)
    assert {n: len(rows) for n, rows in outputs.items()} == {SR_SERIES_NUMBER: 1, SC_SERIES_NUMBER: 2}
    assert not any(p.exists() for p in old_paths), "the preliminary outputs were replaced, not kept"
    sr = pydicom.dcmread(storage / outputs[SR_SERIES_NUMBER][0].path)
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert sorted((r.review_status, r.source) for r in read_measurement_report(sr)) == [
        ("ACCEPTED", "AI"), ("ACCEPTED", "RADIOLOGIST"), ("REJECTED", "AI")]
    captured = {pydicom.dcmread(storage / row.path).SourceImageSequence[0].ReferencedSOPInstanceUID
                for row in outputs[SC_SERIES_NUMBER]}
    assert captured == {stored.sop_instance_uids[1], stored.sop_instance_uids[3]}


def test_a_study_with_no_finding_gets_its_sr_stored_and_refreshed_when_signed(
    app: Flask, db_session: Session, demo: DemoSeed
) -> None:
    phantom = make_ct_phantom(12, n_slices=3, size=64)
    stored = store_study_with_report(app, db_session, demo, phantom.volume_hu, pixel_spacing_mm=1.5, ai_boxes=[])
    storage = Path(app.config["DICOM_STORAGE_DIR"])

    make_report_outputs(db_session, analysis_completed(db_session, report_of(db_session, stored.report_id)))

    outputs = output_instances(db_session, stored.study_id)
    assert {n: len(rows) for n, rows in outputs.items()} == {SR_SERIES_NUMBER: 1}
    preliminary = pydicom.dcmread(storage / outputs[SR_SERIES_NUMBER][0].path)
    assert preliminary.CompletionFlag == "PARTIAL" and read_measurement_report(preliminary) == []

    signed_report = sign_report(db_session, demo.users["radiologist"], stored.report_id)
    db_session.commit()
    make_report_outputs(db_session, ReportSigned(report_id=signed_report.id, patient_id=signed_report.patient_id,
                                                 referral_id=signed_report.referral_id))

    outputs = output_instances(db_session, stored.study_id)
    assert {n: len(rows) for n, rows in outputs.items()} == {SR_SERIES_NUMBER: 1}
    signed = pydicom.dcmread(storage / outputs[SR_SERIES_NUMBER][0].path)
    assert (signed.CompletionFlag, signed.VerificationFlag) == ("COMPLETE", "VERIFIED")


def report_of(session: Session, report_id: int) -> DiagnosticReport:
    report = session.get(DiagnosticReport, report_id)
    assert report is not None
    return report
