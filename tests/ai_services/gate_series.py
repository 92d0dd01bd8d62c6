"""Series the applicability gate must refuse (and one it must accept), built in memory: CT series
from the DICOM factory with altered headers, and minimal NM and RT Dose objects made with pydicom
under their own SOP classes."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
    NuclearMedicineImageStorage,
    RTDoseStorage,
    generate_uid,
)

from synthetic.dicom_factory import ct_series_datasets
from synthetic.phantoms import make_ct_phantom

PATIENT = {"patient_id": "GATE-1", "patient_name": "Gate^Test", "accession_number": "GATE1"}


def normal_ct(seed: int = 20_000, study_uid: str | None = None) -> list[pydicom.Dataset]:
    """The training grid: 24 axial slices, 256 x 256 at 1.5 mm, 5 mm thick."""
    return ct_series_datasets(make_ct_phantom(seed), study_instance_uid=study_uid, **PATIENT)


def localizer(study_uid: str | None = None) -> list[pydicom.Dataset]:
    datasets = normal_ct(20_001, study_uid)[:2]
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return datasets


def chest_crop_128(study_uid: str | None = None) -> list[pydicom.Dataset]:
    """The middle 128 x 128 px of a chest (192 mm across): the lungs' edges are cut off."""
    volume = make_ct_phantom(20_002).volume_hu[:, 64:192, 64:192]
    return ct_series_datasets(volume, pixel_spacing_mm=1.5, slice_thickness_mm=5.0, study_instance_uid=study_uid,
                              **PATIENT)


def sagittal(study_uid: str | None = None) -> list[pydicom.Dataset]:
    datasets = normal_ct(20_003, study_uid)
    for index, ds in enumerate(datasets):
        ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
        ds.ImagePositionPatient = [str(index * 5.0), "-191.25", "191.25"]
    return datasets


def mr(study_uid: str | None = None) -> list[pydicom.Dataset]:
    """An MR series: MR SOP class and modality, signal intensities (no air at -1000)."""
    datasets = normal_ct(20_004, study_uid)
    for ds in datasets:
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        del ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType
    return datasets


def _base(sop_class_uid: str, modality: str, study_uid: str | None, series_uid: str) -> pydicom.Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class_uid, sop_uid, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), series_uid
    ds.PatientID, ds.PatientName, ds.AccessionNumber = PATIENT["patient_id"], PATIENT["patient_name"], PATIENT["accession_number"]
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20250314", "093000", 2, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelRepresentation = 0
    return ds


def nm(study_uid: str | None = None) -> list[pydicom.Dataset]:
    """A minimal NM Image Storage object: 16 frames of 64 x 64 counts."""
    ds = _base(NuclearMedicineImageStorage, "NM", study_uid, generate_uid())
    counts = np.random.default_rng(0).poisson(40.0, (16, 64, 64)).astype(np.uint16)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.NumberOfFrames, ds.Rows, ds.Columns = 16, 64, 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelSpacing = ["4.42", "4.42"]
    ds.PixelData = counts.tobytes()
    return [ds]


def rtdose(study_uid: str | None = None) -> list[pydicom.Dataset]:
    """A minimal RT Dose Storage object: a 10-plane dose grid in Gy (DoseGridScaling)."""
    ds = _base(RTDoseStorage, "RTDOSE", study_uid, generate_uid())
    dose = (np.random.default_rng(1).random((10, 32, 32)) * 60000).astype(np.uint32)
    ds.NumberOfFrames, ds.Rows, ds.Columns = 10, 32, 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelSpacing = ["2.5", "2.5"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.ImagePositionPatient = ["-40", "-40", "0"]
    ds.GridFrameOffsetVector = [str(3.0 * i) for i in range(10)]
    ds.FrameIncrementPointer = (0x3004, 0x000C)
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType, ds.DoseGridScaling = "GY", "PHYSICAL", "PLAN", "0.001"
    ds.PixelData = dose.tobytes()
    return [ds]


def mislabelled_as_ct(volume: np.ndarray, study_uid: str | None = None) -> list[pydicom.Dataset]:
    """Non-CT values (NM counts, a dose map) sent with CT headers on the training grid."""
    return ct_series_datasets(volume, pixel_spacing_mm=1.5, slice_thickness_mm=5.0, study_instance_uid=study_uid,
                              **PATIENT)


def nm_counts_volume() -> np.ndarray:
    """SPECT-like counts on the training grid: a warm body with hot spots, no negative values."""
    rng = np.random.default_rng(2)
    body = np.zeros((24, 256, 256), dtype=np.float32)
    yy, xx = np.mgrid[:256, :256]
    body[:, ((yy - 128) / 100.0) ** 2 + ((xx - 128) / 120.0) ** 2 <= 1] = 60.0
    return rng.poisson(body + 5.0).astype(np.float32)


def dose_volume() -> np.ndarray:
    """An RT dose distribution in cGy on the training grid: 0 outside, up to 7000 in the target."""
    zz, yy, xx = np.mgrid[:24, :256, :256]
    return (7000.0 * np.exp(-(((yy - 128) / 40.0) ** 2 + ((xx - 110) / 40.0) ** 2 + ((zz - 12) / 6.0) ** 2))).astype(np.float32)
