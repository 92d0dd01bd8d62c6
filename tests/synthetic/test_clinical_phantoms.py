"""Tests for the clinical-grid training phantoms (small grids so each test stays fast)."""

import math

import numpy as np
import pytest

from synthetic.clinical_phantoms import (
    _BONE_LABELS,
    _LIVER,
    _LUNG_LABELS,
    _make_clinical_phantom_with_labels,
    make_clinical_phantom,
)
from synthetic.phantoms import Phantom, PhantomError

SMALL = {"size": 200, "pixel_spacing_mm": 2.0}


def _centre_voxel(p: Phantom, i: int) -> tuple[int, int, int]:
    z, y, x = p.lesions[i].centre_zyx
    return int(round(z)), int(round(y)), int(round(x))


def test_deterministic_per_seed_and_varies_between_seeds() -> None:
    a = make_clinical_phantom(11, **SMALL, n_lesions=3)
    b = make_clinical_phantom(11, **SMALL, n_lesions=3)
    c = make_clinical_phantom(12, **SMALL, n_lesions=3)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.volume_hu, c.volume_hu)


@pytest.mark.parametrize(("thickness", "n_slices"), [(1.25, 80), (5.0, 20)])
def test_grid_is_honoured(thickness: float, n_slices: int) -> None:
    p = make_clinical_phantom(3, size=160, pixel_spacing_mm=2.0, slice_thickness_mm=thickness, n_lesions=1)
    assert p.volume_hu.shape == (n_slices, 160, 160) and p.volume_hu.dtype == np.int16
    assert p.lesion_mask.shape == p.volume_hu.shape and p.lesion_mask.dtype == bool
    assert p.pixel_spacing_mm == 2.0 and p.slice_thickness_mm == thickness
    assert p.body_mask is not None and p.body_mask.shape == p.volume_hu.shape
    assert p.volume_hu.min() >= -1024 and p.volume_hu.max() <= 3071
    assert p.volume_hu[0, 0, 0] == -1024  # outside the round reconstruction field


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(PhantomError):
        make_clinical_phantom(1, kernel="bone")
    with pytest.raises(PhantomError):
        make_clinical_phantom(1, n_lesions=-1)


def _bone_runs_along_wall(labels2d: np.ndarray, body2d: np.ndarray, spacing: float) -> int:
    """Separate bone pieces met walking round the chest wall (rays from the body centre)."""
    rows, cols = np.nonzero(body2d)
    cy, cx = rows.mean(), cols.mean()
    bone = np.isin(labels2d, _BONE_LABELS)
    hits = []
    for theta in np.linspace(0, 2 * math.pi, 720, endpoint=False):
        radii = np.arange(0, 400 / spacing)
        ys = np.clip(np.round(cy + radii * math.sin(theta)).astype(int), 0, body2d.shape[0] - 1)
        xs = np.clip(np.round(cx + radii * math.cos(theta)).astype(int), 0, body2d.shape[1] - 1)
        inside = body2d[ys, xs]
        edge = int(np.flatnonzero(inside).max())
        wall = slice(max(edge - int(50 / spacing), 0), edge + 1)  # the outer 50 mm of the body
        hits.append(bool(bone[ys[wall], xs[wall]].any()))
    h = np.array(hits)
    return int(np.sum(h & ~np.roll(h, 1)))


def test_anatomy_hu_lungs_bone_ribs_and_spine() -> None:
    p, labels = _make_clinical_phantom_with_labels(5, **SMALL, n_lesions=0, kernel="soft")
    vol, body = p.volume_hu, p.body_mask
    assert body is not None
    lung = np.isin(labels, (_LUNG_LABELS[0],))
    assert abs(np.median(vol[lung]) - (-850)) < 60
    bone_fraction = float(np.mean(vol[body] > 600))
    assert 0.005 < bone_fraction < 0.08
    mid = vol.shape[0] // 2
    assert _bone_runs_along_wall(labels[mid], body[mid], 2.0) >= 4
    # The spine: bone at the posterior midline, none at the anterior midline of the lungs' level.
    bone = np.isin(labels[mid], _BONE_LABELS)
    rows = np.flatnonzero(bone[:, 95:105].any(1))
    body_rows = np.flatnonzero(body[mid][:, 100])
    assert rows.size and rows.max() > body_rows.mean() + 0.3 * (body_rows.max() - body_rows.mean())
    assert 0.4 * vol.shape[2] < np.mean(np.nonzero(bone[rows.max() - 10:rows.max()])[1]) < 0.6 * vol.shape[2]


def test_lesion_free_scan_keeps_the_bone() -> None:
    p = make_clinical_phantom(8, size=160, pixel_spacing_mm=2.0, n_lesions=0)
    assert p.lesions == [] and not p.lesion_mask.any()
    assert p.body_mask is not None
    assert np.mean(p.volume_hu[p.body_mask] > 600) > 0.005


def test_drawn_lesion_counts_include_lesion_free_scans() -> None:
    counts = [len(make_clinical_phantom(s, size=64, pixel_spacing_mm=6.0, slice_thickness_mm=10.0).lesions)
              for s in range(24)]
    assert 0 in counts and max(counts) <= 6


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_lesions_sit_in_their_region_away_from_bone(seed: int) -> None:
    p, labels = _make_clinical_phantom_with_labels(seed, **SMALL, slice_thickness_mm=1.25, n_lesions=6,
                                                   kernel="soft")
    assert p.lesions
    bone = np.isin(labels, _BONE_LABELS)
    assert not (p.lesion_mask & bone).any()
    for i, lesion in enumerate(p.lesions):
        assert 3.0 <= lesion.diameter_mm <= 30.0
        z, y, x = _centre_voxel(p, i)
        assert p.lesion_mask[z, y, x]
        expected = _LUNG_LABELS if lesion.region == "lung" else (_LIVER,)
        assert labels[z, y, x] in expected, (lesion, labels[z, y, x])
        if lesion.diameter_mm >= 12 and lesion.kind not in ("cavitated", "part_solid", "lobulated", "spiculated"):
            r_vox = 0.3 * lesion.diameter_mm / 2 / 2.0
            zz, yy, xx = np.ogrid[: p.volume_hu.shape[0], : p.volume_hu.shape[1], : p.volume_hu.shape[2]]
            cz, cy, cx = lesion.centre_zyx
            core = ((zz - cz) * 1.25 / 2.0) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= max(r_vox, 1.0) ** 2
            assert abs(float(p.volume_hu[core].mean()) - lesion.hu) < 60, lesion


def test_lesions_never_overlap_each_other_or_forbidden_tissue() -> None:
    p, labels = _make_clinical_phantom_with_labels(31, **SMALL, n_lesions=6)
    centres = [np.array(les.centre_zyx) * np.array([p.slice_thickness_mm, 2.0, 2.0]) for les in p.lesions]
    for i in range(len(centres)):
        for j in range(i + 1, len(centres)):
            gap = np.linalg.norm(centres[i] - centres[j])
            assert gap > (p.lesions[i].diameter_mm + p.lesions[j].diameter_mm) / 2


def test_thick_slices_lower_a_small_lesions_contrast() -> None:
    def peak_contrast(thickness: float) -> tuple[float, float]:
        p = make_clinical_phantom(41, size=256, pixel_spacing_mm=1.0, slice_thickness_mm=thickness, n_lesions=6,
                                  kernel="soft")
        small = [les for les in p.lesions if les.region == "lung" and les.kind == "solid" and les.diameter_mm <= 8]
        assert small, p.lesions
        z, y, x = (int(round(c)) for c in small[0].centre_zyx)
        patch = p.volume_hu[z, y - 1:y + 2, x - 1:x + 2].astype(float)
        return float(patch.mean()), small[0].diameter_mm

    thin, d_thin = peak_contrast(1.25)
    thick, d_thick = peak_contrast(5.0)
    assert d_thin == d_thick  # same lesion: placement does not depend on the grid
    assert thick < thin - 100
