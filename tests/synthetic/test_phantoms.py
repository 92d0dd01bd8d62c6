"""Tests for the synthetic CT phantom generator."""

import time

import numpy as np
import pytest

from synthetic.phantoms import (
    LUNG_LESION_KINDS,
    PhantomError,
    make_ct_phantom,
)


def test_shapes_types_and_hu_ranges() -> None:
    p = make_ct_phantom(1)
    assert p.volume_hu.shape == (24, 256, 256) and p.volume_hu.dtype == np.int16
    assert p.lesion_mask.shape == p.volume_hu.shape and p.lesion_mask.dtype == bool
    assert p.pixel_spacing_mm == 1.5 and p.slice_thickness_mm == 5.0
    vol = p.volume_hu
    assert abs(np.median(vol[:, :4, :4]) - (-1000)) < 40  # air in the corner
    assert vol.max() > 600  # bone
    centre = vol[12, 128 - 10:128 + 10, 128 - 10:128 + 10]
    assert -100 < np.median(centre) < 100  # mediastinal soft tissue
    lung_like = np.mean((vol[12] > -950) & (vol[12] < -750))
    assert lung_like > 0.1  # two lungs take a good share of a mid-chest slice


def test_deterministic_per_seed_and_varies_between_seeds() -> None:
    a, b, c = make_ct_phantom(7), make_ct_phantom(7), make_ct_phantom(8)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert np.array_equal(a.lesion_mask, b.lesion_mask)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.volume_hu, c.volume_hu)
    body_a = (a.volume_hu[12] > -500).sum()
    body_c = (c.volume_hu[12] > -500).sum()
    assert body_a != body_c


def test_normal_scan_has_no_lesions() -> None:
    p = make_ct_phantom(3, n_lesions=0)
    assert p.lesions == [] and not p.lesion_mask.any()


def test_lesions_have_masks_sizes_and_variety() -> None:
    kinds, regions, diameters = set(), set(), []
    for seed in range(12):
        p = make_ct_phantom(seed, n_lesions=6)
        for lesion in p.lesions:
            z, y, x = (int(round(v)) for v in lesion.centre_zyx)
            assert p.lesion_mask[z, y, x], lesion
            kinds.add(lesion.kind)
            regions.add(lesion.region)
            diameters.append(lesion.diameter_mm)
    assert set(LUNG_LESION_KINDS) <= kinds
    assert regions == {"lung", "soft_tissue"}
    assert min(diameters) >= 3.0 and max(diameters) <= 30.0
    assert min(diameters) < 6.0 and max(diameters) > 15.0


def test_lung_lesion_is_denser_than_lung() -> None:
    p = make_ct_phantom(5, n_lesions=6)
    solid = [candidate for candidate in p.lesions if candidate.region == "lung"
             and candidate.kind in ("solid", "lobulated") and candidate.diameter_mm > 8]
    for lesion in solid:
        z, y, x = (int(round(v)) for v in lesion.centre_zyx)
        assert p.volume_hu[z, y - 1:y + 2, x - 1:x + 2].mean() > -300


def test_finer_grid_and_speed() -> None:
    started = time.perf_counter()
    make_ct_phantom(11)
    assert time.perf_counter() - started < 1.0
    p = make_ct_phantom(11, size=512, pixel_spacing_mm=0.75, n_slices=4)
    assert p.volume_hu.shape == (4, 512, 512)


def test_invalid_parameters_raise() -> None:
    with pytest.raises(PhantomError):
        make_ct_phantom(0, n_lesions=-1)
    with pytest.raises(PhantomError):
        make_ct_phantom(0, pixel_spacing_mm=0)
