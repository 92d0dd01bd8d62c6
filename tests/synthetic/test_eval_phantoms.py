"""The evaluation-only generator: deterministic, clinical-looking, with exact ground truth.

Small grids (128 x 128 at 2.8 mm) keep these fast; the clinical grids are exercised by
`hospital ai evaluate` and the README's numbers.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from synthetic.eval_phantoms import (
    EVAL_GRIDS,
    LESION_DIAMETERS_MM,
    EvalGrid,
    EvalPhantomError,
    make_eval_scan,
)

SMALL = EvalGrid("small", 128, 2.8, 5.0, 16)
SMALL_THIN = EvalGrid("small-thin", 128, 2.8, 1.25, 24)


def test_the_clinical_grids_are_512_at_0_7_mm_with_thick_and_thin_slices() -> None:
    assert {(g.size, g.pixel_spacing_mm, g.slice_thickness_mm) for g in EVAL_GRIDS.values()} == {
        (512, 0.7, 5.0), (512, 0.7, 1.25)}


def test_a_seed_is_a_scan() -> None:
    a, b = make_eval_scan(3, SMALL), make_eval_scan(3, SMALL)
    assert np.array_equal(a.volume_hu, b.volume_hu) and a.lesions == b.lesions
    assert not np.array_equal(a.volume_hu, make_eval_scan(4, SMALL).volume_hu)


def test_lesion_free_scans_have_continuous_bone_and_no_lesion() -> None:
    scan = make_eval_scan(11, SMALL, n_lesions=0)
    assert scan.lesions == [] and not scan.lesion_mask.any()
    bone_per_slice = (scan.volume_hu > 300).reshape(scan.volume_hu.shape[0], -1).sum(axis=1)
    assert (bone_per_slice > 30).all()  # ribs, spine, sternum on every slice
    assert (scan.volume_hu < -700).mean() > 0.3  # air outside and lungs inside
    lung = (scan.volume_hu > -950) & (scan.volume_hu < -700)
    assert lung.mean() > 0.05


@pytest.mark.parametrize("grid", [SMALL, SMALL_THIN])
def test_lesions_have_the_promised_sizes_kinds_and_ground_truth(grid: EvalGrid) -> None:
    lesions = []
    for seed in range(4):
        scan = make_eval_scan(seed, grid)
        for lesion in scan.lesions:
            z, y, x = (int(round(c)) for c in lesion.centre_zyx)
            assert scan.lesion_mask[z, y, x], lesion  # the centre voxel is in the mask
            ring = scan.volume_hu[z, max(y - 12, 0):y + 13, max(x - 12, 0):x + 13].astype(float)
            if lesion.diameter_mm >= 12 and lesion.kind == "hypodense":
                assert scan.volume_hu[z, y, x] < np.median(ring) + 5  # darker than the liver around it
        lesions += scan.lesions
    assert {round(lesion.diameter_mm) for lesion in lesions} <= set(LESION_DIAMETERS_MM)
    kinds = {(lesion.region, lesion.kind) for lesion in lesions}
    assert kinds <= {("lung", "solid"), ("liver", "solid"), ("liver", "hypodense")} and len(kinds) >= 2
    assert len(lesions) >= 6 and {lesion.shape for lesion in lesions} <= {"sphere", "ellipsoid"}


def test_refuses_grids_smaller_than_a_chest() -> None:
    with pytest.raises(EvalPhantomError):
        make_eval_scan(1, EvalGrid("tiny", 64, 1.0, 5.0, 8))


def test_the_evaluation_generator_shares_nothing_with_the_training_generator() -> None:
    """Independent design: importing it pulls in neither the training generator nor the project."""
    code = ("import sys, synthetic.eval_phantoms; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('synthetic', 'hospital', 'ai_services', 'imaging_orders', 'referrals', 'followup', 'billing', 'demo')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['synthetic', 'synthetic.eval_phantoms']"
