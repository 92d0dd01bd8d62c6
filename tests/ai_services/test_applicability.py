"""The applicability gate: series outside the model's validated range are refused with the right
reason, before inference; a normal synthetic CT on the training grid is accepted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_services.applicability import (
    IntendedUseMissing,
    ValidatedRange,
    assess,
    check_headers,
)
from ai_services.series_reader import CtVolume, read_ct_volume
from tests.ai_services import gate_series

MANIFEST = Path(__file__).resolve().parents[2] / "ai_services" / "weights" / "lesion-detector-v1.json"


@pytest.fixture(scope="module")
def valid() -> ValidatedRange:
    return ValidatedRange.from_manifest(json.loads(MANIFEST.read_text()))


def written(datasets: list[pydicom.Dataset], out: Path) -> tuple[list[pydicom.Dataset], CtVolume]:
    """Write the series as files and read it back the way the analysis job does."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = out / f"{index:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths], read_ct_volume(paths)


def test_a_normal_synthetic_ct_on_the_training_grid_is_applicable(valid: ValidatedRange, tmp_path: Path) -> None:
    headers, volume = written(gate_series.normal_ct(), tmp_path)
    verdict = assess(headers, volume, valid)
    assert verdict.applicable, verdict.reason
    assert verdict.label == "AI applicable"


@pytest.mark.parametrize(
    ("build", "check", "words"),
    [
        (gate_series.nm, "modality", "modality NM"),
        (gate_series.rtdose, "modality", "modality RTDOSE"),
        (gate_series.mr, "modality", "modality MR"),
        (gate_series.localizer, "image-type", "image type LOCALIZER"),
        (gate_series.chest_crop_128, "field-of-view", "field of view 192 mm (128 x 128 px)"),
        (gate_series.sagittal, "orientation", "sagittal images"),
    ],
    ids=["nm", "rtdose", "mr", "localizer", "crop-128px", "sagittal"],
)
def test_series_outside_the_validated_range_are_not_applicable(
    build: object, check: str, words: str, valid: ValidatedRange
) -> None:
    verdict = check_headers(build(), valid)  # type: ignore[operator]
    assert not verdict.applicable
    assert verdict.check == check
    assert words in str(verdict.reason)
    assert verdict.label.startswith("AI not applicable: ")


@pytest.mark.parametrize(
    ("volume", "words"),
    [(gate_series.nm_counts_volume, "0% air voxels"), (gate_series.dose_volume, "0% air voxels")],
    ids=["nm-counts", "rt-dose"],
)
def test_non_ct_pixels_under_ct_headers_fail_the_pixel_check(
    volume: object, words: str, valid: ValidatedRange, tmp_path: Path
) -> None:
    headers, loaded = written(gate_series.mislabelled_as_ct(volume()), tmp_path)  # type: ignore[operator]
    assert check_headers(headers, valid).applicable  # the headers lie ...
    verdict = assess(headers, loaded, valid)  # ... the pixels do not
    assert (verdict.check, verdict.applicable) == ("pixels", False)
    assert "pixel values do not look like CT" in str(verdict.reason) and words in str(verdict.reason)


@pytest.mark.parametrize(
    ("change", "check", "words"),
    [
        ({"SliceThickness": "1.25"}, "slice-thickness", "slice thickness 1.25 mm is outside the validated 4.5-5.5 mm"),
        ({"PixelSpacing": ["1.0", "1.0"]}, "pixel-spacing", "pixel spacing 1 x 1 mm is outside the validated 1.25-1.75 mm"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "sop-class", "Secondary Capture Image Storage"),
        ({"BodyPartExamined": "HEAD"}, "body-part", "body part HEAD"),
    ],
    ids=["thin-slices", "fine-pixels", "secondary-capture", "head"],
)
def test_headers_off_the_validated_grid_are_not_applicable(
    change: dict[str, object], check: str, words: str, valid: ValidatedRange
) -> None:
    datasets = gate_series.normal_ct()
    for ds in datasets:
        for keyword, value in change.items():
            setattr(ds, keyword, value)
    verdict = check_headers(datasets, valid)
    assert (verdict.check, verdict.applicable) == (check, False)
    assert words in str(verdict.reason)


def test_too_few_slices_and_wrong_slice_spacing_are_not_applicable(valid: ValidatedRange, tmp_path: Path) -> None:
    assert check_headers(gate_series.normal_ct()[:4], valid).check == "slices"
    datasets = gate_series.normal_ct()
    for index, ds in enumerate(datasets):  # 5 mm thick slices every 10 mm: gaps between them
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], str(index * 10.0)]
    headers, volume = written(datasets, tmp_path)
    verdict = assess(headers, volume, valid)
    assert verdict.check == "slice-spacing" and "slice spacing 10 mm" in str(verdict.reason)


def test_a_manifest_without_intended_use_cannot_vouch_for_any_series() -> None:
    with pytest.raises(IntendedUseMissing, match="intended_use.validated_range"):
        ValidatedRange.from_manifest({"model_name": "lesion-detector", "version": "0"})


def test_the_validated_range_is_the_training_grid_and_its_pixels() -> None:
    manifest = json.loads(MANIFEST.read_text())
    grid = manifest["training_data"]["phantom_shape"]
    valid = ValidatedRange.from_manifest(manifest)
    assert grid[0] >= valid.min_slices and grid[1] * 1.5 >= valid.min_field_of_view_mm
    assert valid.pixel_spacing_mm[0] <= 1.5 <= valid.pixel_spacing_mm[1]
    assert valid.slice_thickness_mm[0] <= 5.0 <= valid.slice_thickness_mm[1]
    assert manifest["intended_use"]["trained_on"] == "synthetic data only"
    assert np.isfinite(valid.hu.p999_hu_at_most)
