"""DICOM objects that carry a report's findings back into the study, so any viewer or PACS shows them.

Three kinds of output, all built from the study's own source slices (datasets in, datasets out: no
Flask, no database):

- a Comprehensive 3D SR holding a TID 1500 Measurement Report (``highdicom.sr.MeasurementReport``)
  with every model's findings, each group naming the model that said it (TID 4019 Algorithm
  Identification: the built-in model by its name and version; a partner's model package by its
  name, version and partner as the algorithm's manufacturer; a radiologist's finding names none):
  - a sized area or a segmented region: one TID 1410 "Planar ROI Measurements and Qualitative
    Evaluations" group, with the bounding box as a closed SCOORD POLYLINE on the key slice's SOP
    instance, the long-axis diameter in mm (and a segmented region's volume in mm3), the model's
    confidence as "Certainty of Finding" (%), and the radiologist's review status and the finding's
    source as qualitative evaluations;
  - a partner classifier's class for the study: one TID 1501 group without an image region (the
    class is the study's, not a place on it) with the class as the qualitative evaluation
    "Classification" (a code of our private scheme whose meaning is the label), its probability as
    "Certainty of Finding" (%), the review status and source, and the key slice as its source image;
  - each model that read the study and found nothing: a TID 1501 group for lesions saying
    "Presence: Absent", attributed to that model (so a report with no finding still has the group
    TID 1500 needs, and a partner model's silence reads as its own);
- one Secondary Capture (``highdicom.sc.SCImage``) per key slice: the slice windowed to 8-bit RGB
  with the finding boxes burned in (BurnedInAnnotation YES), for viewers that do not render SR (a
  classification's box is only the field its model saw: not drawn);
- a DICOM Segmentation (``highdicom.seg.Segmentation``, BINARY) when a partner segmentation model's
  region is in the report (not rejected): one segment per such finding, on the slices they cover,
  each with its package's algorithm identification and the SR group's tracking UID; a region the
  radiologist edited is clipped to the corrected box and marked SEMIAUTOMATIC.

UIDs are derived from the study, the report and a digest of the report's reviewable content, so
building the outputs twice for the same report state gives byte-identical UIDs (a re-store is a
duplicate) while a changed report (reviewed, signed) gets new instances in the same three series.

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
    ValueTypeValues,
)
from highdicom.sr.utils import find_content_items
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ai_services.masks import decode_mask
from ai_services.overlay import WINDOWS

logger = logging.getLogger(__name__)

MANUFACTURER = "Closed Loop Hospital"
SR_SERIES_NUMBER = 9001
SC_SERIES_NUMBER = 9002
SEG_SERIES_NUMBER = 9003
SR_SERIES_DESCRIPTION = "AI findings (TID 1500 measurement report)"
SC_SERIES_DESCRIPTION = "AI findings (key images)"
SEG_SERIES_DESCRIPTION = "AI findings (segmentations)"
# The Segmentation's equipment: this platform made the object (each segment names its model).
OUTPUTS_MODEL_NAME = "AI findings outputs"
OUTPUTS_SOFTWARE_VERSION = "1"
# Our own coding scheme for concepts with no standard code ("99" marks a private scheme, PS3.16 8.2).
PRIVATE_SCHEME = "99CLHOSP"
REVIEW_STATUS_CONCEPT = CodedConcept("REVIEW", PRIVATE_SCHEME, "Radiologist review status")
FINDING_SOURCE_CONCEPT = CodedConcept("SOURCE", PRIVATE_SCHEME, "Finding source")
# Not in pydicom's code dictionary: SNOMED CT "Presence", valued Present/Absent.
PRESENCE_CONCEPT = CodedConcept("705057003", "SCT", "Presence")
ADDENDUM_CONCEPT = CodedConcept("ADDENDUM", PRIVATE_SCHEME, "Addendum")
# TID 4019's items, to read a group's algorithm back.
ALGORITHM_NAME_CONCEPT = CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION_CONCEPT = CodedConcept("111003", "DCM", "Algorithm Version")
ALGORITHM_MANUFACTURER_CONCEPT = CodedConcept("122405", "DCM", "Algorithm Manufacturer")
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
class OutputModel:
    """A partner's model package that read the study (its completed run), as its findings name it."""

    analysis_id: int
    name: str
    version: str
    partner: str  # the partner organisation: the algorithm's manufacturer


@dataclass(frozen=True)
class OutputMask:
    """A segmented region on a finding's key slice, as run lengths (ai_services.masks)."""

    rows: int
    columns: int
    runs: tuple[int, ...]


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
    # The partner model that made it; None: the built-in model (source ai) or the radiologist.
    package: OutputModel | None = None
    kind: str = "area"  # area / segmentation / classification (ai_services.models.Finding.kind)
    label: str | None = None  # a classification's class
    volume_mm3: float | None = None  # a segmented region's volume
    mask: OutputMask | None = None  # a segmented region's pixels


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
    # The partner models that read the study (completed runs), in the order they ran.
    packages: tuple[OutputModel, ...] = ()
    # False when the built-in model found the study outside its intended use and did not read it.
    builtin_read: bool = True

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
    segmentation: Dataset | None = None

    @property
    def datasets(self) -> list[Dataset]:
        return [self.structured_report, *self.secondary_captures,
                *([self.segmentation] if self.segmentation is not None else [])]


def output_series_uids(study_instance_uid: str, report_id: int) -> tuple[str, str]:
    """(SR series UID, SC series UID): stable for a report across its versions."""
    return (
        generate_uid(entropy_srcs=[study_instance_uid, f"report:{report_id}", "series:sr"]),
        generate_uid(entropy_srcs=[study_instance_uid, f"report:{report_id}", "series:sc"]),
    )


def segmentation_series_uid(study_instance_uid: str, report_id: int) -> str:
    """The Segmentation's series UID: stable for a report across its versions, like the other two."""
    return generate_uid(entropy_srcs=[study_instance_uid, f"report:{report_id}", "series:seg"])


def build_report_outputs(report: OutputReport, source_images: Mapping[str, Dataset]) -> ReportOutputs:
    """Build the SR, the key-image captures and the Segmentation (when a partner model segmented a
    region); ``source_images`` maps SOP Instance UID -> slice.

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
        segmentation=build_segmentation(report, source_images),
    )


def _tracking_uid(study_uid: str, report_id: int, finding_id: int) -> str:
    """A finding's tracking UID: its SR group's, and its Segmentation segment's, so a viewer links them."""
    return generate_uid(entropy_srcs=[study_uid, f"report:{report_id}", f"finding:{finding_id}"])


def _builtin_algorithm(report: OutputReport) -> AlgorithmIdentification:
    return AlgorithmIdentification(name=report.model_name, version=report.model_version)


def _package_algorithm(package: OutputModel) -> AlgorithmIdentification:
    return AlgorithmIdentification(name=package.name, version=package.version, manufacturer=package.partner)


def _algorithm_of(report: OutputReport, finding: OutputFinding) -> AlgorithmIdentification | None:
    """The model that made the finding; None for the radiologist's own."""
    if finding.source != "ai":
        return None
    return _package_algorithm(finding.package) if finding.package is not None else _builtin_algorithm(report)


def _device_observer(report: OutputReport) -> ObserverContext:
    """The SR's device observer: the built-in model when it read the study, else the first partner
    model that did (each group names its own model all the same)."""
    if report.builtin_read or not report.packages:
        name, version, manufacturer = report.model_name, report.model_version, MANUFACTURER
    else:
        first = report.packages[0]
        name, version, manufacturer = first.name, first.version, first.partner
    return ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[name, version]), name=f"{name} {version}"[:64],
            manufacturer_name=manufacturer[:64],
        ),
    )


def build_measurement_report(report: OutputReport, source_images: Mapping[str, Dataset]) -> Comprehensive3DSR:
    """A Comprehensive 3D SR with a TID 1500 Measurement Report: one group per finding, each naming
    its model, and a "Presence: Absent" group per model that found nothing."""
    any_image = next(iter(source_images.values()))
    study_uid = str(any_image.StudyInstanceUID)
    digest = report.content_digest()
    sr_series_uid, _ = output_series_uids(study_uid, report.report_id)
    groups: list[PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations] = []
    for finding in report.findings:
        image = source_images[finding.sop_instance_uid]
        if finding.kind == "classification":
            groups.append(_classification_group(report, finding, study_uid, image))
        else:
            groups.append(_roi_group(report, finding, study_uid, image))
    silent = _no_finding_groups(report, study_uid, any_image)
    groups.extend(silent)
    if not groups:
        raise DicomOutputError(f"report {report.report_id}: no model read the study and no finding was added")
    person = None
    if report.is_signed:
        person = ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=report.signed_by or "", organization_name=report.organization),
        )
    content = MeasurementReport(
        observation_context=ObservationContext(observer_person_context=person,
                                               observer_device_context=_device_observer(report)),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    # Evidence: every slice the report points at (and the slice the "nothing found" groups name).
    referenced = list(dict.fromkeys(
        [f.sop_instance_uid for f in report.findings] + ([str(any_image.SOPInstanceUID)] if silent else [])))
    sr = Comprehensive3DSR(
        evidence=[source_images[uid] for uid in referenced],
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


def _review_and_source(finding: OutputFinding) -> list[QualitativeEvaluation]:
    return [
        QualitativeEvaluation(name=REVIEW_STATUS_CONCEPT, value=REVIEW_STATUS_CODES[finding.review_status]),
        QualitativeEvaluation(name=FINDING_SOURCE_CONCEPT, value=FINDING_SOURCE_CODES[finding.source]),
    ]


def _certainty(finding: OutputFinding, algorithm: AlgorithmIdentification | None) -> list[Measurement]:
    if finding.confidence is None:
        return []
    return [Measurement(name=codes.DCM.CertaintyOfFinding, value=round(float(finding.confidence) * 100, 2),
                        unit=codes.UCUM.Percent, algorithm_id=algorithm)]


def _roi_group(report: OutputReport, finding: OutputFinding, study_uid: str,
               image: Dataset) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """A sized area or a segmented region: its box as a closed polyline on its key slice."""
    algorithm = _algorithm_of(report, finding)
    x0, y0, x1, y1 = finding.box
    outline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE, graphic_data=outline,
        source_image=SourceImageForRegion.from_source_image(image),
    )
    measurements = [Measurement(name=codes.SCT.Diameter, value=float(finding.diameter_mm), unit=codes.UCUM.Millimeter)]
    if finding.volume_mm3 is not None:
        measurements.append(Measurement(name=codes.SCT.Volume, value=float(finding.volume_mm3),
                                        unit=codes.UCUM.CubicMillimeter))
    measurements.extend(_certainty(finding, algorithm))
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=_tracking_uid(study_uid, report.report_id, finding.finding_id),
                                               identifier=f"Finding {finding.finding_id}"),
        referenced_region=region,
        finding_type=codes.SCT.Lesion,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=_review_and_source(finding),
    )


def class_code(package: OutputModel | None, label: str) -> CodedConcept:
    """A classifier's class as a code of our private scheme: the meaning is the label as the partner
    wrote it, the value a digest of the package's name and the label (a label is free text of up to
    64 characters, a code value at most 16 of a restricted set; the same label of two packages is
    two codes, since their vocabularies are their own)."""
    digest = hashlib.sha256(f"{package.name if package else ''}\n{label}".encode()).hexdigest()[:12].upper()
    return CodedConcept(f"C{digest}", PRIVATE_SCHEME, label.replace("\\", "/")[:64] or "?")


def _classification_group(report: OutputReport, finding: OutputFinding, study_uid: str,
                          image: Dataset) -> MeasurementsAndQualitativeEvaluations:
    """A partner classifier's class for the study: TID 1501, no image region (the class is the
    study's; the box it is shown with is only the field the model saw), the key slice as source."""
    algorithm = _algorithm_of(report, finding)
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=_tracking_uid(study_uid, report.report_id, finding.finding_id),
                                               identifier=f"Finding {finding.finding_id}"),
        algorithm_id=algorithm,
        measurements=_certainty(finding, algorithm),
        qualitative_evaluations=[
            QualitativeEvaluation(name=codes.SCT.Classification, value=class_code(finding.package, finding.label or "")),
            *_review_and_source(finding),
        ],
        source_images=[SourceImageForMeasurementGroup.from_source_image(image)],
    )


def _no_finding_groups(report: OutputReport, study_uid: str,
                       image: Dataset) -> list[MeasurementsAndQualitativeEvaluations]:
    """A TID 1501 group for lesions stating "Presence: Absent" for each model that read the study
    and found nothing (the built-in model when it read it, each partner model whose run completed).

    TID 1500 needs at least one Imaging Measurements group (and highdicom refuses none), and an SR
    that says nothing reads like one that was never finished; this one says the study was looked at
    by that model and no lesion was found, with the slice it was attached to as its source.
    """
    spoke = {f.package.analysis_id if f.package is not None else None for f in report.findings if f.source == "ai"}
    silent: list[tuple[str, str, AlgorithmIdentification]] = []
    if report.builtin_read and None not in spoke:
        silent.append(("no-finding", "No finding", _builtin_algorithm(report)))
    for package in report.packages:
        if package.analysis_id not in spoke:
            silent.append((f"no-finding:package-analysis:{package.analysis_id}",
                           f"No finding ({package.name} {package.version})"[:64], _package_algorithm(package)))
    return [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[study_uid, f"report:{report.report_id}", entropy]),
                identifier=identifier,
            ),
            finding_type=codes.SCT.Lesion,
            algorithm_id=algorithm,
            qualitative_evaluations=[QualitativeEvaluation(name=PRESENCE_CONCEPT, value=codes.SCT.Absent)],
            source_images=[SourceImageForMeasurementGroup.from_source_image(image)],
        )
        for entropy, identifier, algorithm in silent
    ]


def read_addenda(dataset: Dataset) -> list[str]:
    """The addenda texts of an SR built here, oldest first."""
    return [
        str(item.TextValue) for item in dataset.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == ADDENDUM_CONCEPT.value
    ]


def build_key_image_captures(report: OutputReport, source_images: Mapping[str, Dataset]) -> list[Dataset]:
    """One RGB secondary capture per key slice with its (not rejected) findings' boxes burned in (a
    classification's box is only the field its model saw, not a place: not drawn)."""
    shown = [f for f in report.findings if f.review_status != "rejected" and f.kind != "classification"]
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



def segmented_regions(report: OutputReport) -> list[tuple[OutputFinding, np.ndarray]]:
    """The report's segmented regions the Segmentation shows, each with its mask on its key slice:
    not rejected ones, an edited one clipped to the radiologist's box (left out when nothing of it
    is left)."""
    regions = []
    for finding in report.findings:
        if finding.mask is None or finding.review_status == "rejected":
            continue
        mask = decode_mask(finding.mask.runs, finding.mask.rows, finding.mask.columns)
        if finding.review_status == "edited":
            x0, y0, x1, y1 = finding.box
            inside = np.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            mask = mask & inside
        if mask.any():
            regions.append((finding, mask))
    return regions


def build_segmentation(report: OutputReport, source_images: Mapping[str, Dataset]) -> Dataset | None:
    """A BINARY DICOM Segmentation with one segment per segmented region (None when there is none),
    in its own series, referencing the source slices the regions lie on."""
    regions = segmented_regions(report)
    if not regions:
        return None
    any_image = next(iter(source_images.values()))
    study_uid = str(any_image.StudyInstanceUID)
    slices = list(dict.fromkeys(finding.sop_instance_uid for finding, _ in regions))
    images = [source_images[uid] for uid in slices]
    rows, columns = int(images[0].Rows), int(images[0].Columns)
    pixels = np.zeros((len(slices), rows, columns, len(regions)), dtype=bool)
    descriptions = []
    for number, (finding, mask) in enumerate(regions, start=1):
        if mask.shape != (rows, columns):
            raise DicomOutputError(f"finding {finding.finding_id}: a mask of {mask.shape[0]} x {mask.shape[1]} "
                                   f"pixels on slices of {rows} x {columns}")
        pixels[slices.index(finding.sop_instance_uid), :, :, number - 1] = mask
        package = finding.package
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Finding {finding.finding_id}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if finding.review_status == "edited"
                            else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC),
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=package.name if package else report.model_name,
                family=codes.DCM.ArtificialIntelligence,
                version=package.version if package else report.model_version,
                source=package.partner if package else MANUFACTURER,
            ),
            tracking_uid=_tracking_uid(study_uid, report.report_id, finding.finding_id),
            tracking_id=f"Finding {finding.finding_id}",
        ))
    segmentation = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=segmentation_series_uid(study_uid, report.report_id),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=[study_uid, f"report:{report.report_id}", "seg",
                                                    report.content_digest()]),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=OUTPUTS_MODEL_NAME,
        software_versions=OUTPUTS_SOFTWARE_VERSION,
        device_serial_number=OUTPUTS_SOFTWARE_VERSION,
        series_description=SEG_SERIES_DESCRIPTION,
    )
    # highdicom draws the Dimension Organization UID at random; derived like the others, the same
    # report state gives the same object, UID for UID.
    _replace_uid(segmentation, "DimensionOrganizationUID", generate_uid(
        entropy_srcs=[study_uid, f"report:{report.report_id}", "seg-dimensions", report.content_digest()]))
    return segmentation


def _replace_uid(dataset: Dataset, keyword: str, uid: str) -> None:
    """Set every `keyword` element of `dataset`, in nested sequences too, to `uid`."""
    def replace(item: Dataset, element: pydicom.DataElement) -> None:
        if element.keyword == keyword:
            element.value = uid

    dataset.walk(replace)


@dataclass(frozen=True)
class ParsedAlgorithm:
    """The TID 4019 algorithm a group names: the model that said it."""

    name: str
    version: str | None
    manufacturer: str | None


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
    algorithm: ParsedAlgorithm | None = None  # None: the radiologist's own finding
    volume_mm3: float | None = None


@dataclass(frozen=True)
class ParsedEvaluation:
    """One TID 1501 group (no image region) read back from an SR: a classification, or a model's
    "nothing found"."""

    tracking_identifier: str
    source_sop_instance_uid: str | None
    algorithm: ParsedAlgorithm | None
    label: str | None  # a classification's class (the code's meaning)
    certainty_percent: float | None
    presence: str | None  # "Absent" for a model that found nothing
    review_status: str | None
    source: str | None


def _measurement_report(dataset: Dataset) -> MeasurementReport:
    sr = dataset if isinstance(dataset, Comprehensive3DSR) else Comprehensive3DSR.from_dataset(dataset)
    report = sr.content
    if not isinstance(report, MeasurementReport):
        raise DicomOutputError(f"SR {dataset.SOPInstanceUID} does not hold a TID 1500 measurement report")
    return report


def read_algorithm(group: Sequence[Dataset]) -> ParsedAlgorithm | None:
    """The algorithm identification of a measurement group (its own, not its measurements')."""
    def text(concept: CodedConcept) -> str | None:
        items = find_content_items(group[0], name=concept, value_type=ValueTypeValues.TEXT)
        return str(items[0].TextValue) if items else None

    name = text(ALGORITHM_NAME_CONCEPT)
    if name is None:
        return None
    return ParsedAlgorithm(name=name, version=text(ALGORITHM_VERSION_CONCEPT),
                           manufacturer=text(ALGORITHM_MANUFACTURER_CONCEPT))


def _first_code(group: MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations,
                concept: CodedConcept) -> CodedConcept | None:
    """The code of the group's first qualitative evaluation named `concept`."""
    evaluations = group.get_qualitative_evaluations(name=concept)
    if not evaluations:
        return None
    code: CodedConcept = evaluations[0].value  # type: ignore[assignment]  # a CODE item's value
    return code


def _first_value(group: MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations,
                 concept: CodedConcept) -> str | None:
    code = _first_code(group, concept)
    return str(code.value) if code is not None else None


def _number(group: MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations,
            concept: CodedConcept) -> float | None:
    value = next((m.value for m in group.get_measurements(name=concept)), None)
    return float(value) if value is not None else None


def read_measurement_report(dataset: Dataset) -> list[ParsedRoi]:
    """Parse the TID 1500 content tree of an SR (as stored) back into ROI groups via highdicom."""
    parsed = []
    for group in _measurement_report(dataset).get_planar_roi_measurement_groups():
        region = group.roi
        if region is None:
            raise DicomOutputError(f"ROI group {group.tracking_identifier} has no image region")
        parsed.append(ParsedRoi(
            tracking_identifier=str(group.tracking_identifier),
            referenced_sop_instance_uid=str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            graphic_type=str(region.graphic_type.value),
            graphic_data=[(float(x), float(y)) for x, y in region.value],
            diameter_mm=_number(group, codes.SCT.Diameter),
            certainty_percent=_number(group, codes.DCM.CertaintyOfFinding),
            review_status=_first_value(group, REVIEW_STATUS_CONCEPT),
            source=_first_value(group, FINDING_SOURCE_CONCEPT),
            algorithm=read_algorithm(group),
            volume_mm3=_number(group, codes.SCT.Volume),
        ))
    return parsed


def read_image_evaluations(dataset: Dataset) -> list[ParsedEvaluation]:
    """Parse the SR's TID 1501 groups (classifications, "nothing found") back via highdicom."""
    parsed = []
    for group in _measurement_report(dataset).get_image_measurement_groups():
        label = _first_code(group, codes.SCT.Classification)
        presence = _first_code(group, PRESENCE_CONCEPT)
        sources = group.source_images
        parsed.append(ParsedEvaluation(
            tracking_identifier=str(group.tracking_identifier),
            source_sop_instance_uid=str(sources[0].referenced_sop_instance_uid) if sources else None,
            algorithm=read_algorithm(group),
            label=str(label.meaning) if label is not None else None,
            certainty_percent=_number(group, codes.DCM.CertaintyOfFinding),
            presence=str(presence.meaning) if presence is not None else None,
            review_status=_first_value(group, REVIEW_STATUS_CONCEPT),
            source=_first_value(group, FINDING_SOURCE_CONCEPT),
        ))
    return parsed
