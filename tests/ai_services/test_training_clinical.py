"""The v2 training script (``ai_services.training_clinical``): its seed blocks never meet the
evaluation's or retraining's, its scans are prepared exactly as the detector reads them, and a
tiny run on the CPU goes from scans to a loadable, verified model with a physical grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import ai_services.training_clinical as tc
from ai_services.evaluation import EVAL_TEST_SEED_BASE
from ai_services.inference import LesionDetector
from ai_services.retraining import RETRAIN_SYNTHETIC_SEED_BASE, cycle_seeds


def test_grids_are_drawn_per_seed_within_the_clinical_ranges() -> None:
    specs = [tc.draw_spec(tc.TRAIN_SEED_BASE + k) for k in range(200)]
    assert specs[:5] == [tc.draw_spec(tc.TRAIN_SEED_BASE + k) for k in range(5)]  # deterministic
    clinical = [s for s in specs if s.generator == "clinical"]
    assert 0.6 < len(clinical) / len(specs) < 0.9
    assert all(0.5 <= s.pixel_spacing_mm <= 1.0 and s.size == 512 for s in clinical)
    assert {s.slice_thickness_mm for s in specs} == set(tc.THICKNESSES_MM)
    assert all(0.6 <= s.pixel_spacing_mm <= 1.6 for s in specs if s.generator == "v1")


def test_seed_blocks_stay_apart_from_evaluation_and_retraining() -> None:
    training = range(tc.TRAIN_SEED_BASE, tc.TRAIN_SEED_BASE + 10 * 10_000)
    assert training == tc.GRID_TRAIN_SEEDS
    assert EVAL_TEST_SEED_BASE < tc.TRAIN_SEED_BASE and RETRAIN_SYNTHETIC_SEED_BASE < tc.TRAIN_SEED_BASE
    assert tc.HELDOUT_SEED_BASE + 1000 < EVAL_TEST_SEED_BASE and tc.VALIDATION_SEED_BASE + 1000 < tc.HELDOUT_SEED_BASE
    assert EVAL_TEST_SEED_BASE not in training
    for version in ("2", "99", "100", "250"):  # retraining's fresh seeds per cycle skip the v2 block
        assert all(not set(block) & set(training) for block in cycle_seeds(version, 8, 12))


def test_a_prepared_scan_is_what_the_detector_reads() -> None:
    spec = tc.ScanSpec(tc.TRAIN_SEED_BASE + 3, "clinical", 0.7, 2.5, 512, 40.0)
    phantom = tc.make_scan(spec, 3)
    prepared = tc.prepare_scan(phantom)
    size = round(512 * 0.7 / tc.GRID.in_plane_mm)
    assert prepared.windowed.shape == (phantom.volume_hu.shape[0], 2, size, size)
    assert prepared.windowed.dtype == np.float16 and 0.0 <= prepared.windowed.min() <= prepared.windowed.max() <= 1.0
    assert prepared.lesion.any() and len(prepared.components) == len(phantom.lesions)
    # Hard negatives are drawn on bone; only a calcified lesion is dense enough to share voxels with it.
    assert prepared.bone.sum() > 20 * (prepared.bone & prepared.lesion).sum()


def test_a_tiny_run_trains_calibrates_and_writes_a_verified_grid_model(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    state = tc.train(tmp_path / "run", n_scans=2, minutes=0.05, workers=2, start_scans=2, batch_size=4)
    record = json.loads((tmp_path / "run" / "training-record.json").read_text())
    assert record["n_train_scans"] == 2 and record["steps"] > 0 and record["device"] == "cpu"
    weights = tc.finish(state, tmp_path / "out", n_validation=2, n_heldout=1)
    detector = LesionDetector.load(weights)  # the sha256 in the manifest matches
    assert detector.grid == tc.GRID and detector.calibration.size_unit == "mm3"
    manifest = detector.manifest
    assert manifest["training_data"]["validation_seeds"] == [tc.VALIDATION_SEED_BASE, tc.VALIDATION_SEED_BASE + 1]
    assert manifest["heldout_metrics"]["n_scans"] == 1 and 0.0 <= manifest["report_threshold"] <= 1.0
