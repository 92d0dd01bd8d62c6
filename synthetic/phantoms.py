"""Synthetic chest CT phantoms for development, tests and AI training.

No real patient data may enter this project, so every scan the platform sees in development is
made here: a chest-like volume in Hounsfield units (air, fat, muscle, two lungs with branching
vessels, spine and ribs, a liver-like organ under the right lung) plus lesions of many kinds and
sizes, with a ground-truth mask and a list describing each lesion.

Everything is pure numpy and deterministic for a seed, so a seed is a complete description of a
scan (training manifests record seeds rather than data). Geometry is built in millimetres and then
sampled on the requested grid, so the same seed at a finer pixel spacing gives the same anatomy.

Conventions: arrays are (slice, row, column) = (z, y, x). Slice 0 is the most inferior slice
(z grows towards the head, matching ImagePositionPatient in ``synthetic.dicom_factory``); row 0 is
anterior; column 0 is the patient's right (radiological display convention).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 45.0
HU_SOFT_TISSUE = 35.0
HU_LUNG = -850.0
HU_BLOOD = 40.0
HU_LIVER = 60.0
HU_TRABECULAR_BONE = 250.0
HU_CORTICAL_BONE = 850.0
# The DICOM factory stores HU + 1024 as unsigned 12-bit-ish data, so keep to that range.
HU_MIN = -1024
HU_MAX = 3071

LUNG_LESION_KINDS: tuple[str, ...] = ("solid", "ground_glass", "calcified", "cavitated", "lobulated")
SOFT_TISSUE_LESION_KINDS: tuple[str, ...] = ("hypodense", "cystic", "hyperdense", "calcified")

MIN_LESION_DIAMETER_MM = 3.0
MAX_LESION_DIAMETER_MM = 30.0


class PhantomError(ValueError):
    """Raised when phantom parameters cannot produce a valid scan."""


@dataclass(frozen=True)
class PhantomLesion:
    """Ground truth for one lesion.

    ``centre_zyx`` is in voxel coordinates (float, may be sub-voxel); ``diameter_mm`` is the
    diameter of the sphere that bounds the lesion (for lobulated lesions: of the whole cluster).
    ``hu`` is the nominal density before partial volume and noise.
    """

    centre_zyx: tuple[float, float, float]
    diameter_mm: float
    kind: str
    hu: float
    region: str


@dataclass
class Phantom:
    """A synthetic CT volume with its ground truth."""

    volume_hu: np.ndarray  # int16, (S, H, W)
    lesion_mask: np.ndarray  # bool, (S, H, W)
    lesions: list[PhantomLesion]
    pixel_spacing_mm: float
    slice_thickness_mm: float
    seed: int = 0
    body_mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume_hu.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Anatomy:
    """Per-seed body parameters, all in millimetres."""

    body_half_width: float
    body_half_depth: float
    body_exponent: float
    fat_thickness: float
    lung_centre_x: float
    lung_centre_y: float
    lung_half_width: float
    lung_half_depth: float
    liver_dome: float  # fraction of the z range below which the liver replaces the right lung
    spine_radius: float
    noise_sigma: float


def make_ct_phantom(
    seed: int,
    *,
    n_slices: int = 24,
    size: int = 256,
    pixel_spacing_mm: float = 1.5,
    slice_thickness_mm: float = 5.0,
    n_lesions: int | None = None,
) -> Phantom:
    """Build a deterministic synthetic chest CT for ``seed``.

    ``n_lesions=None`` draws 1-6 lesions; ``n_lesions=0`` gives a normal scan (anatomy, vessels and
    noise only). Lesions are 3-30 mm, of the kinds in ``LUNG_LESION_KINDS`` (in the lungs) and
    ``SOFT_TISSUE_LESION_KINDS`` (in the liver).
    """
    if n_slices < 1 or size < 32:
        raise PhantomError(f"phantom too small: n_slices={n_slices}, size={size}")
    if pixel_spacing_mm <= 0 or slice_thickness_mm <= 0:
        raise PhantomError(
            f"spacing must be positive: pixel={pixel_spacing_mm}, slice={slice_thickness_mm}"
        )
    if n_lesions is not None and n_lesions < 0:
        raise PhantomError(f"n_lesions must be >= 0, got {n_lesions}")

    rng = np.random.default_rng(seed)
    anatomy = _draw_anatomy(rng)
    if n_lesions is None:
        n_lesions = int(rng.integers(1, 7))

    grid = _Grid(n_slices, size, pixel_spacing_mm, slice_thickness_mm)
    volume, lung_mask, liver_mask, body_mask = _build_anatomy(grid, anatomy, rng)
    _draw_vessel_trees(volume, lung_mask, grid, anatomy, rng)

    lesion_mask = np.zeros(volume.shape, dtype=bool)
    lesions: list[PhantomLesion] = []
    for _ in range(n_lesions):
        lesion = _place_lesion(volume, lesion_mask, lung_mask, liver_mask, grid, rng)
        if lesion is not None:
            lesions.append(lesion)
    if len(lesions) < n_lesions:
        logger.info("seed %d: placed %d of %d lesions (no room left)", seed, len(lesions), n_lesions)

    volume = _blur_in_plane(volume)
    volume += _correlated_noise(volume.shape, anatomy.noise_sigma, rng)
    volume_hu = np.clip(np.rint(volume), HU_MIN, HU_MAX).astype(np.int16)
    return Phantom(
        volume_hu=volume_hu,
        lesion_mask=lesion_mask,
        lesions=lesions,
        pixel_spacing_mm=pixel_spacing_mm,
        slice_thickness_mm=slice_thickness_mm,
        seed=seed,
        body_mask=body_mask,
    )


@dataclass(frozen=True)
class _Grid:
    n_slices: int
    size: int
    pixel_spacing_mm: float
    slice_thickness_mm: float

    def x_mm(self) -> np.ndarray:
        return ((np.arange(self.size) - self.size / 2 + 0.5) * self.pixel_spacing_mm).astype(np.float32)

    def col_of(self, x_mm: float) -> float:
        return x_mm / self.pixel_spacing_mm + self.size / 2 - 0.5

    def z_fraction(self, z_index: float) -> float:
        return z_index / max(self.n_slices - 1, 1)


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    body_half_width = rng.uniform(130.0, 170.0)
    body_half_depth = rng.uniform(95.0, 125.0)
    return _Anatomy(
        body_half_width=body_half_width,
        body_half_depth=body_half_depth,
        body_exponent=rng.uniform(2.0, 2.8),
        fat_thickness=rng.uniform(6.0, 22.0),
        lung_centre_x=body_half_width * rng.uniform(0.44, 0.52),
        lung_centre_y=-body_half_depth * rng.uniform(0.0, 0.1),
        lung_half_width=body_half_width * rng.uniform(0.27, 0.34),
        lung_half_depth=body_half_depth * rng.uniform(0.6, 0.74),
        liver_dome=rng.uniform(0.2, 0.42),
        spine_radius=rng.uniform(14.0, 19.0),
        noise_sigma=rng.uniform(8.0, 20.0),
    )


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float,
             exponent: float = 2.0) -> np.ndarray:
    """Boolean (super)ellipse on broadcast x/y grids in mm."""
    if a <= 0 or b <= 0:
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    return (np.abs((x - cx) / a) ** exponent + np.abs((y - cy) / b) ** exponent) <= 1.0


def _build_anatomy(
    grid: _Grid, anatomy: _Anatomy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (volume float32 HU, lung mask, liver mask, body mask) without vessels or lesions."""
    shape = (grid.n_slices, grid.size, grid.size)
    volume = np.full(shape, HU_AIR, dtype=np.float32)
    lung_mask = np.zeros(shape, dtype=bool)
    liver_mask = np.zeros(shape, dtype=bool)
    body_mask = np.zeros(shape, dtype=bool)
    x = grid.x_mm()[None, :]
    y = grid.x_mm()[:, None]
    a = anatomy
    rib_phase = rng.uniform(0, 2 * math.pi)
    n_ribs = int(rng.integers(7, 11))
    for z in range(grid.n_slices):
        zf = grid.z_fraction(z)
        taper = 1.0 - 0.12 * zf  # the chest narrows towards the apex
        bw, bd = a.body_half_width * taper, a.body_half_depth * taper
        body = _ellipse(x, y, 0.0, 0.0, bw, bd, a.body_exponent)
        inner = _ellipse(x, y, 0.0, 0.0, bw - a.fat_thickness, bd - a.fat_thickness, a.body_exponent)
        sl = volume[z]
        sl[body] = HU_FAT
        sl[inner] = HU_MUSCLE
        visceral = _ellipse(x, y, 0.0, 0.0, bw - a.fat_thickness - 12, bd - a.fat_thickness - 12,
                            a.body_exponent)
        sl[visceral] = HU_SOFT_TISSUE

        # Ribs: small bony ovals just inside the muscle wall; their angle drifts with z because
        # real ribs run obliquely through axial slices.
        for k in range(n_ribs):
            theta = rib_phase + 0.35 * z + 2 * math.pi * k / n_ribs
            if abs(math.sin(theta) + 1.0) < 0.25:  # no ribs over the anterior midline
                continue
            rx = (bw - a.fat_thickness - 6) * math.cos(theta)
            ry = (bd - a.fat_thickness - 6) * math.sin(theta)
            rib = _ellipse(x, y, rx, ry, 7.0, 4.5)
            sl[rib] = HU_CORTICAL_BONE
            sl[_ellipse(x, y, rx, ry, 4.0, 2.0)] = HU_TRABECULAR_BONE + 100

        # Lungs shrink towards apex and base.
        lung_scale = math.sqrt(max(1.0 - ((zf - 0.45) / 0.8) ** 2, 0.1))
        for side in (-1.0, 1.0):
            scale = lung_scale
            if side < 0:  # patient's right lung sits on the liver dome
                scale *= float(np.clip((zf - a.liver_dome + 0.12) / 0.3, 0.0, 1.0))
            else:
                scale *= float(np.clip((zf + 0.25) / 0.35, 0.0, 1.0))
            lw, ld = a.lung_half_width * scale, a.lung_half_depth * scale
            lung = _ellipse(x, y, side * a.lung_centre_x * taper, a.lung_centre_y, lw, ld, 2.2)
            # The medial border is flattened by the heart/mediastinum.
            lung &= side * x > (a.lung_centre_x * taper - 0.75 * a.lung_half_width)
            sl[lung] = HU_LUNG
            lung_mask[z] |= lung

        # Mediastinum: heart (lower half), trachea (upper part), descending aorta, spine.
        if zf < 0.6:
            heart = _ellipse(x, y, 0.15 * bw, -0.15 * bd, 0.28 * bw, 0.35 * bd)
            sl[heart & ~lung_mask[z]] = HU_BLOOD + 5
        if zf > 0.65:
            sl[_ellipse(x, y, 0.0, -0.25 * bd, 9.0, 9.0)] = HU_AIR
        aorta_y = 0.45 * bd
        sl[_ellipse(x, y, 0.12 * bw, aorta_y, 12.0, 12.0)] = HU_BLOOD
        spine_y = 0.62 * bd
        sr = a.spine_radius
        sl[_ellipse(x, y, 0.0, spine_y, sr, sr * 0.9)] = HU_CORTICAL_BONE
        sl[_ellipse(x, y, 0.0, spine_y, sr - 2.5, sr * 0.9 - 2.5)] = HU_TRABECULAR_BONE
        sl[_ellipse(x, y, 0.0, spine_y + sr + 14, 4.0, 12.0)] = HU_CORTICAL_BONE
        sl[_ellipse(x, y, 0.0, -bd + a.fat_thickness + 8, 12.0, 5.0)] = HU_CORTICAL_BONE - 300

        # Liver under the right lung dome, growing towards the base.
        liver_scale = float(np.clip((a.liver_dome - zf) / 0.25 + 0.35, 0.0, 1.0))
        if liver_scale > 0:
            liver = _ellipse(x, y, -0.3 * bw, 0.0, 0.62 * bw * liver_scale, 0.72 * bd * liver_scale)
            liver &= _ellipse(x, y, 0.0, 0.0, bw - a.fat_thickness - 14, bd - a.fat_thickness - 14,
                              a.body_exponent)
            liver &= ~_ellipse(x, y, 0.0, spine_y, sr + 6, sr + 6)
            sl[liver] = HU_LIVER
            liver_mask[z] = liver
            lung_mask[z] &= ~liver
        body_mask[z] = body
    return volume, lung_mask, liver_mask, body_mask


def _draw_vessel_trees(
    volume: np.ndarray, lung_mask: np.ndarray, grid: _Grid, anatomy: _Anatomy,
    rng: np.random.Generator,
) -> None:
    """Draw a branching pulmonary vessel tree in each lung (only inside lung voxels).

    Vessels are what make lung nodule detection hard: seen end-on they are round bright dots. The
    trees run in 3D so many branches cross slices obliquely, as in real scans.
    """
    segments: list[tuple[np.ndarray, np.ndarray, float]] = []
    z_mid_mm = 0.5 * (grid.n_slices - 1) * grid.slice_thickness_mm
    depth = int(rng.integers(6, 8))
    for side in (-1.0, 1.0):
        hilum = np.array([
            z_mid_mm + rng.uniform(-10, 10),
            anatomy.lung_centre_y + rng.uniform(-10, 10),
            side * (anatomy.lung_centre_x - 0.6 * anatomy.lung_half_width),
        ])
        stack = []
        for trunk in range(4):  # lobar trunks fanning out from the hilum
            direction = np.array([(trunk - 1.5) * 0.6 + rng.uniform(-0.2, 0.2),
                                  rng.uniform(-0.6, 0.6), side * 0.7])
            stack.append((hilum, direction / np.linalg.norm(direction), rng.uniform(3.5, 5.0),
                          rng.uniform(22, 32), 0))
        while stack:
            start, direction, radius, length, level = stack.pop()
            end = start + direction * length
            segments.append((start, end, radius))
            if level + 1 >= depth or radius < 0.6:
                continue
            for _ in range(2):
                child = direction + rng.normal(0.0, 0.55, size=3)
                child /= np.linalg.norm(child)
                stack.append((end, child, radius * rng.uniform(0.7, 0.85),
                              length * rng.uniform(0.7, 0.9), level + 1))

    sp, st = grid.pixel_spacing_mm, grid.slice_thickness_mm
    shape = volume.shape
    for start, end, radius in segments:
        lo = np.minimum(start, end) - radius - sp
        hi = np.maximum(start, end) + radius + sp
        z0, z1 = max(int(math.floor(lo[0] / st)), 0), min(int(math.ceil(hi[0] / st)) + 1, shape[0])
        y0 = max(int(math.floor(grid.col_of(lo[1]))), 0)
        y1 = min(int(math.ceil(grid.col_of(hi[1]))) + 1, shape[1])
        x0 = max(int(math.floor(grid.col_of(lo[2]))), 0)
        x1 = min(int(math.ceil(grid.col_of(hi[2]))) + 1, shape[2])
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        zz = (np.arange(z0, z1, dtype=np.float32) * st)[:, None, None]
        yy = ((np.arange(y0, y1) - shape[1] / 2 + 0.5) * sp).astype(np.float32)[None, :, None]
        xx = ((np.arange(x0, x1) - shape[2] / 2 + 0.5) * sp).astype(np.float32)[None, None, :]
        seg = (end - start).astype(np.float32)
        seg_len2 = float(seg @ seg) or 1.0
        t = ((zz - start[0]) * seg[0] + (yy - start[1]) * seg[1] + (xx - start[2]) * seg[2]) / seg_len2
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt((zz - start[0] - t * seg[0]) ** 2 + (yy - start[1] - t * seg[1]) ** 2
                       + (xx - start[2] - t * seg[2]) ** 2)
        frac = np.clip(0.5 + (radius - dist) / sp, 0.0, 1.0)
        region = volume[z0:z1, y0:y1, x0:x1]
        inside = lung_mask[z0:z1, y0:y1, x0:x1] & (frac > 0)
        blended = HU_LUNG + frac * (HU_BLOOD - HU_LUNG)
        region[inside] = np.maximum(region[inside], blended[inside])


def _lesion_occupancy(kind: str, radius: float, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray,
                      edge: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (occupancy of the whole lesion in [0, 1], occupancy of an air cavity or None)."""
    def ball(cz: float, cy: float, cx: float, r: float, width: float) -> np.ndarray:
        d = np.sqrt((dz - cz) ** 2 + (dy - cy) ** 2 + (dx - cx) ** 2)
        return np.clip(0.5 + (r - d) / width, 0.0, 1.0)

    if kind == "lobulated":
        occ = ball(0, 0, 0, radius * 0.55, edge)
        for _ in range(int(rng.integers(3, 6))):
            direction = rng.normal(size=3)
            direction[0] *= 0.5
            direction /= np.linalg.norm(direction)
            r_lobe = radius * rng.uniform(0.35, 0.5)
            c = direction * (radius - r_lobe) * rng.uniform(0.8, 1.0)
            occ = np.maximum(occ, ball(c[0], c[1], c[2], r_lobe, edge))
        return occ, None
    # Mildly ellipsoidal, randomly rotated in-plane, so that not every lesion is a perfect disc.
    axes = rng.uniform(0.8, 1.0, size=2)
    angle = rng.uniform(0, math.pi)
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    scaled = np.sqrt(dz ** 2 + (u / axes[0]) ** 2 + (v / axes[1]) ** 2)
    width = edge * (3.0 if kind == "ground_glass" else 1.0)
    occ = np.clip(0.5 + (radius - scaled) / width, 0.0, 1.0)
    cavity = None
    if kind == "cavitated":
        r_in = radius * rng.uniform(0.4, 0.6)
        off = rng.uniform(-0.15, 0.15, size=3) * radius
        cavity = ball(0.0, off[1], off[2], r_in, edge)
    return occ, cavity


def _draw_lesion_diameter(kind: str, rng: np.random.Generator) -> float:
    lo, hi = MIN_LESION_DIAMETER_MM, MAX_LESION_DIAMETER_MM
    if kind == "calcified":
        hi = 12.0
    elif kind == "cavitated":
        lo = 12.0
    elif kind in ("lobulated", "hypodense", "hyperdense"):
        lo = 8.0
    elif kind == "cystic":
        lo = 6.0
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _lesion_hu(kind: str, rng: np.random.Generator) -> float:
    return float({
        "solid": rng.uniform(10, 70),
        "lobulated": rng.uniform(20, 60),
        "cavitated": rng.uniform(20, 60),
        "ground_glass": rng.uniform(-650, -450),
        "calcified": rng.uniform(300, 900),
        "hypodense": HU_LIVER - rng.uniform(35, 60),
        "cystic": rng.uniform(-5, 12),
        "hyperdense": HU_LIVER + rng.uniform(50, 100),
    }[kind])


def _place_lesion(
    volume: np.ndarray, lesion_mask: np.ndarray, lung_mask: np.ndarray, liver_mask: np.ndarray,
    grid: _Grid, rng: np.random.Generator,
) -> PhantomLesion | None:
    """Draw one lesion into ``volume``/``lesion_mask``; None when no site fits after retries."""
    in_lung = rng.random() < 0.7 or not liver_mask.any()
    region_mask = lung_mask if in_lung else liver_mask
    kinds = LUNG_LESION_KINDS if in_lung else SOFT_TISSUE_LESION_KINDS
    kind = kinds[int(rng.integers(len(kinds)))]
    diameter = _draw_lesion_diameter(kind, rng)
    radius = diameter / 2.0
    hu = _lesion_hu(kind, rng)
    sp, st = grid.pixel_spacing_mm, grid.slice_thickness_mm
    candidates = np.flatnonzero(region_mask)
    if candidates.size == 0:
        return None
    r_px = radius / sp
    margin = max(int(math.ceil(r_px)), 1)
    for _ in range(30):
        z, y, x = np.unravel_index(int(candidates[int(rng.integers(candidates.size))]), region_mask.shape)
        # The lesion must sit inside its organ (check the 4 in-plane extremes) and must not touch
        # another lesion, so that every lesion stays a separate component in the ground truth.
        probes = [(y - margin, x), (y + margin, x), (y, x - margin), (y, x + margin)]
        if not all(0 <= py < grid.size and 0 <= px < grid.size and region_mask[z, py, px]
                   for py, px in probes):
            continue
        rz = int(math.ceil(radius / st)) + 1
        zs, ze = max(z - rz, 0), min(z + rz + 1, grid.n_slices)
        ys, ye = max(y - margin - 2, 0), min(y + margin + 3, grid.size)
        xs, xe = max(x - margin - 2, 0), min(x + margin + 3, grid.size)
        if lesion_mask[zs:ze, ys:ye, xs:xe].any():
            continue
        # Keep the centre near a slice centre so that even a 3 mm lesion shows in its slice.
        cz = z + rng.uniform(-1, 1) * min(0.3 * radius / st, 0.25)
        cy, cx = y + rng.uniform(-0.5, 0.5), x + rng.uniform(-0.5, 0.5)
        # Three samples across the slice thickness model partial volume averaging.
        sub = np.array([-1 / 3, 0.0, 1 / 3], dtype=np.float32)
        dz = ((np.arange(zs, ze, dtype=np.float32)[:, None] + sub[None, :] - cz) * st)[:, :, None, None]
        dy = ((np.arange(ys, ye, dtype=np.float32) - cy) * sp)[None, None, :, None]
        dx = ((np.arange(xs, xe, dtype=np.float32) - cx) * sp)[None, None, None, :]
        occ, cavity = _lesion_occupancy(kind, radius, dz, dy, dx, sp, rng)
        region = volume[zs:ze, ys:ye, xs:xe]
        background = region.copy()
        occ_mean = occ.mean(axis=1)
        value = np.full(occ.shape, hu, dtype=np.float32)
        if cavity is not None:
            value = value * (1 - cavity) + HU_AIR * cavity
        if kind == "ground_glass" and rng.random() < 0.35:  # part-solid nodule
            core = np.clip(0.5 + (radius * 0.35 - np.sqrt(dz ** 2 + dy ** 2 + dx ** 2)) / sp, 0, 1)
            value = value * (1 - core) + 30.0 * core
        value_mean = (value * occ).sum(axis=1) / np.maximum(occ.sum(axis=1), 1e-6)
        region[...] = background * (1 - occ_mean) + value_mean * occ_mean
        # Ground truth: the lesion as cut by the slice's central plane.
        truth = occ[:, 1] >= 0.5
        zc, yc, xc = int(round(cz)), int(round(cy)), int(round(cx))
        truth[min(max(zc - zs, 0), ze - zs - 1), yc - ys, xc - xs] = True
        lesion_mask[zs:ze, ys:ye, xs:xe] |= truth
        return PhantomLesion(
            centre_zyx=(float(cz), float(cy), float(cx)),
            diameter_mm=round(diameter, 2),
            kind=kind,
            hu=round(hu, 1),
            region="lung" if in_lung else "soft_tissue",
        )
    return None


def _blur_in_plane(volume: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur: a scanner's point spread function softens every edge."""
    out = volume.copy()
    out[:, 1:-1, :] = 0.25 * volume[:, :-2, :] + 0.5 * volume[:, 1:-1, :] + 0.25 * volume[:, 2:, :]
    tmp = out.copy()
    out[:, :, 1:-1] = 0.25 * tmp[:, :, :-2] + 0.5 * tmp[:, :, 1:-1] + 0.25 * tmp[:, :, 2:]
    return out


def _correlated_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a little in-plane correlation, scaled to standard deviation ``sigma``.

    CT noise is not white (reconstruction kernels correlate neighbouring pixels); a 2x2 box filter
    gives a plausible grain without an FFT.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    grain = white.copy()
    grain[:, 1:, :] += white[:, :-1, :]
    grain[:, :, 1:] += grain[:, :, :-1].copy()
    # Summing 4 unit-variance samples gives variance 4 in the interior.
    return grain * (sigma / 2.0)
