"""Tests for the lesion detector with the shipped weights."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ai_services.inference import (
    LesionDetector,
    WeightsIntegrityError,
    label_components_3d,
    sha256_of_file,
)
from ai_services.series_reader import CtVolume
from ai_services.training import evaluate_model, match_detections
from synthetic.phantoms import make_ct_phantom

WEIGHTS = Path(__file__).resolve().parents[2] / "ai_services" / "weights" / "lesion-detector-v1.pt"
# Seeds from the held-out block but outside the 20 scans used for the reported metrics.
FRESH_SEEDS = (20_500, 20_501, 20_502, 20_503)


@pytest.fixture(scope="module")
def detector() -> LesionDetector:
    torch.set_num_threads(2)
    return LesionDetector.load(WEIGHTS)


@pytest.fixture(scope="module")
def operating_threshold() -> float:
    manifest = json.loads(WEIGHTS.with_suffix(".json").read_text())
    return float(manifest["heldout_metrics"]["threshold_at_4fp"])


def test_shipped_weights_are_small_and_verified() -> None:
    manifest = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert WEIGHTS.stat().st_size < 1_000_000
    assert manifest["sha256"] == sha256_of_file(WEIGHTS)


def test_sha_mismatch_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    shutil.copy(WEIGHTS, weights)
    manifest = json.loads(WEIGHTS.with_suffix(".json").read_text())
    manifest["sha256"] = "0" * 64
    (tmp_path / "w.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsIntegrityError, match="does not match"):
        LesionDetector.load(weights)
    (tmp_path / "w.json").unlink()
    with pytest.raises(WeightsIntegrityError, match="manifest not found"):
        LesionDetector.load(weights)


def test_finds_big_lesions_with_matching_boxes(detector: LesionDetector,
                                               operating_threshold: float) -> None:
    big, found = 0, 0
    for seed in FRESH_SEEDS:
        phantom = make_ct_phantom(seed, n_lesions=5)
        detections = [d for d in detector.detect(phantom.volume_hu.astype(np.float32), 1.5)
                      if d.confidence >= operating_threshold]
        matches = match_detections(detections, phantom)
        for i, lesion in enumerate(phantom.lesions):
            if lesion.diameter_mm <= 10:
                continue
            big += 1
            hits = [d for d, m in zip(detections, matches, strict=True) if m == i]
            if not hits:
                continue
            found += 1
            best = max(hits, key=lambda d: d.area_mm2)
            _, cy, cx = lesion.centre_zyx
            x0, y0, x1, y1 = best.bbox
            assert x0 - 2 <= cx <= x1 + 2 and y0 - 2 <= cy <= y1 + 2, (lesion, best)
            assert abs(best.slice_index - lesion.centre_zyx[0]) <= 1.5, (lesion, best)
            assert 0.4 * lesion.diameter_mm <= best.diameter_mm <= 1.6 * lesion.diameter_mm, (lesion, best)
    assert big >= 6
    assert found / big >= 0.75, (found, big)


def test_normal_scan_has_few_confident_findings(detector: LesionDetector) -> None:
    confident = 0
    for seed in (20_600, 20_601):
        phantom = make_ct_phantom(seed, n_lesions=0)
        confident += sum(d.confidence >= 0.5 for d in detector.detect(phantom.volume_hu, 1.5))
    assert confident <= 2


def test_progress_callback_and_ct_volume_input(detector: LesionDetector) -> None:
    phantom = make_ct_phantom(20_700, n_slices=20)
    calls: list[tuple[int, int]] = []
    volume = CtVolume(hu=phantom.volume_hu.astype(np.float32), pixel_spacing_mm=(1.5, 1.5),
                      slice_thickness_mm=5.0, sop_instance_uids=[str(i) for i in range(20)],
                      series_instance_uid="1.2")
    detector.detect(volume, batch_size=8, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_512_input_is_downsampled_and_boxes_are_in_original_pixels(detector: LesionDetector) -> None:
    phantom = make_ct_phantom(20_800, n_slices=8, size=512, pixel_spacing_mm=0.75, n_lesions=4)
    probability = detector.predict_probabilities(phantom.volume_hu)
    assert probability.shape == (8, 512, 512)
    detections = detector.detect(phantom.volume_hu, (0.75, 0.75))
    matches = match_detections(detections, phantom)
    big = [i for i, lesion in enumerate(phantom.lesions) if lesion.diameter_mm > 10]
    found = 0
    for i in big:
        hits = [d for d, m in zip(detections, matches, strict=True) if m == i]
        if not hits:
            continue
        found += 1
        _, cy, cx = phantom.lesions[i].centre_zyx
        x0, y0, x1, y1 = hits[0].bbox
        assert x0 - 3 <= cx <= x1 + 3 and y0 - 3 <= cy <= y1 + 3
        # The box is in 512-grid pixels, so its size in mm uses the 0.75 mm spacing.
        assert 0.4 * phantom.lesions[i].diameter_mm <= hits[0].diameter_mm <= 1.6 * phantom.lesions[i].diameter_mm
    assert len(big) >= 3 and found / len(big) >= 0.7, (found, big)


def test_label_components_3d_hand_made() -> None:
    mask = np.zeros((3, 5, 5), dtype=bool)
    mask[0, 0, 0:3] = True  # an L spanning two slices ...
    mask[1, 0, 2] = True
    mask[1, 1:4, 2] = True
    mask[2, 4, 4] = True  # ... a lone voxel
    mask[0, 4, 0] = True
    mask[0, 3, 1] = True  # diagonal to the previous: separate under 6-connectivity
    labels, count = label_components_3d(mask)
    assert count == 4
    assert len(set(labels[mask].tolist())) == 4
    assert labels[0, 0, 0] == labels[1, 3, 2]
    assert labels[0, 4, 0] != labels[0, 3, 1]
    assert (labels[~mask] == 0).all()
    empty, none = label_components_3d(np.zeros((2, 3, 3), dtype=bool))
    assert none == 0 and not empty.any()


def test_label_components_3d_matches_flood_fill() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((4, 20, 20)) < 0.4
    labels, count = label_components_3d(mask)
    # Reference: breadth-first flood fill.
    ref = np.zeros(mask.shape, dtype=int)
    n = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if ref[start]:
            continue
        n += 1
        stack = [start]
        ref[start] = n
        while stack:
            z, y, x = stack.pop()
            for dz, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                q = (z + dz, y + dy, x + dx)
                if all(0 <= q[i] < mask.shape[i] for i in range(3)) and mask[q] and not ref[q]:
                    ref[q] = n
                    stack.append(q)
    assert count == n
    pairs = set(zip(labels[mask].tolist(), ref[mask].tolist(), strict=True))
    assert len(pairs) == n  # a one-to-one relabelling


def test_evaluate_model_on_one_heldout_scan() -> None:
    metrics = evaluate_model(WEIGHTS, heldout_seeds=[20_900])
    assert metrics.n_scans == 1 and metrics.n_lesions >= 1
    assert 0.0 <= metrics.froc_sensitivity_at_1fp <= metrics.froc_sensitivity_at_4fp <= 1.0
    assert 0.0 <= metrics.ece <= 1.0
