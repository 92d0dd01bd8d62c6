"""DICOM objects that carry a report's findings back into the study, so any viewer or PACS shows them.

Two kinds of output, both built from the study's own source slices (datasets in, datasets out: no
Flask, no database):

- a Comprehensive 3D SR holding a TID 1500 Measurement Report (``highdicom.sr.MeasurementReport``):
  one TID 1410 "Planar ROI Measurements and Qualitative Evaluations" group per finding, with the
  bounding box as a closed SCOORD POLYLINE on the key slice's SOP instance, the long-axis diameter
  in mm, the AI's calibrated confidence as "Certainty of Finding" (%), and the radiologist's review
  status and the finding's source as qualitative evaluations; a report with no finding gets one
  TID 1501 group for lesions saying "Presence: Absent" instead (TID 1500 needs at least one group);
- one Secondary Capture (``highdicom.sc.SCImage``) per key slice: the slice windowed to 8-bit RGB
  with the finding boxes burned in (BurnedInAnnotation YES), for viewers that do not render SR.

UIDs are derived from the study, the report and a digest of the report's reviewable content, so
building the outputs twice for the same report state gives byte-identical UIDs (a re-store is a
duplicate) while a changed report (reviewed, signed) gets new instances in the same two series.

SCOORD coordinates are DICOM image coordinates: (column, row) with (0, 0) at the top-left corner of
the top-left pixel, so a box ``x0, y0, x1, y1`` (x1/y1 exclusive) has its edges exactly there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ai_services.overlay import WINDOWS

logger = logging.getLogger(__name__)

MANUFACTURER = "Closed Loop Hospital"
SR_SERIES_NUMBER = 9001
SC_SERIES_NUMBER = 9002
SR_SERIES_DESCRIPTION = "AI findings (TID 1500 measurement report)"
SC_SERIES_DESCRIPTION = "AI findings (key images)"
# Our own coding scheme for concepts with no standard code ("99" marks a private scheme, PS3.16 8.2).
PRIVATE_SCHEME = "99CLHOSP"
REVIEW_STATUS_CONCEPT = CodedConcept("REVIEW", PRIVATE_SCHEME, "Radiologist review status")
FINDING_SOURCE_CONCEPT = CodedConcept("SOURCE", PRIVATE_SCHEME, "Finding source")
# Not in pydicom's code dictionary: SNOMED CT "Presence", valued Present/Absent.
PRESENCE_CONCEPT = CodedConcept("705057003", "SCT", "Presence")
ADDENDUM_CONCEPT = CodedConcept("ADDENDUM", PRIVATE_SCHEME, "Addendum")
REVIEW_STATUS_CODES = {
    "pending": CodedConcept("PENDING", PRIVATE_SCHEME, "Pending review"),
    "accepted": CodedConcept("ACCEPTED", PRIVATE_SCHEME, "Accepted by radiologist"),
    "rejected": CodedConcept("REJECTED", PRIVATE_SCHEME, "Rejected by radiologist"),
    "edited": CodedConcept("EDITED", PRIVATE_SCHEME, "Edited by radiologist"),
}
FINDING_SOURCE_CODES = {
    "ai": CodedConcept("AI", PRIVATE_SCHEME, "Detected by AI"),
    "radiologist": CodedConcept("RADIOLOGIST", PRIVATE_SCHEME, "Added by radiologist"),
}
BOX_COLOURS = {"pending": (255, 204, 0), "accepted": (0, 220, 90), "edited": (0, 200, 255)}
RADIOLOGIST_COLOUR = (255, 80, 255)


class DicomOutputError(ValueError):
    """The report cannot be expressed as DICOM outputs (e.g. a finding's key slice is missing)."""


@dataclass(frozen=True)
class OutputFinding:
    """One finding as the outputs show it: where, how big, how sure, and what the radiologist said."""

    finding_id: int
    sop_instance_uid: str  # the key slice
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
    diameter_mm: float
    confidence: float | None
    review_status: str  # pending / accepted / rejected / edited
    source: str  # ai / radiologist


@dataclass(frozen=True)
class OutputReport:
    """What of the report goes into the outputs."""

    report_id: int
    status: str  # preliminary / final / amended
    findings: tuple[OutputFinding, ...]
    model_name: str = "lesion-detector"
    model_version: str = "unknown"
    signed_by: str | None = None  # the radiologist's name, once signed
    signed_at: datetime | None = None
    organization: str = "Closed Loop Hospital"
    # The radiologist's addenda to the signed report, oldest first (an amended report's SR holds them).
    addenda: tuple[str, ...] = ()

    @property
    def is_signed(self) -> bool:
        return self.status != "preliminary" and self.signed_by is not None

    def content_digest(self) -> str:
        """A digest of everything the outputs show, so a changed report gets new instance UIDs."""
        data = asdict(self)
        data["signed_at"] = self.signed_at.isoformat() if self.signed_at else None
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class ReportOutputs:
    structured_report: Dataset
    secondary_captures: list[Dataset]

    @property
    def datasets(self) -> list[Dataset]:
        return [self.structured_report, *self.secondary_captures]


def output_series_uids(study_instance_uid: str, report_id: int) -> tuple[str, str]:
    """(SR series UID, SC series UID): stable for a report across its versions."""
    return (
        generate_uid(entropy_srcs=[study_instance_uid, f"report:{report_id}", "series:sr"]),
        generate_uid(entropy_srcs=[study_instance_uid, f"report:{report_id}", "series:sc"]),
    )


def build_report_outputs(report: OutputReport, source_images: Mapping[str, Dataset]) -> ReportOutputs:
    """Build the SR and the key-image captures; ``source_images`` maps SOP Instance UID -> slice.

    Every finding's key slice must be in ``source_images`` (with pixels, for the captures).
    """
    missing = sorted({f.sop_instance_uid for f in report.findings} - set(source_images))
    if missing:
        raise DicomOutputError(f"report {report.report_id}: key slices not available: {missing[:3]}")
    if not source_images:
        raise DicomOutputError(f"report {report.report_id}: no source image to attach the outputs to")
    return ReportOutputs(
        structured_report=build_measurement_report(report, source_images),
        secondary_captures=build_key_image_captures(report, source_images),
    )


def build_measurement_report(report: OutputReport, source_images: Mapping[str, Dataset]) -> Comprehensive3DSR:
    """A Comprehensive 3D SR with a TID 1500 Measurement Report, one ROI group per finding."""
    any_image = next(iter(source_images.values()))
    study_uid = str(any_image.StudyInstanceUID)
    digest = report.content_digest()
    sr_series_uid, _ = output_series_uids(study_uid, report.report_id)
    algorithm = AlgorithmIdentification(name=report.model_name, version=report.model_version)
    groups: list[PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations] = []
    for finding in report.findings:
        image = source_images[finding.sop_instance_uid]
        x0, y0, x1, y1 = finding.box
        outline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
        region = ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE, graphic_data=outline,
            source_image=SourceImageForRegion.from_source_image(image),
        )
        measurements = [Measurement(name=codes.SCT.Diameter, value=float(finding.diameter_mm),
                                    unit=codes.UCUM.Millimeter)]
        if finding.confidence is not None:
            measurements.append(Measurement(
                name=codes.DCM.CertaintyOfFinding, value=round(float(finding.confidence) * 100, 2),
                unit=codes.UCUM.Percent, algorithm_id=algorithm,
            ))
        groups.append(PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[study_uid, f"report:{report.report_id}", f"finding:{finding.finding_id}"]),
                identifier=f"Finding {finding.finding_id}",
            ),
            referenced_region=region,
            finding_type=codes.SCT.Lesion,
            algorithm_id=algorithm if finding.source == "ai" else None,
            measurements=measurements,
            qualitative_evaluations=[
                QualitativeEvaluation(name=REVIEW_STATUS_CONCEPT, value=REVIEW_STATUS_CODES[finding.review_status]),
                QualitativeEvaluation(name=FINDING_SOURCE_CONCEPT, value=FINDING_SOURCE_CODES[finding.source]),
            ],
        ))
    if not groups:
        groups.append(_no_finding_group(report, study_uid, algorithm, any_image))
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[report.model_name, report.model_version]),
            name=f"{report.model_name} {report.model_version}", manufacturer_name=MANUFACTURER,
        ),
    )
    person = None
    if report.is_signed:
        person = ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=report.signed_by or "", organization_name=report.organization),
        )
    content = MeasurementReport(
        observation_context=ObservationContext(observer_person_context=person, observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    # Evidence: every slice the report points at (or one slice of the study when there is none).
    referenced = [source_images[uid] for uid in dict.fromkeys(f.sop_instance_uid for f in report.findings)]
    sr = Comprehensive3DSR(
        evidence=referenced or [any_image],
        content=content,
        series_instance_uid=sr_series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=[study_uid, f"report:{report.report_id}", "sr", digest]),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=report.is_signed,
        is_final=report.is_signed,
        is_verified=report.is_signed,
        verifying_observer_name=report.signed_by if report.is_signed else None,
        verifying_organization=report.organization if report.is_signed else None,
        series_description=SR_SERIES_DESCRIPTION,
    )
    # An amended report's addenda, as TEXT items of the root container: the original content stays
    # as it was signed, and the new SR version (new UID: the digest covers the addenda) carries both.
    for text in report.addenda:
        sr.ContentSequence.append(hd.sr.TextContentItem(
            name=ADDENDUM_CONCEPT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return sr


def read_addenda(dataset: Dataset) -> list[str]:
    """The addenda texts of an SR built here, oldest first."""
    return [
        str(item.TextValue) for item in dataset.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == ADDENDUM_CONCEPT.value
    ]


def _no_finding_group(
    report: OutputReport, study_uid: str, algorithm: AlgorithmIdentification, image: Dataset
) -> MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group for lesions stating "Presence: Absent", for a report with no finding.

    TID 1500 needs at least one Imaging Measurements group (and highdicom refuses none), and an SR
    that says nothing reads like one that was never finished; this one says the study was looked at
    and no lesion was found, with the slice it was attached to as its source.
    """
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[study_uid, f"report:{report.report_id}", "no-finding"]),
            identifier="No finding",
        ),
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        qualitative_evaluations=[QualitativeEvaluation(name=PRESENCE_CONCEPT, value=codes.SCT.Absent)],
        source_images=[SourceImageForMeasurementGroup.from_source_image(image)],
    )


def build_key_image_captures(report: OutputReport, source_images: Mapping[str, Dataset]) -> list[Dataset]:
    """One RGB secondary capture per key slice with its (not rejected) findings' boxes burned in."""
    shown = [f for f in report.findings if f.review_status != "rejected"]
    by_slice: dict[str, list[OutputFinding]] = {}
    for finding in shown:
        by_slice.setdefault(finding.sop_instance_uid, []).append(finding)
    if not by_slice:
        return []
    any_image = next(iter(source_images.values()))
    study_uid = str(any_image.StudyInstanceUID)
    digest = report.content_digest()
    _, sc_series_uid = output_series_uids(study_uid, report.report_id)
    captures = []
    for number, (sop_uid, findings) in enumerate(by_slice.items(), start=1):
        image = source_images[sop_uid]
        pixels = render_key_image(image, findings)
        capture = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=image,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=sc_series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=generate_uid(entropy_srcs=[study_uid, f"report:{report.report_id}", "sc", sop_uid, digest]),
            instance_number=number,
            manufacturer=MANUFACTURER,
            pixel_spacing=tuple(float(v) for v in image.PixelSpacing) if "PixelSpacing" in image else None,
            patient_orientation=("L", "P"),
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        )
        capture.BurnedInAnnotation = "YES"
        capture.SeriesDescription = SC_SERIES_DESCRIPTION
        capture.DerivationDescription = (
            f"Key slice of report {report.report_id} ({report.status}); boxes: "
            + "; ".join(f"finding {f.finding_id} {f.diameter_mm:.0f} mm {f.review_status}" for f in findings)
        )[:1024]
        capture.SourceImageSequence = [_reference(image)]
        captures.append(capture)
    return captures


def render_key_image(image: Dataset, findings: Sequence[OutputFinding]) -> np.ndarray:
    """The slice in HU, windowed (soft tissue when the boxes sit in soft tissue, else lung), as RGB
    uint8 with each box drawn one pixel outside the finding so the lesion itself stays visible."""
    hu = image.pixel_array.astype(np.float32) * float(getattr(image, "RescaleSlope", 1.0)) + float(
        getattr(image, "RescaleIntercept", 0.0))
    inside = [hu[y0:y1, x0:x1] for x0, y0, x1, y1 in (f.box for f in findings)]
    median = float(np.median(np.concatenate([a.ravel() for a in inside]))) if inside else -600.0
    centre, width = WINDOWS["soft_tissue" if median > -300 else "lung"]
    grey = (np.clip((hu - (centre - width / 2)) / width, 0.0, 1.0) * 255).astype(np.uint8)
    picture = Image.fromarray(grey).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for finding in findings:
        x0, y0, x1, y1 = finding.box
        colour = RADIOLOGIST_COLOUR if finding.source == "radiologist" else BOX_COLOURS[finding.review_status]
        draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=colour, width=1)
        if picture.width >= 128:
            draw.text((x0, max(0, y0 - 12)), f"{finding.diameter_mm:.0f} mm", fill=colour)
    return np.asarray(picture, dtype=np.uint8)


def _reference(image: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return item


@dataclass(frozen=True)
class ParsedRoi:
    """One ROI group read back from an SR (to validate what was written)."""

    tracking_identifier: str
    referenced_sop_instance_uid: str
    graphic_type: str
    graphic_data: list[tuple[float, float]]
    diameter_mm: float | None
    certainty_percent: float | None
    review_status: str | None
    source: str | None


def read_measurement_report(dataset: Dataset) -> list[ParsedRoi]:
    """Parse the TID 1500 content tree of an SR (as stored) back into ROI groups via highdicom."""
    sr = dataset if isinstance(dataset, Comprehensive3DSR) else Comprehensive3DSR.from_dataset(dataset)
    report = sr.content
    if not isinstance(report, MeasurementReport):
        raise DicomOutputError(f"SR {dataset.SOPInstanceUID} does not hold a TID 1500 measurement report")
    parsed = []
    for group in report.get_planar_roi_measurement_groups():
        region = group.roi
        if region is None:
            raise DicomOutputError(f"ROI group {group.tracking_identifier} has no image region")
        diameter = next((m.value for m in group.get_measurements(name=codes.SCT.Diameter)), None)
        certainty = next((m.value for m in group.get_measurements(name=codes.DCM.CertaintyOfFinding)), None)
        review = group.get_qualitative_evaluations(name=REVIEW_STATUS_CONCEPT)
        source = group.get_qualitative_evaluations(name=FINDING_SOURCE_CONCEPT)
        parsed.append(ParsedRoi(
            tracking_identifier=str(group.tracking_identifier),
            referenced_sop_instance_uid=str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            graphic_type=str(region.graphic_type.value),
            graphic_data=[(float(x), float(y)) for x, y in region.value],
            diameter_mm=float(diameter) if diameter is not None else None,
            certainty_percent=float(certainty) if certainty is not None else None,
            review_status=str(review[0].value.value) if review else None,
            source=str(source[0].value.value) if source else None,
        ))
    return parsed
