"""The grid-independent detector (v2, issue 15): it reads every scan on a physical grid, so the same
lesion scores the same on a coarse and a fine matrix, its confidence is calibrated in mm^3, and it
reports only findings at its operating point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from torch.nn import functional as F

from ai_services.applicability import ValidatedRange, check_headers, check_volume
from ai_services.inference import (
    Calibration,
    InferenceInputError,
    LesionDetector,
    PhysicalGrid,
    extract_detections,
    physical_context,
    resample_in_plane,
)
from ai_services.series_reader import read_ct_volume
from ai_services.training import match_detections
from synthetic.clinical_phantoms import make_clinical_phantom
from synthetic.dicom_factory import write_ct_series
from synthetic.phantoms import Phantom, PhantomLesion, make_ct_phantom

WEIGHTS = Path(__file__).resolve().parents[2] / "ai_services" / "weights" / "lesion-detector-v2.pt"


@pytest.fixture(scope="module")
def detector() -> LesionDetector:
    torch.set_num_threads(2)
    return LesionDetector.load(WEIGHTS)


def test_neighbours_are_taken_at_fixed_millimetres_whatever_the_slice_interval() -> None:
    volume = torch.arange(10, dtype=torch.float32)[:, None, None, None].expand(10, 1, 2, 2).contiguous()
    # 1.25 mm slices: 2.5 mm is exactly two slices away.
    assert physical_context(volume, [5], 1.25, 2.5)[0, :, 0, 0].tolist() == [3.0, 5.0, 7.0]
    # 5 mm slices: half-way to the next slice, interpolated.
    assert physical_context(volume, [5], 5.0, 2.5)[0, :, 0, 0].tolist() == [4.5, 5.0, 5.5]
    # At the ends the edge slice is repeated.
    assert physical_context(volume, [0, 9], 1.0, 2.5)[:, :, 0, 0].tolist() == [[0.0, 0.0, 2.5], [6.5, 9.0, 9.0]]


def test_slices_are_resampled_to_the_models_pixel_size() -> None:
    slices = torch.zeros(2, 512, 512)
    assert resample_in_plane(slices, (0.7, 0.7), 1.25).shape == (2, 287, 287)
    assert resample_in_plane(slices, (1.25, 1.25), 1.25) is slices
    assert resample_in_plane(torch.zeros(1, 256, 200), (1.5, 1.0), 1.25).shape == (1, 307, 160)


def test_the_shipped_v2_manifest_describes_a_grid_model_calibrated_in_mm3(detector: LesionDetector) -> None:
    manifest = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert detector.grid == PhysicalGrid(1.25, 2.5)
    assert detector.calibration.size_unit == "mm3"
    assert 0 < detector.report_threshold < 1
    assert manifest["intended_use"]["validated_range"]["pixel_spacing_mm"] == [0.5, 1.6]
    card = manifest["model_card"]
    assert card["operating_point"]["report_threshold"] == manifest["report_threshold"]
    assert "synthetic" in card["training_data"] and card["known_failure_modes"]
    # The card quotes the independent evaluation it was written from, which is kept beside it.
    independent = manifest["independent_evaluation"]
    assert independent["generator"] == "synthetic.eval_phantoms.make_eval_scan"
    assert card["operating_point"]["sensitivity"] == independent["overall"]["sensitivity_at_operating_point"]["value"]


def test_the_same_lesion_scores_the_same_on_a_coarse_and_a_fine_matrix(detector: LesionDetector) -> None:
    """Issue 15 found v1's confidence was a size-in-voxels score: one finding read 0.55 at 128 px and
    0.96-0.999 upsampled. v2 sees both matrices on one physical grid."""
    phantom = make_ct_phantom(20_500)  # 256 x 256 at 1.5 mm
    coarse = detector.detect(phantom.volume_hu.astype(np.float32), 1.5, slice_spacing_mm=5.0)
    fine_hu = F.interpolate(torch.from_numpy(phantom.volume_hu.astype(np.float32))[:, None], scale_factor=2,
                            mode="bilinear")[:, 0].numpy()
    fine = detector.detect(fine_hu, 0.75, slice_spacing_mm=5.0)
    doubled = Phantom(fine_hu.astype(np.int16), F.interpolate(torch.from_numpy(phantom.lesion_mask.astype(np.float32))[:, None],
                                                             scale_factor=2)[:, 0].numpy() > 0.5,
                      [PhantomLesion((z, y * 2 + 0.5, x * 2 + 0.5), lesion.diameter_mm, lesion.kind, lesion.hu, lesion.region)
                       for lesion in phantom.lesions for z, y, x in [lesion.centre_zyx]], 0.75, 5.0)
    on_coarse = {hit: d for d, hit in zip(coarse, match_detections(coarse, phantom), strict=True) if hit >= 0}
    on_fine = {hit: d for d, hit in zip(fine, match_detections(fine, doubled), strict=True) if hit >= 0}
    assert len(on_coarse) >= 2 and set(on_coarse) == set(on_fine)
    for lesion, found in on_coarse.items():
        assert abs(found.confidence - on_fine[lesion].confidence) < 0.1, (found, on_fine[lesion])
        assert abs(found.diameter_mm - on_fine[lesion].diameter_mm) <= 1.5


@pytest.mark.parametrize("thickness", [1.25, 5.0])
def test_a_lesion_free_chest_with_bone_gets_at_most_one_finding_none_confident(detector: LesionDetector,
                                                                               thickness: float) -> None:
    for seed in (20_600, 20_601):
        scan = make_clinical_phantom(seed, pixel_spacing_mm=0.7, slice_thickness_mm=thickness, z_extent_mm=80.0, n_lesions=0)
        candidates = detector.detect(scan.volume_hu.astype(np.float32), 0.7, slice_spacing_mm=thickness)
        reported = detector.reported(candidates)
        assert len(reported) <= 1, [(d.diameter_mm, d.confidence) for d in reported]
        assert all(d.confidence < 0.9 for d in candidates)
        assert all(d.confidence >= detector.report_threshold for d in reported)


def test_finds_lesions_on_a_clinical_grid_it_never_trained_on(detector: LesionDetector) -> None:
    scan = make_clinical_phantom(20_610, pixel_spacing_mm=0.7, slice_thickness_mm=1.25, z_extent_mm=80.0, n_lesions=4)
    detections = detector.reported(detector.detect(scan.volume_hu.astype(np.float32), 0.7, slice_spacing_mm=1.25))
    hits = {h for h in match_detections(detections, scan) if h >= 0}
    big = {i for i, lesion in enumerate(scan.lesions) if lesion.diameter_mm >= 12}
    assert big and big <= hits, ([(lesion.kind, lesion.diameter_mm) for lesion in scan.lesions], hits)


def test_a_physical_calibration_needs_the_slice_spacing() -> None:
    probability = np.zeros((3, 16, 16), dtype=np.float32)
    probability[1, 4:8, 4:8] = 0.9
    calibration = Calibration(1.0, 1.0, -5.0, "mm3")
    with pytest.raises(InferenceInputError, match="slice spacing"):
        extract_detections(probability, (1.0, 1.0), calibration=calibration)
    thin = extract_detections(probability, (1.0, 1.0), calibration=calibration, slice_spacing_mm=1.0)[0]
    thick = extract_detections(probability, (1.0, 1.0), calibration=calibration, slice_spacing_mm=5.0)[0]
    assert thick.confidence > thin.confidence  # five times the volume in mm^3


def test_the_v2_gate_accepts_clinical_grids(detector: LesionDetector, tmp_path: Path) -> None:
    valid = ValidatedRange.from_manifest(detector.manifest)
    scan = make_clinical_phantom(20_620, pixel_spacing_mm=0.7, slice_thickness_mm=1.25, z_extent_mm=20.0, n_lesions=0)
    files = write_ct_series(scan, tmp_path, patient_id="GRID1", patient_name="Grid^Test", accession_number="GRID1")
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    verdict = check_headers(headers, valid)
    assert verdict.applicable, verdict.reason
    assert check_volume(read_ct_volume(files), valid).applicable
