"""research.deidentify on pydicom's bundled files: what PS3.15's Basic profile removes is gone,
UIDs are replaced consistently for one patient, and images that may carry text are kept out."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from research.deidentify import NotDeidentifiable, burned_in_reason, deidentify_file, patient_seed


def _bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    return Path(path)


def test_a_ct_image_loses_what_identifies_the_patient() -> None:
    source_path = _bundled("CT_small.dcm")
    source = pydicom.dcmread(source_path)
    result = deidentify_file(source_path, patient_seed("secret", 1))
    assert result.excluded_reason is None
    data = result.data
    for value in (str(source.PatientName), source.PatientID, source.InstitutionName, source.StudyDate,
                  source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, source.FrameOfReferenceUID):
        assert value.encode() not in data, value
    out = pydicom.dcmread(io.BytesIO(data))
    assert not any(element.tag.is_private for element in out)
    assert out.PatientIdentityRemoved == "YES" and out.PatientBirthDate == "" and "StudyDescription" not in out
    assert (result.study_uid, result.sop_uid) != (source.StudyInstanceUID, source.SOPInstanceUID)


def test_one_patient_keeps_one_set_of_research_uids_and_two_patients_do_not_share_them() -> None:
    path = _bundled("CT_small.dcm")
    first, again = deidentify_file(path, patient_seed("secret", 1)), deidentify_file(path, patient_seed("secret", 1))
    other = deidentify_file(path, patient_seed("secret", 2))
    assert (first.study_uid, first.sop_uid) == (again.study_uid, again.sop_uid)
    assert first.study_uid != other.study_uid


def test_images_that_may_carry_text_are_kept_out() -> None:
    ultrasound = pydicom.dcmread(_bundled("CT_small.dcm"))
    ultrasound.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage, annotation not stated
    assert burned_in_reason(ultrasound) == "burned-in annotation not stated for Ultrasound"
    ultrasound.BurnedInAnnotation = "NO"
    assert burned_in_reason(ultrasound) is None
    ct = pydicom.dcmread(_bundled("CT_small.dcm"))
    ct.BurnedInAnnotation = "YES"
    assert burned_in_reason(ct) == "burned-in annotation: YES"
    del ct.PixelData
    assert burned_in_reason(ct) == "not an image (no pixel data)"


def test_a_file_that_is_not_dicom_is_refused_with_its_name(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(NotDeidentifiable, match="junk.dcm"):
        deidentify_file(junk, "seed")
