"""De-identification of one DICOM instance for the research database (pure: paths in, a
dataclass out; no Flask, no session).

dicognito (a maintained anonymiser, pinned in pyproject.toml) replaces names, IDs, addresses,
institution and equipment identifiers and every UID, and shifts dates and times; on top of it we
apply what the DICOM PS3.15 Basic Application Level Confidentiality Profile also asks for that
dicognito leaves: free-text descriptions and comments, patient characteristics, private tags,
overlays and curves are removed, and the method is declared (DeidentificationMethodCodeSequence
113100 Basic profile, 113107 dates modified). The seed is per patient and secret, so one patient's
studies keep consistent research UIDs and one date shift, and no shift is shared by two patients.

Burned-in text cannot be removed from pixels here, so such images are kept out: BurnedInAnnotation
YES, or not stated for the SOP classes where text in the pixels is common (secondary capture,
ultrasound, photographs), and anything without pixel data (SR, presentation states).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

logger = logging.getLogger(__name__)

# SOP classes whose pixels often carry text: without BurnedInAnnotation NO they are kept out.
BURNED_IN_LIKELY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound (retired)",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame (retired)",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic",
}

# Basic profile actions X (remove) / Z (empty) that dicognito does not take itself.
REMOVED_KEYWORDS = (
    "StudyDescription", "SeriesDescription", "ImageComments", "PatientComments", "AdditionalPatientHistory",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize", "PatientWeight",
    "MedicalAlerts", "Allergies", "EthnicGroup", "SmokingStatus", "PregnancyStatus", "PatientState",
    "RequestAttributesSequence", "ReferencedStudySequence", "ReferencedPatientSequence",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription", "ScheduledProcedureStepDescription",
    "ProtocolName", "DeviceSerialNumber", "InstitutionalDepartmentName", "ReasonForTheRequestedProcedure",
    "ReasonForStudy", "RequestedContrastAgent", "StudyComments", "InterpretationText", "TextString",
    "AcquisitionComments", "DerivationDescription", "ContentSequence", "PatientBirthName", "PatientMotherBirthName",
    "CountryOfResidence", "RegionOfResidence", "PatientAddress", "OtherPatientNames", "OtherPatientIDsSequence",
    "IssuerOfPatientID", "PatientBirthTime",
)
# Type 2 in most IODs: present but empty (dicognito's pseudonymous PatientName/PatientID/StudyID stay).
EMPTIED_KEYWORDS = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber")


class NotDeidentifiable(Exception):
    """The file is not a DICOM instance we can read."""


@dataclass(frozen=True)
class DeidentifiedInstance:
    original_study_uid: str
    original_series_uid: str
    original_sop_uid: str
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int | None
    # Why it is kept out of the research database; None when `data` is the de-identified file.
    excluded_reason: str | None
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.data else ""


def patient_seed(secret: str, patient_id: int) -> str:
    """A per-patient secret seed: consistent research UIDs and date shift for one patient."""
    return hmac.new(secret.encode(), f"research-patient:{patient_id}".encode(), hashlib.sha256).hexdigest()


def burned_in_reason(ds: Dataset) -> str | None:
    """Why this image may carry text in its pixels (None: it does not, as far as it says)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "not an image (no pixel data)"
    stated = str(ds.get("BurnedInAnnotation", "")).upper()
    if stated == "YES":
        return "burned-in annotation: YES"
    sop_class = str(ds.get("SOPClassUID", ""))
    if stated != "NO" and sop_class in BURNED_IN_LIKELY_SOP_CLASSES:
        return f"burned-in annotation not stated for {BURNED_IN_LIKELY_SOP_CLASSES[sop_class]}"
    return None


def _strip_basic_profile(ds: Dataset) -> None:
    ds.remove_private_tags()
    for keyword in REMOVED_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in EMPTIED_KEYWORDS:
        if keyword in ds:
            setattr(ds, keyword, "")
    # Overlays (60xx) and curves (50xx) can hold text drawn over the image.
    for tag in [t for t in ds.keys() if 0x5000 <= t.group <= 0x50FF or 0x6000 <= t.group <= 0x60FF]:
        del ds[tag]
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _strip_basic_profile(item)


def _declare_method(ds: Dataset) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    ds.DeidentificationMethod = ["PS3.15 Basic Application Confidentiality Profile", "dicognito 0.19.0"]
    codes = []
    for value, meaning in (("113100", "Basic Application Confidentiality Profile"),
                           ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    ds.DeidentificationMethodCodeSequence = Sequence(codes)


def deidentify_file(path: Path | BinaryIO, seed: str) -> DeidentifiedInstance:
    """De-identify one stored instance (a path, or an uploaded file object with a `name`). The
    research UIDs are always computed (so a kept-out instance is still accounted for); the bytes are
    empty when it is kept out."""
    name = Path(str(getattr(path, "name", "upload"))).name
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a bad file
        raise NotDeidentifiable(f"{name}: not a readable DICOM file ({exc})") from exc
    original = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    excluded = burned_in_reason(ds)
    Anonymizer(seed=seed).anonymize(ds)
    _strip_basic_profile(ds)
    _declare_method(ds)
    number = ds.get("InstanceNumber")
    data = b""
    if excluded is None:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    return DeidentifiedInstance(
        original_study_uid=original[0], original_series_uid=original[1], original_sop_uid=original[2],
        study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID), sop_uid=str(ds.SOPInstanceUID),
        instance_number=int(number) if number not in (None, "") else None, excluded_reason=excluded, data=data,
    )
