"""Tests for reading CT series into HU volumes."""

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_services.series_reader import SeriesReadError, read_ct_volume
from synthetic.dicom_factory import write_ct_series
from synthetic.phantoms import make_ct_phantom


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    phantom = make_ct_phantom(4, n_slices=6, size=64)
    out = tmp_path_factory.mktemp("series")
    paths = write_ct_series(phantom, out, patient_id="P", patient_name="A^B", accession_number="1")
    return phantom, paths


def test_shuffled_order_is_sorted_and_rescaled(series) -> None:
    phantom, paths = series
    shuffled = list(paths)
    random.Random(0).shuffle(shuffled)
    assert shuffled != paths
    volume = read_ct_volume(shuffled)
    assert volume.hu.dtype == np.float32 and volume.hu.shape == (6, 64, 64)
    assert np.array_equal(volume.hu, phantom.volume_hu.astype(np.float32))  # rescale applied
    assert volume.pixel_spacing_mm == (1.5, 1.5)
    assert volume.slice_thickness_mm == pytest.approx(5.0)
    expected_uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    assert volume.sop_instance_uids == expected_uids
    assert volume.series_instance_uid == str(pydicom.dcmread(paths[0]).SeriesInstanceUID)


def test_instance_number_fallback(series, tmp_path: Path) -> None:
    phantom, paths = series
    out = []
    for p in reversed(paths):
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        out.append(tmp_path / p.name)
        ds.save_as(out[-1], enforce_file_format=True)
    volume = read_ct_volume(out)
    assert np.array_equal(volume.hu, phantom.volume_hu.astype(np.float32))


def test_bad_file_names_the_file(series, tmp_path: Path) -> None:
    _, paths = series
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not dicom")
    with pytest.raises(SeriesReadError, match="junk.dcm"):
        read_ct_volume([*paths, junk])


def test_mixed_sizes_rejected(series, tmp_path: Path) -> None:
    _, paths = series
    other = write_ct_series(make_ct_phantom(5, n_slices=1, size=32), tmp_path, patient_id="P",
                            patient_name="A^B", accession_number="1")
    ds = pydicom.dcmread(other[0])
    ds.SeriesInstanceUID = pydicom.dcmread(paths[0]).SeriesInstanceUID
    ds.save_as(other[0], enforce_file_format=True)
    with pytest.raises(SeriesReadError, match="slice size"):
        read_ct_volume([*paths, other[0]])


def test_empty_input_rejected() -> None:
    with pytest.raises(SeriesReadError):
        read_ct_volume([])


def _with_instance_numbers(paths: list[Path], out_dir: Path, numbers: list[str], *, keep_geometry: bool = True) -> list[Path]:
    """Copies of `paths` whose InstanceNumber is written as given (IS values a modality got wrong)."""
    out = []
    for path, number in zip(paths, numbers, strict=True):
        ds = pydicom.dcmread(path)
        # pydicom will not write a bad IS, so the value goes out as LO and its VR is patched to IS.
        ds["InstanceNumber"] = pydicom.DataElement(0x00200013, "LO", number)
        if not keep_geometry:
            del ds.ImagePositionPatient
        out.append(out_dir / path.name)
        ds.save_as(out[-1], enforce_file_format=True)
        data = out[-1].read_bytes()
        out[-1].write_bytes(data.replace(b"\x20\x00\x13\x00LO", b"\x20\x00\x13\x00IS", 1))
    return out


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_non_numeric_instance_numbers_do_not_stop_the_reader(series, tmp_path: Path) -> None:
    phantom, paths = series
    odd = _with_instance_numbers(list(reversed(paths)), tmp_path, ["A1", "", "3.0", "x", " 5", "B"])
    volume = read_ct_volume(odd)  # ordered by position along the slice normal; InstanceNumber unused
    assert np.array_equal(volume.hu, phantom.volume_hu.astype(np.float32))

    (tmp_path / "nogeo").mkdir()
    no_geometry = _with_instance_numbers(paths, tmp_path / "nogeo", ["1", "2", "3", "4", "5", "A6"], keep_geometry=False)
    with pytest.raises(SeriesReadError, match="neither ImagePositionPatient nor InstanceNumber"):
        read_ct_volume(no_geometry)
