"""An evaluation-only CT phantom generator, designed independently of ``synthetic.phantoms``.

Why a second generator: a detector trained and scored on one generator learns that generator's
shortcuts (its rib ovals, its noise, its 256 x 256 / 1.5 mm grid). Numbers that hold only there
flatter the model. This module is used ONLY to evaluate (``ai_services.evaluation``): never for
training, calibration, threshold choice or retraining; ``tests/test_architecture.py`` fails if any
other ``ai_services`` module imports it, and ``synthetic.phantoms`` does not know it exists.

How it differs from the training generator, on purpose:

- Anatomy is a set of analytic functions of physical position (mm), evaluated per sub-slice and
  averaged over each slice's thickness (partial volume along z), instead of per-slice painting.
- Bone is a continuous, oblique rib cage (ribs as bands that descend anteriorly, with costal
  cartilage, cortex and marrow), a sternum, scapulae, vertebral bodies with discs, pedicles, lamina
  and spinous process; the training generator has isolated rib ovals and a round spine.
- Soft tissue includes a heart with a wall and blood pool, pericardial fat, ascending and
  descending aorta, optional intravenous contrast, a diaphragm dome with liver and stomach under it.
- Lung vessels are curved random-walk trees; lung density has a dependent (posterior) gradient.
- Image formation is in the frequency domain: a reconstruction-kernel MTF (soft or sharp, the
  sharp one overshoots at edges) and noise with a CT-like (band-pass) noise power spectrum.
- Lesions are spheres or ellipsoids of exactly 5, 8, 12 or 20 mm (volume-equivalent diameter),
  solid (lung, liver) or hypodense (liver), balanced across scans so each size and kind is scored.

Clinical grids (``EVAL_GRIDS``): 512 x 512 at 0.7 mm with 5 mm and with 1.25 mm slices. Arrays are
(slice, row, column) = (z, y, x); slice 0 is inferior, row 0 anterior, column 0 the patient's right,
as in ``synthetic.phantoms`` so the same DICOM factory and hit rule apply.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

LESION_DIAMETERS_MM: tuple[float, ...] = (5.0, 8.0, 12.0, 20.0)
# (region, kind): hypodense lesions only make sense in an organ brighter than them.
LESION_TYPES: tuple[tuple[str, str], ...] = (("lung", "solid"), ("liver", "hypodense"), ("liver", "solid"))
HU_MIN, HU_MAX = -1024, 3071

# Tissue labels of the analytic body.
AIR, FAT, MUSCLE, LUNG, LIVER, HEART_WALL, BLOOD, CORTEX, MARROW, CARTILAGE, DISC, CORD, \
    MEDIASTINAL_FAT, ABDOMEN, VESSEL = range(15)


class EvalPhantomError(ValueError):
    """Raised for a grid or lesion request the generator cannot honour."""


@dataclass(frozen=True)
class EvalGrid:
    """A reconstruction grid: in-plane matrix and spacing, slice thickness (= spacing), slices."""

    name: str
    size: int
    pixel_spacing_mm: float
    slice_thickness_mm: float
    n_slices: int

    @property
    def z_extent_mm(self) -> float:
        return self.n_slices * self.slice_thickness_mm


# The thin-slice grid covers less z (80 mm) than the thick one (120 mm) to keep evaluation time sane
# on two CPU cores; both cover the diaphragm, so lung and liver lesions are present in each.
EVAL_GRIDS: dict[str, EvalGrid] = {
    "512@0.7mm/5mm": EvalGrid("512@0.7mm/5mm", 512, 0.7, 5.0, 24),
    "512@0.7mm/1.25mm": EvalGrid("512@0.7mm/1.25mm", 512, 0.7, 1.25, 64),
}


@dataclass(frozen=True)
class EvalLesion:
    """Ground truth for one lesion; ``centre_zyx`` in voxel coordinates (float)."""

    centre_zyx: tuple[float, float, float]
    diameter_mm: float  # volume-equivalent sphere diameter
    kind: str  # "solid" | "hypodense"
    region: str  # "lung" | "liver"
    shape: str  # "sphere" | "ellipsoid"
    semi_axes_mm: tuple[float, float, float]  # z, u, v before the in-plane rotation
    hu: float


@dataclass
class EvalScan:
    """A volume in HU with its ground truth (the fields the hit rule needs match ``Phantom``)."""

    volume_hu: np.ndarray  # int16 (S, H, W)
    lesion_mask: np.ndarray  # bool (S, H, W)
    lesions: list[EvalLesion]
    pixel_spacing_mm: float
    slice_thickness_mm: float
    seed: int
    grid: str
    kernel: str  # "soft" | "sharp"
    contrast: bool  # intravenous contrast


@dataclass(frozen=True)
class _Body:
    """Per-seed anatomy in mm; z = 0 is the centre of the scanned range."""

    half_width: float
    half_depth: float
    fat: float
    muscle: float
    rib_zone: float
    rib_pitch: float
    rib_height: float
    rib_slope: float
    rib_phase: float
    dome_z: float  # right hemidiaphragm dome; the left one sits lower
    heart_centre: tuple[float, float, float]  # z, y, x
    heart_axes: tuple[float, float, float]
    spine_radius: float
    disc_phase: float
    hu: dict[int, float]
    lung_gradient: float
    contrast: bool

    @property
    def cavity(self) -> tuple[float, float]:
        inset = self.fat + self.muscle + self.rib_zone
        return self.half_width - inset, self.half_depth - inset

    @property
    def spine_y(self) -> float:
        return self.half_depth - self.fat - self.muscle - self.spine_radius - 4.0


def _draw_body(rng: np.random.Generator) -> _Body:
    half_width, half_depth = rng.uniform(120, 158), rng.uniform(90, 118)
    contrast = bool(rng.random() < 0.5)
    hu = {
        AIR: -1000.0, FAT: rng.uniform(-115, -85), MUSCLE: rng.uniform(42, 58), LUNG: rng.uniform(-880, -830),
        LIVER: rng.uniform(52, 66) + (45.0 if contrast else 0.0), HEART_WALL: rng.uniform(40, 55),
        BLOOD: rng.uniform(170, 260) if contrast else rng.uniform(35, 48), CORTEX: rng.uniform(700, 950),
        MARROW: rng.uniform(180, 300), CARTILAGE: rng.uniform(90, 160), DISC: rng.uniform(70, 100),
        CORD: rng.uniform(28, 40), MEDIASTINAL_FAT: rng.uniform(-105, -75),
        ABDOMEN: rng.uniform(30, 45) + (25.0 if contrast else 0.0),
        VESSEL: rng.uniform(150, 230) if contrast else rng.uniform(35, 50),
    }
    return _Body(
        half_width=half_width, half_depth=half_depth, fat=rng.uniform(6, 24), muscle=rng.uniform(7, 13),
        rib_zone=rng.uniform(9, 12), rib_pitch=rng.uniform(21, 28), rib_height=rng.uniform(9, 12),
        rib_slope=rng.uniform(35, 65), rib_phase=rng.uniform(0, 30), dome_z=rng.uniform(-14, 4),
        heart_centre=(rng.uniform(18, 34), rng.uniform(-28, -12), rng.uniform(18, 34)),
        heart_axes=(rng.uniform(42, 52), rng.uniform(42, 52), rng.uniform(52, 64)),
        spine_radius=rng.uniform(14, 18), disc_phase=rng.uniform(0, 27), hu=hu,
        lung_gradient=rng.uniform(30, 90), contrast=contrast,
    )


def _radius(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """Normalised elliptic radius: <= 1 inside the ellipse with semi-axes a (x) and b (y)."""
    return np.asarray(np.sqrt((x / a) ** 2 + (y / b) ** 2))


def _diaphragm_z(body: _Body, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Height of the diaphragm surface: two domes, the right (x < 0) about 12 mm higher."""
    cw, cd = body.cavity
    dome = np.where(x < 0, body.dome_z, body.dome_z - 12.0)
    lateral = (np.abs(x) - 0.45 * cw) / (0.5 * cw)
    return dome - 30.0 * lateral ** 2 - 18.0 * (y / cd) ** 2


def _tissue(body: _Body, z: np.ndarray | float, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Tissue label at physical points (broadcast), painted from the outside in."""
    y, x = np.broadcast_arrays(y, x)
    z = np.broadcast_to(np.asarray(z, dtype=np.float32), y.shape)
    taper = 1.0 + 0.0012 * np.clip(-z, -60, 60)  # the trunk widens a little towards the abdomen
    a, b = body.half_width * taper, body.half_depth * taper
    label = np.full(y.shape, AIR, dtype=np.uint8)
    outer = ((np.abs(x) / a) ** 2.4 + (np.abs(y) / b) ** 2.4) <= 1.0
    label[outer] = FAT
    inset_muscle = body.fat
    r_muscle = _radius(x, y, a - inset_muscle, b - inset_muscle)
    label[r_muscle <= 1.0] = MUSCLE
    inset_ribs = body.fat + body.muscle
    r_ribs_out = _radius(x, y, a - inset_ribs, b - inset_ribs)
    r_cavity = _radius(x, y, a - inset_ribs - body.rib_zone, b - inset_ribs - body.rib_zone)

    # Scapulae: curved plates in the posterior muscle, upper half of the range.
    theta = np.arctan2(y / b, x / a)  # +pi/2 posterior, -pi/2 anterior
    scap_band = (r_muscle <= 0.985) & (r_muscle >= 0.955) & (np.abs(np.abs(theta) - 0.95) < 0.38) & (y > 0)
    label[scap_band & (z > body.dome_z + 25)] = CORTEX

    # Rib cage: oblique bands in the rib zone; ribs descend anteriorly, so an axial slice cuts
    # long arcs posteriorly and short segments anteriorly.
    in_zone = (r_ribs_out <= 1.0) & (r_cavity > 1.0)
    z_eff = z + body.rib_slope * (1.0 - np.sin(theta)) / 2.0
    phase = np.mod(z_eff - body.rib_phase, body.rib_pitch)
    on_rib = in_zone & (phase < body.rib_height)
    edge = np.minimum(phase, body.rib_height - phase)
    anterior = np.sin(theta) < -0.82
    label[on_rib & anterior] = CARTILAGE
    label[on_rib & ~anterior & (edge < 1.6)] = CORTEX
    label[on_rib & ~anterior & (edge >= 1.6)] = MARROW

    # Sternum (anterior midline) replaces cartilage there.
    sy = -(b - inset_ribs - body.rib_zone / 2)
    r_sternum = _radius(x, y - sy, 16.0, 7.0)
    label[r_sternum <= 1.0] = CORTEX
    label[_radius(x, y - sy, 13.5, 4.5) <= 1.0] = MARROW

    cavity = r_cavity <= 1.0
    label[cavity] = MEDIASTINAL_FAT

    # Lungs: the cavity outside the mediastinum, above the diaphragm.
    hz, hy, hx = body.heart_centre
    hc, hb, ha = body.heart_axes
    r_heart = np.sqrt(((z - hz) / hc) ** 2 + ((y - hy) / hb) ** 2 + ((x - hx) / ha) ** 2)
    spine_y, sr = body.spine_y, body.spine_radius
    mediastinum = (np.abs(x - 4.0) < 24.0) | (r_heart <= 1.12) | ((y > spine_y - sr - 8) & (np.abs(x) < sr + 14))
    above = z > _diaphragm_z(body, y, x)
    lung = cavity & ~mediastinum & above
    label[lung] = LUNG
    below = cavity & ~above
    label[below & (x < 25.0)] = LIVER
    label[below & (x >= 25.0)] = ABDOMEN
    stomach_air = _radius(x - 0.45 * a, y + 0.25 * b, 28.0, 18.0) <= 1.0
    label[below & (x >= 25.0) & stomach_air & (z > body.dome_z - 45.0)] = AIR

    # Heart: wall, blood pool, pericardial fat (inside the mediastinum only).
    heart = r_heart <= 1.0
    label[cavity & heart & above] = HEART_WALL
    label[cavity & (r_heart <= 0.72) & above] = BLOOD
    # Great vessels.
    aorta_desc = _radius(x - (sr + 10.0), y - (spine_y - 6.0), 12.0, 12.0) <= 1.0
    label[aorta_desc & (cavity | (r_cavity <= 1.05))] = BLOOD
    aorta_asc = (_radius(x + 4.0, y - (hy - 6.0), 14.0, 14.0) <= 1.0) & (z > hz + hc * 0.55)
    label[aorta_asc & cavity] = BLOOD
    label[(_radius(x - 6.0, y - (spine_y - sr - 11.0), 7.0, 6.0) <= 1.0) & cavity] = MUSCLE  # oesophagus
    label[(_radius(x - 6.0, y - (spine_y - sr - 11.0), 2.5, 2.0) <= 1.0) & cavity] = AIR

    # Spine: vertebral body with cortex and discs, canal, pedicles/lamina, spinous process.
    level = np.mod(z - body.disc_phase, 27.0) < 6.0
    r_body = _radius(x, y - spine_y, sr, sr * 0.9)
    label[(r_body <= 1.0)] = np.where(level[r_body <= 1.0], DISC, CORTEX)
    trabecular = (_radius(x, y - spine_y, sr - 2.0, sr * 0.9 - 2.0) <= 1.0) & ~level
    label[trabecular] = MARROW
    canal_y = spine_y + sr * 0.9 + 9.0
    r_canal = np.hypot(x, y - canal_y)
    label[(r_canal <= 15.0) & (r_canal > 9.0) & (y > spine_y + sr * 0.4)] = CORTEX
    label[r_canal <= 9.0] = CORD
    label[(np.abs(x) < 3.5) & (y > canal_y + 14.0) & (y < canal_y + 38.0)] = CORTEX
    return label


def _vessel_points(body: _Body, rng: np.random.Generator) -> np.ndarray:
    """Curved random-walk vessel trees from each hilum: rows of (z, y, x, radius) in mm."""
    points: list[tuple[float, float, float, float]] = []
    cw, _ = body.cavity
    hz = body.heart_centre[0] + 10.0
    for side in (-1.0, 1.0):
        hilum = np.array([hz + rng.uniform(-8, 8), rng.uniform(-8, 8), side * 34.0])
        # Several trunks fanning up, down, forwards and back, so every slice of the lung has vessels.
        stack = [(hilum, np.array([rng.uniform(-1, 1), rng.uniform(-0.7, 0.7), side]), 5.0, 0)
                 for _ in range(4)]
        while stack:
            start, direction, radius, depth = stack.pop()
            length = rng.uniform(18, 34) * (0.85 ** depth)
            position, d = start.copy(), direction / np.linalg.norm(direction)
            for _ in range(int(length / 1.5)):
                d = d + rng.normal(scale=0.12, size=3)
                d[2] += 0.05 * side  # keep growing laterally, into the lung
                d /= np.linalg.norm(d)
                position = position + 1.5 * d
                points.append((float(position[0]), float(position[1]), float(position[2]), radius))
            if depth < 4 and abs(position[2]) < cw:
                for _ in range(2):
                    child = d + rng.normal(scale=0.7, size=3)
                    stack.append((position, child, max(radius * 0.72, 0.8), depth + 1))
    return np.array(points, dtype=np.float32)


def _place_lesions(body: _Body, grid: EvalGrid, n_lesions: int, seed: int,
                   rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, float, str, str, str, float]]:
    """Lesion centres (mm), semi-axes, rotation; each fully inside its organ, none touching."""
    placed: list[tuple[np.ndarray, np.ndarray, float, str, str, str, float]] = []
    half_extent = grid.z_extent_mm / 2
    fov = grid.size * grid.pixel_spacing_mm / 2
    for j in range(n_lesions):
        diameter = LESION_DIAMETERS_MM[(seed + j) % len(LESION_DIAMETERS_MM)]
        region, kind = LESION_TYPES[(seed * 2 + j) % len(LESION_TYPES)]
        shape = "ellipsoid" if rng.random() < 0.5 else "sphere"
        if shape == "sphere":
            semi = np.full(3, diameter / 2)
        else:
            ratios = rng.uniform(0.75, 1.3, size=3)
            semi = diameter / 2 * ratios / np.cbrt(np.prod(ratios))  # same volume as the sphere
        angle = float(rng.uniform(0, math.pi))
        target = LUNG if region == "lung" else LIVER
        reach = float(semi.max()) + 2.0
        for _ in range(400):
            centre = np.array([rng.uniform(-half_extent + reach, half_extent - reach),
                               rng.uniform(-fov * 0.8, fov * 0.8), rng.uniform(-fov * 0.8, fov * 0.8)])
            offsets = np.array([[0, 0, 0]] + [[s * reach * (k == 0), s * reach * (k == 1), s * reach * (k == 2)]
                                              for k in range(3) for s in (-1, 1)], dtype=np.float64)
            probe = centre + offsets
            if not np.all(_tissue(body, probe[:, 0], probe[:, 1], probe[:, 2]) == target):
                continue
            if any(np.linalg.norm(centre - other[0]) < reach + float(other[1].max()) + 6.0 for other in placed):
                continue
            liver_hu = body.hu[LIVER]
            if region == "lung":
                hu = float(rng.uniform(15, 55))
            elif kind == "hypodense":
                hu = liver_hu - float(rng.uniform(35, 70))
            else:
                hu = liver_hu + float(rng.uniform(40, 80))
            placed.append((centre, semi, angle, region, kind, shape, hu))
            break
        else:
            logger.info("eval seed %d: no room for a %.0f mm %s lesion in the %s", seed, diameter, kind, region)
    return placed


def _kernel_response(grid: EvalGrid, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """(MTF, noise amplitude spectrum) on the rfft2 grid, both as functions of cycles/mm."""
    fy = np.fft.fftfreq(grid.size, d=grid.pixel_spacing_mm)[:, None]
    fx = np.fft.rfftfreq(grid.size, d=grid.pixel_spacing_mm)[None, :]
    f = np.hypot(fy, fx)
    if kernel == "sharp":
        mtf = np.exp(-(f / 0.55) ** 2) * (1.0 + 0.45 * np.exp(-((f - 0.35) / 0.15) ** 2))  # edge overshoot
        nps = f * np.exp(-(f / 0.5) ** 2)
    else:
        mtf = np.exp(-(f / 0.38) ** 2)
        nps = f * np.exp(-(f / 0.28) ** 2)
    return mtf.astype(np.float32), np.sqrt(nps).astype(np.float32)


def make_eval_scan(seed: int, grid: EvalGrid | str = "512@0.7mm/5mm", *, n_lesions: int | None = None) -> EvalScan:
    """A deterministic CT-like scan for ``seed`` on ``grid``; ``n_lesions=0``: lesion-free with bone.

    ``n_lesions=None`` gives 2-4 lesions; sizes and (region, kind) rotate with the seed and the
    lesion's index, so a run of consecutive seeds is balanced across them.
    """
    grid = EVAL_GRIDS[grid] if isinstance(grid, str) else grid
    if grid.size < 64 or grid.n_slices < 1 or grid.pixel_spacing_mm <= 0 or grid.slice_thickness_mm <= 0:
        raise EvalPhantomError(f"unusable grid {grid}")
    if grid.size * grid.pixel_spacing_mm < 300:
        raise EvalPhantomError(f"field of view {grid.size * grid.pixel_spacing_mm:.0f} mm is smaller than a chest (>= 300)")
    if n_lesions is not None and n_lesions < 0:
        raise EvalPhantomError(f"n_lesions must be >= 0, got {n_lesions}")
    rng = np.random.default_rng([seed, 0xE7A1])
    body = _draw_body(rng)
    kernel = "sharp" if rng.random() < 0.35 else "soft"
    noise_sigma = float(rng.uniform(10, 22) * (1.6 if kernel == "sharp" else 1.0)
                        * math.sqrt(2.5 / max(grid.slice_thickness_mm, 0.5)) ** 0.5)
    if n_lesions is None:
        n_lesions = int(rng.integers(2, 5))
    lesions = _place_lesions(body, grid, n_lesions, seed, rng)
    vessels = _vessel_points(body, rng)

    coords = ((np.arange(grid.size) - grid.size / 2 + 0.5) * grid.pixel_spacing_mm).astype(np.float32)
    y, x = coords[:, None], coords[None, :]
    z0 = -grid.z_extent_mm / 2 + grid.slice_thickness_mm / 2  # centre of slice 0
    n_sub = max(1, int(math.ceil(grid.slice_thickness_mm / 2.0)))
    lut = np.zeros(max(body.hu) + 1, dtype=np.float32)
    for tissue, value in body.hu.items():
        lut[tissue] = value
    cw, cd = body.cavity
    lung_gradient = (body.lung_gradient * (y / cd)).astype(np.float32)

    volume = np.empty((grid.n_slices, grid.size, grid.size), dtype=np.float32)
    mask = np.zeros(volume.shape, dtype=bool)
    mtf, noise_shape = _kernel_response(grid, kernel)
    for k in range(grid.n_slices):
        slab = np.zeros((grid.size, grid.size), dtype=np.float32)
        for s in range(n_sub):
            z = z0 + k * grid.slice_thickness_mm + ((s + 0.5) / n_sub - 0.5) * grid.slice_thickness_mm
            label = _tissue(body, z, y, x)
            hu = lut[label]
            is_lung = label == LUNG
            hu += np.where(is_lung, lung_gradient, np.float32(0.0))  # dependent lung is denser
            _draw_vessels(hu, is_lung, vessels, z, coords, grid.pixel_spacing_mm, body.hu[VESSEL])
            for centre, semi, angle, _, _, _, lesion_hu in lesions:
                _draw_lesion(hu, mask[k], centre, semi, angle, lesion_hu, z, coords, grid.pixel_spacing_mm)
            slab += hu
        slab /= n_sub
        white = rng.standard_normal(slab.shape).astype(np.float32)
        spectrum = np.fft.rfft2(slab) * mtf + np.fft.rfft2(white) * noise_shape * _noise_scale(noise_shape, noise_sigma)
        volume[k] = np.fft.irfft2(spectrum, s=slab.shape)

    truth = []
    for centre, semi, _angle, region, kind, shape, lesion_hu in lesions:
        zc = (centre[0] - z0) / grid.slice_thickness_mm
        yc = centre[1] / grid.pixel_spacing_mm + grid.size / 2 - 0.5
        xc = centre[2] / grid.pixel_spacing_mm + grid.size / 2 - 0.5
        diameter = 2.0 * float(np.cbrt(np.prod(semi)))
        truth.append(EvalLesion((float(zc), float(yc), float(xc)), round(diameter, 3), kind, region, shape,
                                (float(semi[0]), float(semi[1]), float(semi[2])), round(lesion_hu, 1)))
    return EvalScan(
        volume_hu=np.clip(np.rint(volume), HU_MIN, HU_MAX).astype(np.int16), lesion_mask=mask, lesions=truth,
        pixel_spacing_mm=grid.pixel_spacing_mm, slice_thickness_mm=grid.slice_thickness_mm, seed=seed,
        grid=grid.name, kernel=kernel, contrast=body.contrast,
    )


def _noise_scale(noise_shape: np.ndarray, sigma: float) -> float:
    """Scale white noise filtered by ``noise_shape`` (rfft2 half-plane) to standard deviation ``sigma``."""
    n = noise_shape.shape[0]
    power = (noise_shape ** 2).sum() * 2 - (noise_shape[:, 0] ** 2).sum()  # both half-planes
    return float(sigma * n / math.sqrt(power / 1.0)) if power > 0 else 0.0


def _window(centre_mm: float, reach_mm: float, coords: np.ndarray, spacing: float) -> slice:
    first = coords[0]
    lo = max(int(math.floor((centre_mm - reach_mm - first) / spacing)), 0)
    hi = min(int(math.ceil((centre_mm + reach_mm - first) / spacing)) + 1, coords.size)
    return slice(lo, max(lo, hi))


def _draw_vessels(hu: np.ndarray, is_lung: np.ndarray, vessels: np.ndarray, z: float, coords: np.ndarray,
                  spacing: float, vessel_hu: float) -> None:
    near = vessels[np.abs(vessels[:, 0] - z) < vessels[:, 3]]
    for vz, vy, vx, radius in near:
        r = math.sqrt(max(float(radius) ** 2 - (float(vz) - z) ** 2, 0.0))
        rows, cols = _window(float(vy), r + spacing, coords, spacing), _window(float(vx), r + spacing, coords, spacing)
        dist = np.hypot(coords[rows, None] - vy, coords[None, cols] - vx)
        occupancy = np.clip(0.5 + (r - dist) / spacing, 0.0, 1.0)
        region = hu[rows, cols]
        inside = is_lung[rows, cols] & (occupancy > 0)
        blended = region + occupancy * (vessel_hu - region)
        region[inside] = np.maximum(region[inside], blended[inside])


def _draw_lesion(hu: np.ndarray, mask: np.ndarray, centre: np.ndarray, semi: np.ndarray, angle: float,
                 lesion_hu: float, z: float, coords: np.ndarray, spacing: float) -> None:
    dz = (z - centre[0]) / semi[0]
    if abs(dz) >= 1.0:
        return
    reach = float(semi[1:].max()) + 2 * spacing
    rows, cols = _window(float(centre[1]), reach, coords, spacing), _window(float(centre[2]), reach, coords, spacing)
    dy = coords[rows, None] - centre[1]
    dx = coords[None, cols] - centre[2]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    d = np.sqrt(dz ** 2 + (u / semi[1]) ** 2 + (v / semi[2]) ** 2)
    scale = float(semi[1:].min())
    occupancy = np.clip(0.5 + (1.0 - d) * scale / spacing, 0.0, 1.0)
    region = hu[rows, cols]
    region += occupancy * (lesion_hu - region)
    mask[rows, cols] |= d <= 1.0
