"""Writes synthetic CT volumes as real DICOM CT Image Storage series.

The platform's DICOM receiver, the AI reader and the tests all need genuine DICOM files; this module
turns a ``synthetic.phantoms.Phantom`` (or any HU volume) into one dataset per slice with a proper
file meta, unique UIDs and the geometry tags a reader needs to rebuild the volume.

Pixels are stored unsigned (``HU + 1024``) with ``RescaleIntercept = -1024`` on purpose: a reader
that forgets to apply the rescale produces visibly wrong HU, so tests catch it.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from synthetic.phantoms import Phantom

logger = logging.getLogger(__name__)

RESCALE_INTERCEPT = -1024
RESCALE_SLOPE = 1
MANUFACTURER = "Synthetic Phantom Factory"
# Stored values are 12-bit (0..4095) like most CT scanners, held in 16-bit words.
BITS_STORED = 12
_MAX_STORED = (1 << BITS_STORED) - 1


class DicomFactoryError(ValueError):
    """Raised when a volume cannot be encoded as a CT series."""


def ct_series_datasets(
    phantom: Phantom | np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    accession_number: str,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    series_number: int = 1,
    modality: str = "CT",
    pixel_spacing_mm: float | None = None,
    slice_thickness_mm: float | None = None,
    study_datetime: datetime | None = None,
    patient_birth_date: date | None = None,
    patient_sex: str | None = None,
    study_description: str = "CT CHEST",
    series_description: str = "Synthetic chest CT",
    referring_physician_name: str = "",
    institution_name: str = "Synthetic Internet Hospital",
) -> list[pydicom.Dataset]:
    """Build one CT Image Storage dataset per slice (slice 0 first), in memory.

    ``phantom`` may be a ``Phantom`` or a bare (S, H, W) HU array; for a bare array pass
    ``pixel_spacing_mm`` and ``slice_thickness_mm`` (they default to 1.0 and 5.0 mm). Values
    outside the storable range -1024..3071 HU are clipped.
    """
    if isinstance(phantom, Phantom):
        volume_hu = phantom.volume_hu
        spacing = pixel_spacing_mm if pixel_spacing_mm is not None else phantom.pixel_spacing_mm
        thickness = slice_thickness_mm if slice_thickness_mm is not None else phantom.slice_thickness_mm
    else:
        volume_hu = np.asarray(phantom)
        spacing = pixel_spacing_mm if pixel_spacing_mm is not None else 1.0
        thickness = slice_thickness_mm if slice_thickness_mm is not None else 5.0
    if volume_hu.ndim != 3 or min(volume_hu.shape) < 1:
        raise DicomFactoryError(f"expected a (slices, rows, columns) volume, got shape {volume_hu.shape}")
    if spacing <= 0 or thickness <= 0:
        raise DicomFactoryError(f"spacing must be positive: pixel={spacing}, slice={thickness}")
    if patient_sex is not None and patient_sex not in ("M", "F", "O"):
        raise DicomFactoryError(f"PatientSex must be M, F or O, got {patient_sex!r}")

    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    frame_of_reference_uid = generate_uid()
    when = study_datetime or datetime.now(UTC)
    n_slices, rows, columns = volume_hu.shape
    stored = np.clip(np.rint(volume_hu.astype(np.float32) - RESCALE_INTERCEPT), 0, _MAX_STORED)
    stored = stored.astype(np.uint16)
    # Centre the image on the table axis, like a scanner with the patient centred in the bore.
    origin_x = -(columns - 1) / 2.0 * spacing
    origin_y = -(rows - 1) / 2.0 * spacing

    datasets = []
    for index in range(n_slices):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = when.strftime("%Y%m%d")
        ds.StudyTime = when.strftime("%H%M%S")
        ds.SeriesDate = ds.StudyDate
        ds.SeriesTime = ds.StudyTime
        ds.AccessionNumber = accession_number
        ds.Modality = modality
        ds.Manufacturer = MANUFACTURER
        ds.InstitutionName = institution_name
        ds.ReferringPhysicianName = referring_physician_name
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = patient_birth_date.strftime("%Y%m%d") if patient_birth_date else ""
        ds.PatientSex = patient_sex or ""
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = _ds(thickness)
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = index + 1
        z = index * thickness
        ds.ImagePositionPatient = [_ds(origin_x), _ds(origin_y), _ds(z)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
        ds.BitsAllocated = 16
        ds.BitsStored = BITS_STORED
        ds.HighBit = BITS_STORED - 1
        ds.PixelRepresentation = 0
        ds.WindowCenter = ["-600", "40"]
        ds.WindowWidth = ["1500", "400"]
        ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
        ds.RescaleIntercept = str(RESCALE_INTERCEPT)
        ds.RescaleSlope = str(RESCALE_SLOPE)
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[index]).tobytes()
        datasets.append(ds)
    return datasets


def write_ct_series(
    phantom: Phantom | np.ndarray,
    out_dir: Path,
    *,
    patient_id: str,
    patient_name: str,
    accession_number: str,
    study_instance_uid: str | None = None,
    series_number: int = 1,
    modality: str = "CT",
    **kwargs: object,
) -> list[Path]:
    """Write the series to ``out_dir`` as ``CT<series:02><instance:05>.dcm`` and return the paths in slice order.

    Extra keyword arguments are those of ``ct_series_datasets``.
    """
    datasets = ct_series_datasets(
        phantom,
        patient_id=patient_id,
        patient_name=patient_name,
        accession_number=accession_number,
        study_instance_uid=study_instance_uid,
        series_number=series_number,
        modality=modality,
        **kwargs,  # type: ignore[arg-type]
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = out_dir / f"CT{int(ds.SeriesNumber):02d}{int(ds.InstanceNumber):05d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d CT slices to %s (series %s)", len(paths), out_dir, datasets[0].SeriesInstanceUID)
    return paths


def _ds(value: float) -> str:
    """Format a float as a DICOM DS string (max 16 characters)."""
    text = f"{value:.6g}"
    if len(text) > 16:
        raise DicomFactoryError(f"value {value!r} does not fit a DS element")
    return text

