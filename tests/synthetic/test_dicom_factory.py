"""Tests for writing phantoms as CT DICOM series."""

from datetime import UTC, date, datetime
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from synthetic.dicom_factory import DicomFactoryError, ct_series_datasets, write_ct_series
from synthetic.phantoms import make_ct_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_ct_phantom(2, n_slices=5, size=64)


def test_datasets_round_trip_through_pydicom(phantom) -> None:
    datasets = ct_series_datasets(phantom, patient_id="P-1", patient_name="Doe^Jane",
                                  accession_number="ACC1", patient_sex="F",
                                  patient_birth_date=date(1970, 1, 2),
                                  study_datetime=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert len(datasets) == 5
    for index, ds in enumerate(datasets):
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        buffer.seek(0)
        back = pydicom.dcmread(buffer)
        assert np.array_equal(back.pixel_array, ds.pixel_array)
        assert back.pixel_array.dtype == np.uint16  # stored unsigned: readers must rescale
        hu = back.pixel_array.astype(np.int32) * int(back.RescaleSlope) + int(back.RescaleIntercept)
        assert np.array_equal(hu, phantom.volume_hu[index])
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert back.SOPClassUID == CTImageStorage
        assert back.InstanceNumber == index + 1
        assert float(back.ImagePositionPatient[2]) == pytest.approx(index * 5.0)
        assert [float(v) for v in back.PixelSpacing] == [1.5, 1.5]
        assert back.PatientSex == "F" and back.PatientBirthDate == "19700102"
        assert back.StudyDate == "20260102" and back.BodyPartExamined == "CHEST"
        assert back.Manufacturer == "Synthetic Phantom Factory"
    assert len({ds.SOPInstanceUID for ds in datasets}) == 5
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def test_write_series_uses_given_study_uid(phantom, tmp_path: Path) -> None:
    paths = write_ct_series(phantom, tmp_path / "series", patient_id="P-2", patient_name="Roe^Rick",
                            accession_number="ACC2", study_instance_uid="1.2.3.4", series_number=3)
    assert len(paths) == 5 and all(p.is_file() for p in paths)
    ds = pydicom.dcmread(paths[0])
    assert ds.StudyInstanceUID == "1.2.3.4" and ds.SeriesNumber == 3 and ds.AccessionNumber == "ACC2"


def test_bare_array_and_clipping() -> None:
    volume = np.full((2, 16, 16), 5000, dtype=np.int16)
    volume[1] = -3000
    datasets = ct_series_datasets(volume, patient_id="P", patient_name="X^Y", accession_number="A",
                                  pixel_spacing_mm=0.5)
    assert datasets[0].pixel_array.max() == 4095 and datasets[1].pixel_array.min() == 0
    assert [float(v) for v in datasets[0].PixelSpacing] == [0.5, 0.5]


def test_bad_input_rejected() -> None:
    with pytest.raises(DicomFactoryError):
        ct_series_datasets(np.zeros((16, 16)), patient_id="P", patient_name="X", accession_number="A")
    with pytest.raises(DicomFactoryError):
        ct_series_datasets(np.zeros((1, 16, 16)), patient_id="P", patient_name="X",
                           accession_number="A", patient_sex="Q")
