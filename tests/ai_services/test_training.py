"""Tests for training, calibration and the evaluation metrics."""

import json
from pathlib import Path

import numpy as np
import pytest

from ai_services.inference import Detection, LesionDetector, sha256_of_file
from ai_services.training import (
    FrocPoint,
    TrainingError,
    auroc,
    expected_calibration_error,
    fit_platt,
    froc_curve,
    match_detections,
    sensitivity_at_fp_rate,
    train_model,
    training_lesion_count,
)
from synthetic.phantoms import make_ct_phantom


def test_auroc_known_cases() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # One positive above both negatives, one between: 3 of 4 pairs ordered correctly.
    assert auroc([0.1, 0.3, 0.2, 0.9], [0, 0, 1, 1]) == pytest.approx(0.75)
    with pytest.raises(TrainingError):
        auroc([0.1, 0.2], [1, 1])


def test_expected_calibration_error_known_cases() -> None:
    assert expected_calibration_error([], []) == 0.0
    # Confidence 0.25 in bin 2, exactly a quarter correct: perfectly calibrated.
    assert expected_calibration_error([0.25] * 4, [1, 0, 0, 0]) == pytest.approx(0.0)
    # Always 0.9 confident, always wrong.
    assert expected_calibration_error([0.9, 0.9], [0, 0]) == pytest.approx(0.9)
    # Two bins with equal weight: |1 - 0.95| and |0 - 0.05|.
    assert expected_calibration_error([0.95, 0.05], [1, 0]) == pytest.approx(0.05)


def test_froc_counts_hits_fps_and_ignores_repeats() -> None:
    # 2 scans, 3 lesions (ids 0, 1, 1000); detection ids: -1 = false positive.
    conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    ids = [0, 0, -1, 1000, -1, -1]
    points = froc_curve(conf, ids, n_lesions=3, n_scans=2)
    assert points[1] == FrocPoint(0.9, 1 / 3, 0.0)
    assert points[2] == FrocPoint(0.8, 1 / 3, 0.0)  # repeat on lesion 0: neither TP nor FP
    assert points[4] == FrocPoint(0.6, 2 / 3, 0.5)
    assert points[-1].false_positives_per_scan == 1.5
    assert sensitivity_at_fp_rate(points, 0.0) == (1 / 3, 0.9)
    assert sensitivity_at_fp_rate(points, 1.0) == (2 / 3, 0.6)


def test_fit_platt_recovers_monotone_calibration() -> None:
    rng = np.random.default_rng(0)
    max_p = rng.uniform(0.3, 0.999, 2000)
    true_p = 1 / (1 + np.exp(-(2.0 * np.log(max_p / (1 - max_p)) - 1.0)))
    outcomes = rng.random(2000) < true_p
    calibration = fit_platt(max_p, np.full(2000, 50.0), outcomes)
    confidences = calibration.apply(max_p, np.full(2000, 50.0))
    assert expected_calibration_error(confidences, outcomes) < 0.05
    assert calibration.coef_logit == pytest.approx(2.0, abs=0.4)


def _detection(z: int, x: float, y: float, confidence: float = 0.9) -> Detection:
    return Detection(slice_index=z, bbox=(int(x) - 2, int(y) - 2, int(x) + 3, int(y) + 3),
                     centre_xy=(x, y), diameter_mm=7.5, area_mm2=40.0, n_slices=1, first_slice=z,
                     last_slice=z, max_probability=confidence, n_voxels=20, confidence=confidence)


def test_match_detections_hit_rule() -> None:
    phantom = make_ct_phantom(21, n_lesions=3)
    lesion = phantom.lesions[0]
    z, y, x = lesion.centre_zyx
    far_z = int(round(z)) + 6 if z < 12 else int(round(z)) - 6
    dets = [
        _detection(int(round(z)), x, y),  # on the centre: hit
        _detection(int(round(z)), x + 60, y + 60),  # far away in-plane: miss
        _detection(far_z, x, y),  # right place, 30 mm away in z: miss
    ]
    matches = match_detections(dets, phantom)
    assert matches[0] == 0
    assert matches[1] != 0 and matches[2] != 0


def test_training_lesion_count_includes_normals() -> None:
    counts = [training_lesion_count(s) for s in range(200)]
    assert 0 in counts and max(counts) <= 8 and 10 < counts.count(0) < 50


def test_tiny_training_run_writes_verified_weights(tmp_path: Path) -> None:
    result = train_model(tmp_path, seed=1, n_train_phantoms=2, epochs=1, steps_per_epoch=2,
                         batch_size=4, n_validation_phantoms=1, n_heldout_phantoms=1, name="tiny")
    assert result.weights_path == tmp_path / "tiny.pt" and result.weights_path.is_file()
    assert result.weights_path.stat().st_size < 1_000_000
    manifest = json.loads((tmp_path / "tiny.json").read_text())
    assert manifest["sha256"] == sha256_of_file(result.weights_path) == result.sha256
    assert manifest["training_data"]["train_seeds"] == [1000, 1001]
    assert manifest["training_data"]["heldout_seeds"] == [20000, 20000]
    assert manifest["training"]["seed"] == 1
    assert set(manifest["calibration"]) >= {"coef_logit", "coef_size", "intercept"}
    assert 0.0 <= manifest["heldout_metrics"]["slice_auroc"] <= 1.0
    assert manifest["code_version"]
    LesionDetector.load(result.weights_path)  # loads and verifies


def test_bad_arguments_rejected(tmp_path: Path) -> None:
    with pytest.raises(TrainingError):
        train_model(tmp_path, n_train_phantoms=0, epochs=1)
