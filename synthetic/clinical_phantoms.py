"""Training phantoms for the CT lesion detector on clinical grids (512 x 512, 0.5-1 mm, thin slices).

``synthetic.phantoms.make_ct_phantom`` only makes 256 x 256 at 1.5 mm without real ribs, so a
detector trained on it meets clinical scans with bone it has never seen. This module draws a chest
from a physical model in millimetres and samples it on any grid:

- Body: a superellipse (half-width 140-190 mm, half-depth 100-135 mm) with subcutaneous fat, a
  muscle wall (thicker at the back) and a thoracic cavity.
- Lungs fill the cavity above a domed diaphragm, lateral to the mediastinum. Branching vessel trees
  (tapering tubes 8 mm down to 1 mm, running mostly cranio-caudally and obliquely, so they are dots
  and short streaks in axial slices) grow from each hilum; bronchi are air tubes with soft walls.
- Below the dome: liver on the right, spleen and stomach (fluid and gas) on the left.
- Mediastinum: heart (myocardium and blood pool, in pericardial fat), ascending and descending
  aorta with the arch when it falls in the window, pulmonary trunk and arteries, trachea.
- Bone: vertebral bodies (cortical shell, trabecular interior) with discs every ~25 mm, pedicles,
  lamina, spinous and transverse processes around the spinal canal; 10-12 rib pairs as curved
  tubes (cortex and marrow) that follow the chest wall and slope caudally from back to front, ending
  in costal cartilage; sternum; scapulae behind the ribs; clavicles in the top slices.
- Lesions in lung (solid, ground glass, part solid, calcified, cavitated, lobulated, spiculated;
  some juxtapleural, some juxtavascular) and liver (hypodense, cystic, hyperdense), 3-30 mm with
  about half 4-10 mm. They are placed on a fixed 2 mm grid, independent of the output grid, so the
  same seed has the same lesions at any spacing and thickness, and never overlap bone, heart or
  each other.

Acquisition: every slice is the mean of sub-slices at <= 0.625 mm across its thickness (partial
volume: 5 mm slices are thick and soft, 0.625 mm sharp); optional breathing motion moves the
diaphragm between sub-slices; an in-plane Gaussian PSF (soft kernel sigma 0.8-1.1 mm, sharp
0.4-0.6 mm); correlated noise (soft 8-20 HU, sharp 25-60 HU at 2.5 mm, finer grain, times
sqrt(2.5 / thickness) capped at 2); -1024 outside the round reconstruction field.

Independence rule: the evaluation generator ``synthetic/eval_phantoms.py`` was neither read,
imported nor copied when this module was written, so that evaluation cannot flatter training. Keep
it that way when changing either module.

Conventions as in ``synthetic.phantoms``: arrays are (z, y, x); slice 0 is the most inferior; row 0
is anterior; column 0 is the patient's right (so x < 0 mm is the patient's right).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from synthetic.phantoms import HU_MAX, HU_MIN, Phantom, PhantomError, PhantomLesion

logger = logging.getLogger(__name__)

CLINICAL_LUNG_LESION_KINDS: tuple[str, ...] = (
    "solid", "ground_glass", "part_solid", "calcified", "cavitated", "lobulated", "spiculated",
)
CLINICAL_LIVER_LESION_KINDS: tuple[str, ...] = ("hypodense", "cystic", "hyperdense")
KERNELS: tuple[str, ...] = ("soft", "sharp")

# Tissue labels of the model; a per-scan table turns them into HU.
_AIR, _FAT, _MUSCLE, _SOFT, _LUNG, _VESSEL, _AIRWAY, _AIRWAY_WALL = 0, 1, 2, 3, 4, 5, 6, 7
_MYOCARDIUM, _BLOOD, _LIVER, _SPLEEN, _STOMACH, _GAS, _CORTEX, _MARROW = 8, 9, 10, 11, 12, 13, 14, 15
_DISC, _CARTILAGE, _CANAL = 16, 17, 18
_N_LABELS = 19
_BONE_LABELS = (_CORTEX, _MARROW)
_LESION_FORBIDDEN = (_CORTEX, _MARROW, _DISC, _CARTILAGE, _CANAL, _MYOCARDIUM, _BLOOD)
_LUNG_LABELS = (_LUNG, _VESSEL)

_SUB_SLICE_MM = 0.625
_PLACEMENT_STEP_MM = 2.0
_REFERENCE_THICKNESS_MM = 2.5


def _lut(labels: tuple[int, ...]) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(labels)] = True
    return table


_FORBIDDEN_LUT = _lut(_LESION_FORBIDDEN)
_BONE_LUT = _lut(_BONE_LABELS)
_LUNG_LUT = _lut(_LUNG_LABELS)


@dataclass(frozen=True)
class _Grid:
    """Sample positions in mm along z, y, x; ``breath`` shifts the diaphragm per z sample."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    breath: np.ndarray

    def span(self, axis: int, lo: float, hi: float) -> slice:
        coords = (self.z, self.y, self.x)[axis]
        return slice(int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right")))


@dataclass(frozen=True)
class _Tube:
    a: tuple[float, float, float]  # (z, y, x) mm
    b: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class _Anatomy:
    """Everything about one body, in mm; drawn from the seed alone, never from the grid."""

    z_extent: float
    body_a: float
    body_b: float
    body_p: float
    fat: float
    muscle_side: float
    muscle_front: float
    muscle_back: float
    cav_a: float
    cav_b: float
    cav_yc: float
    taper: float
    dome_r: tuple[float, float, float, float]  # z peak, x, y, depth
    dome_l: tuple[float, float, float, float]
    heart: tuple[float, float, float, float, float, float, float]  # z, y, x, ra, rb, rc, angle
    spine_y: float
    spine_r: float
    disc_period: float
    disc_phase: float
    disc_thickness: float
    ribs: tuple[tuple[_Tube, bool], ...]  # (segment, is_cartilage)
    clavicles: tuple[_Tube, ...]
    vessels: tuple[tuple[_Tube, int], ...]  # (segment, tree level)
    great_vessels: tuple[_Tube, ...]
    airways: tuple[tuple[_Tube, float], ...]  # (outer tube, lumen radius)
    scapula_z: float


def _cavity_point(an: _Anatomy, side: float, phi: float, z: float, out_mm: float) -> tuple[float, float]:
    """(y, x) of the cavity outline at angle ``phi`` from the posterior midline, pushed out by ``out_mm``."""
    s = 1.0 - an.taper * z / an.z_extent
    sp, cp = math.sin(phi), math.cos(phi)
    x = an.cav_a * s * abs(sp) ** (2 / an.body_p)
    y = an.cav_b * s * math.copysign(abs(cp) ** (2 / an.body_p), cp)
    norm = math.hypot(x, y) or 1.0
    scale = 1.0 + out_mm / norm
    return an.cav_yc + y * scale, side * x * scale


def _draw_anatomy(rng: np.random.Generator, vessel_rng: np.random.Generator, z_extent: float) -> _Anatomy:
    body_a, body_b = rng.uniform(140, 190), rng.uniform(100, 135)
    body_p = rng.uniform(2.2, 2.8)
    fat = rng.uniform(6, 25)
    muscle_side, muscle_front, muscle_back = rng.uniform(8, 14), rng.uniform(10, 16), rng.uniform(32, 42)
    cav_a = body_a - fat - muscle_side
    cav_b = body_b - fat - 0.5 * (muscle_front + muscle_back)
    cav_yc = 0.5 * (muscle_front - muscle_back)
    taper = rng.uniform(0.0, 0.08) * z_extent / 100.0
    z_r = rng.uniform(15, 38)
    z_l = z_r - rng.uniform(5, 15)
    dome_r = (z_r, -0.45 * cav_a, cav_yc - 0.1 * cav_b, rng.uniform(30, 45))
    dome_l = (z_l, 0.45 * cav_a, cav_yc - 0.1 * cav_b, rng.uniform(30, 45))
    hz = z_l + rng.uniform(30, 45)
    heart = (hz, cav_yc - 0.35 * cav_b, rng.uniform(10, 25), rng.uniform(50, 62), rng.uniform(40, 50),
             rng.uniform(50, 60), math.radians(rng.uniform(20, 40)))
    spine_r = rng.uniform(15, 19)
    spine_y = cav_yc + cav_b - 0.4 * spine_r
    disc_period = rng.uniform(23, 28)
    an = _Anatomy(z_extent, body_a, body_b, body_p, fat, muscle_side, muscle_front, muscle_back, cav_a, cav_b,
                  cav_yc, taper, dome_r, dome_l, heart, spine_y, spine_r, disc_period, rng.uniform(0, disc_period),
                  rng.uniform(5, 7), (), (), (), (), (), z_extent * rng.uniform(0.25, 0.45))

    # Ribs: posterior ends one per vertebra; each runs round the wall and drops caudally to the front.
    ribs: list[tuple[_Tube, bool]] = []
    n_ribs = int(rng.integers(10, 13))
    rib_r = rng.uniform(4.0, 7.0)
    drop = rng.uniform(55, 95)
    z_base = -rng.uniform(5, 30)
    phi0, phi_cc, phi_end = 0.22, rng.uniform(2.2, 2.4), 2.85
    n_seg = 14
    for k in range(n_ribs):
        z_post = z_base + k * disc_period
        if z_post - drop - rib_r > z_extent + 5 or z_post + rib_r < -5:
            continue
        for side in (-1.0, 1.0):
            pts = []
            for i in range(n_seg + 1):
                phi = phi0 + (phi_end - phi0) * i / n_seg
                z = z_post - drop * (phi - phi0) / (phi_end - phi0)
                y, x = _cavity_point(an, side, phi, z, rib_r + 1.5)
                pts.append(((z, y, x), phi))
            for (p, phi), (q, _) in zip(pts[:-1], pts[1:], strict=True):
                ribs.append((_Tube(p, q, rib_r * (0.85 if phi > phi_cc else 1.0)), phi > phi_cc))

    clavicles: list[_Tube] = []
    zc = z_extent - rng.uniform(4, 10)
    for side in (-1.0, 1.0):
        arc = [(zc + 12 * i / 5, *_cavity_point(an, side, 2.85 - 0.9 * i / 5, z_extent, 14.0)) for i in range(6)]
        clavicles += [_Tube(p, q, 6.5) for p, q in zip(arc[:-1], arc[1:], strict=True)]

    # Great vessels and airways.
    r_asc, r_desc = rng.uniform(13, 17), rng.uniform(12, 14)
    asc = (cav_yc - 0.2 * cav_b, -rng.uniform(12, 22))
    desc = (spine_y - 0.6 * spine_r, spine_r + r_desc - 3)
    z_arch = z_extent + rng.uniform(-25, 15)
    hila = [(z_extent * rng.uniform(0.55, 0.75), cav_yc + rng.uniform(-10, 5), side * rng.uniform(50, 62))
            for side in (-1, 1)]
    great = [
        _Tube((hz, *asc), (z_arch, *asc), r_asc),
        _Tube((-20, *desc), (z_arch, *desc), r_desc),
        _Tube((z_arch, *asc), (z_arch + 15, 0.5 * (asc[0] + desc[0]), 0.5 * (asc[1] + desc[1])), r_asc),
        _Tube((z_arch + 15, 0.5 * (asc[0] + desc[0]), 0.5 * (asc[1] + desc[1])), (z_arch, *desc), r_desc),
    ]
    bif = (hz + 30, cav_yc - 0.15 * cav_b, 8.0)
    great.append(_Tube((hz + 5, cav_yc - 0.4 * cav_b, 18.0), bif, rng.uniform(12, 15)))
    great += [_Tube(bif, h, rng.uniform(9, 11)) for h in hila]
    carina = (hila[0][0] + rng.uniform(12, 20), spine_y - spine_r - 14, 0.0)
    airways: list[tuple[_Tube, float]] = [(_Tube(carina, (z_extent + 30, carina[1], 0.0), 10.0), 8.0)]
    for h in hila:
        airways.append((_Tube(carina, (h[0] - 3, h[1] + 10, h[2] * 0.9), 7.0), 5.5))

    vessels: list[tuple[_Tube, int]] = []
    roots = [(h, 1.0) for h in hila] + [((h[0] - rng.uniform(20, 35), h[1] + 8, h[2] * 1.05), 0.8) for h in hila]
    for h, size in roots:
        side = math.copysign(1.0, h[2])
        trunks = [(1.0, 0.2, 0.5), (-1.0, 0.1, 0.45), (0.35, -0.8, 0.8), (-0.3, 0.8, 0.7), (-0.8, 0.6, 0.4)]
        stack = []
        for dz, dy, dx in trunks:
            d = np.array([dz, dy, side * dx]) + vessel_rng.normal(0, 0.15, 3)
            stack.append((np.array(h), d / np.linalg.norm(d), size * vessel_rng.uniform(3.4, 4.0),
                          vessel_rng.uniform(25, 35), 0))
        while stack:
            start, direction, radius, length, level = stack.pop()
            end = start + direction * length
            vessels.append((_Tube(tuple(start), tuple(end), radius), level))
            outside = (abs(end[2]) / cav_a) ** body_p + (abs(end[1] - cav_yc) / cav_b) ** body_p > 1.1
            if radius * 0.74 < 0.5 or outside or not -40 < end[0] < z_extent + 40:
                continue
            for _ in range(3 if vessel_rng.random() < 0.3 else 2):
                child = direction + vessel_rng.normal(0, 0.45, 3)
                child[0] += 0.35 * math.copysign(1.0, direction[0])  # mostly cranio-caudal
                child /= np.linalg.norm(child)
                stack.append((end, child, radius * vessel_rng.uniform(0.68, 0.8),
                              length * vessel_rng.uniform(0.7, 0.85), level + 1))
            if level <= 1:  # a bronchus runs beside the larger arteries
                perp = np.cross(direction, [0.0, 0.0, 1.0])
                perp = perp / (np.linalg.norm(perp) or 1.0) * (radius * 1.9 + 1.0)
                airways.append((_Tube(tuple(start + perp), tuple(end + perp), radius * 0.9), radius * 0.6))

    return dataclasses.replace(an, ribs=tuple(ribs), clavicles=tuple(clavicles), vessels=tuple(vessels),
                               great_vessels=tuple(great), airways=tuple(airways))


def _paint_tube(labels: np.ndarray, g: _Grid, tube: _Tube, label: int, *, inner_radius: float = 0.0,
                inner_label: int = 0, allowed: np.ndarray | None = None, protect: np.ndarray | None = None) -> None:
    """Paint a capsule (and its inner lumen) inside its bounding box only."""
    a, b, r = np.asarray(tube.a, np.float32), np.asarray(tube.b, np.float32), tube.radius
    lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
    zs, ys, xs = g.span(0, lo[0], hi[0]), g.span(1, lo[1], hi[1]), g.span(2, lo[2], hi[2])
    if zs.start >= zs.stop or ys.start >= ys.stop or xs.start >= xs.stop:
        return
    zz = (g.z[zs] - a[0])[:, None, None]
    yy = (g.y[ys] - a[1])[None, :, None]
    xx = (g.x[xs] - a[2])[None, None, :]
    seg = b - a
    t = np.clip((zz * seg[0] + yy * seg[1] + xx * seg[2]) / max(float(seg @ seg), 1e-6), 0.0, 1.0)
    d2 = (zz - t * seg[0]) ** 2 + (yy - t * seg[1]) ** 2 + (xx - t * seg[2]) ** 2
    region = labels[zs, ys, xs]
    ok = allowed[region] if allowed is not None else np.ones(region.shape, bool)
    if protect is not None:
        # Our own lumen stays writable so that overlapping segments of one tube join cleanly.
        ok_inner = ok & (~protect[region] | (region == inner_label))
        ok &= ~protect[region]
    else:
        ok_inner = ok
    region[(d2 <= r * r) & ok] = label
    if inner_radius > 0:
        region[(d2 <= inner_radius**2) & ok_inner] = inner_label


def _paint_prism(labels: np.ndarray, mask2d: np.ndarray, zsel: np.ndarray, label: int,
                 protect: np.ndarray | None = None) -> None:
    """Paint a 2D shape on the z samples where ``zsel`` holds, inside the shape's bounding box."""
    rows, cols = np.flatnonzero(mask2d.any(1)), np.flatnonzero(mask2d.any(0))
    zi = np.flatnonzero(zsel)
    if rows.size == 0 or zi.size == 0:
        return
    zs, ys, xs = slice(zi[0], zi[-1] + 1), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    region = labels[zs, ys, xs]
    m = zsel[zs, None, None] & mask2d[None, ys, xs]
    if protect is not None:
        m &= ~protect[region]
    region[m] = label


def _render_labels(an: _Anatomy, g: _Grid) -> np.ndarray:
    """Tissue labels of the model sampled on ``g`` (uint8, (nz, ny, nx))."""
    z = g.z.astype(np.float32)
    Y, X = g.y.astype(np.float32)[:, None], g.x.astype(np.float32)[None, :]
    p = an.body_p
    s = (1.0 - an.taper * z / an.z_extent)
    thr = (s**p)[:, None, None]
    labels = np.zeros((z.size, Y.size, X.size), np.uint8)

    def superellipse(a: float, b: float, yc: float = 0.0) -> np.ndarray:
        field: np.ndarray = np.abs(X / a) ** p + np.abs((Y - yc) / b) ** p  # homogeneous of degree p
        return field

    f_body = superellipse(an.body_a, an.body_b)
    f_muscle = superellipse(an.body_a - an.fat, an.body_b - an.fat)
    f_cav = superellipse(an.cav_a, an.cav_b, an.cav_yc)
    labels[f_body[None] <= thr] = _FAT
    labels[f_muscle[None] <= thr] = _MUSCLE
    rows, cols = np.flatnonzero((f_cav <= 1.0).any(1)), np.flatnonzero((f_cav <= 1.0).any(0))
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    lab = labels[:, ys, xs]
    Yc, Xc = Y[ys], X[:, xs]
    cavity = f_cav[None, ys, xs] <= thr
    lab[cavity] = _SOFT

    def dome(d: tuple[float, float, float, float]) -> np.ndarray:
        zp, xp, yp, depth = d
        return zp - depth * (((Xc - xp) / (0.55 * an.cav_a)) ** 2 + ((Yc - yp) / (0.8 * an.cav_b)) ** 2)

    height = (z + g.breath)[:, None, None] - np.maximum(dome(an.dome_r), dome(an.dome_l))[None]
    w_med = 10.0 + 12.0 * np.clip((Yc - an.cav_yc + 0.5 * an.cav_b) / (0.5 * an.cav_b), 0, 1)
    lab[cavity & (height > 0) & (np.abs(Xc) > w_med)[None]] = _LUNG
    below = cavity & (height <= 0)
    lab[below & (height > -4)] = _MUSCLE  # diaphragm
    abdomen = below & (height <= -4)
    liver = Xc < 20.0 - 0.3 * (Yc - an.cav_yc)
    spleen = ((Xc - 0.6 * an.cav_a) / 30) ** 2 + ((Yc - an.cav_yc - 0.45 * an.cav_b) / 45) ** 2 <= 1
    stomach = ((Xc - 0.35 * an.cav_a) / 45) ** 2 + ((Yc - an.cav_yc + 0.25 * an.cav_b) / 40) ** 2 <= 1
    lab[abdomen & liver[None]] = _LIVER
    lab[abdomen & (spleen & ~liver)[None]] = _SPLEEN
    lab[abdomen & (stomach & ~liver & ~spleen)[None]] = _STOMACH
    gas = stomach & ~liver & ~spleen & (Yc < an.cav_yc - 0.25 * an.cav_b - 15)
    lab[abdomen & gas[None]] = _GAS
    del height, below, abdomen, cavity

    # Heart: an ellipsoid in pericardial fat, sitting on the diaphragm.
    hz, hy, hx, ra, rb, rc, ang = an.heart
    u = (Xc - hx) * math.cos(ang) + (Yc - hy) * math.sin(ang)
    v = -(Xc - hx) * math.sin(ang) + (Yc - hy) * math.cos(ang)
    q = (u / ra) ** 2 + (v / rb) ** 2
    q_in = (u / (ra - 10)) ** 2 + (v / (rb - 10)) ** 2
    zq = ((z - hz) / rc) ** 2
    h_full = np.maximum(dome(an.dome_r), dome(an.dome_l))
    for scale, label, qq in ((1.12, _FAT, q), (1.0, _MYOCARDIUM, q), (1.0, _BLOOD, q_in)):
        zr = zq * (rc / (rc - 10)) ** 2 if label == _BLOOD else zq / scale**2
        m = (qq[None] / scale**2 + zr[:, None, None] <= 1.0) & ((z + g.breath)[:, None, None] > h_full[None] - 2)
        if label != _FAT:
            lab[m] = label
        else:
            lab[m & (lab != _AIR)] = _FAT

    # Mediastinal vessels and airways (the pulmonary trees only inside the lungs).
    for tube in an.great_vessels:
        _paint_tube(labels, g, tube, _BLOOD, protect=_BONE_LUT)
    for tube, lumen in an.airways[:3]:
        _paint_tube(labels, g, tube, _AIRWAY_WALL, inner_radius=lumen, inner_label=_AIRWAY,
                    protect=_lut((_AIRWAY, _CORTEX, _MARROW, _BLOOD, _MYOCARDIUM)))
    lung_lut = _lut((_LUNG, _VESSEL, _AIRWAY_WALL))
    for tube, _level in an.vessels:
        _paint_tube(labels, g, tube, _VESSEL, allowed=lung_lut)
    for tube, lumen in an.airways[3:]:
        _paint_tube(labels, g, tube, _AIRWAY_WALL, inner_radius=lumen, inner_label=_AIRWAY,
                    allowed=_lut((_LUNG, _VESSEL, _AIRWAY_WALL, _AIRWAY)), protect=_lut((_AIRWAY,)))

    # Spine: vertebral bodies with discs, posterior elements round the canal.
    phase = np.mod(z - an.disc_phase, an.disc_period)
    disc = phase < an.disc_thickness
    endplate = (phase < an.disc_thickness + 0.7) | (phase > an.disc_period - 0.7)
    sr, sy = an.spine_r, an.spine_y
    body_outer = (X / (1.1 * sr)) ** 2 + ((Y - sy) / sr) ** 2 <= 1
    body_inner = (X / (1.1 * sr - 2)) ** 2 + ((Y - sy) / (sr - 2)) ** 2 <= 1
    _paint_prism(labels, body_outer, ~disc, _CORTEX)
    _paint_prism(labels, body_inner, ~endplate, _MARROW)
    _paint_prism(labels, body_outer, disc, _DISC)
    canal_y = sy + sr + 7
    rr2 = X**2 + (Y - canal_y) ** 2
    posterior = (phase > an.disc_thickness) & (phase < an.disc_period * 0.9)
    spinous = (X / 4.5) ** 2 + ((Y - canal_y - 24) / 17) ** 2 <= 1
    transverse = ((np.abs(X) - 24) / 15) ** 2 + ((Y - canal_y + 2) / 5.5) ** 2 <= 1
    _paint_prism(labels, (rr2 <= 14.5**2) | spinous | transverse, posterior, _CORTEX)
    inner_post = ((X / 2.5) ** 2 + ((Y - canal_y - 24) / 15) ** 2 <= 1) | (rr2 <= 12.5**2)
    inner_post |= ((np.abs(X) - 24) / 13) ** 2 + ((Y - canal_y + 2) / 3.5) ** 2 <= 1
    _paint_prism(labels, inner_post, posterior, _MARROW)
    _paint_prism(labels, rr2 <= 7.5**2, np.ones(z.size, bool), _CANAL)

    # Ribs (cortex never overwrites marrow, so joints between segments stay clean), cartilage.
    no_marrow = _lut((_MARROW,))
    for tube, cartilage in an.ribs:
        if cartilage:
            _paint_tube(labels, g, tube, _CARTILAGE, protect=_BONE_LUT)
        else:
            _paint_tube(labels, g, tube, _CORTEX, inner_radius=tube.radius - 1.6, inner_label=_MARROW,
                        protect=no_marrow)
    for tube in an.clavicles:
        _paint_tube(labels, g, tube, _CORTEX, inner_radius=tube.radius - 1.8, inner_label=_MARROW, protect=no_marrow)

    # Sternum (anterior midline) and scapulae (thin plates behind the ribs, upper part of the window).
    st_y = an.cav_yc - an.cav_b - 7
    sternum = (X / 15) ** 2 + ((Y - st_y) / 6.5) ** 2 <= 1
    _paint_prism(labels, sternum, z > an.dome_l[0] - 15, _CORTEX)
    _paint_prism(labels, (X / 13) ** 2 + ((Y - st_y) / 4.5) ** 2 <= 1, z > an.dome_l[0] - 15, _MARROW)
    f_cav_full = superellipse(an.cav_a, an.cav_b, an.cav_yc)
    rho = f_cav_full ** (1 / p)
    theta = np.arctan2(np.abs(X), Y - an.cav_yc)
    outside_mm = (rho - 1.0) * np.sqrt(X**2 + (Y - an.cav_yc) ** 2) / np.maximum(rho, 1e-3)
    band = (outside_mm >= 17.0) & (outside_mm <= 21.0) & (theta > 0.5) & (theta < 1.05)
    _paint_prism(labels, band & (f_body <= 1.0), z > an.scapula_z, _CORTEX, protect=_BONE_LUT)
    return labels


def _hu_table(rng: np.random.Generator, contrast: bool) -> np.ndarray:
    table = np.zeros(_N_LABELS, np.float32)
    blood = rng.uniform(180, 300) if contrast else rng.uniform(35, 45)
    table[_AIR] = -1000
    table[_FAT] = rng.uniform(-115, -90)
    table[_MUSCLE] = rng.uniform(40, 55)
    table[_SOFT] = rng.uniform(25, 40)
    table[_LUNG] = rng.uniform(-910, -830)
    table[_VESSEL] = 0.8 * blood if contrast else blood
    table[_AIRWAY] = -995
    table[_AIRWAY_WALL] = rng.uniform(30, 50)
    table[_MYOCARDIUM] = rng.uniform(100, 130) if contrast else rng.uniform(40, 50)
    table[_BLOOD] = blood
    table[_LIVER] = rng.uniform(90, 120) if contrast else rng.uniform(55, 65)
    table[_SPLEEN] = rng.uniform(110, 140) if contrast else rng.uniform(40, 50)
    table[_STOMACH] = rng.uniform(5, 20)
    table[_GAS] = -990
    table[_CORTEX] = rng.uniform(900, 1300)
    table[_MARROW] = rng.uniform(150, 300)
    table[_DISC] = rng.uniform(70, 95)
    table[_CARTILAGE] = rng.uniform(100, 140)
    table[_CANAL] = rng.uniform(10, 30)
    return table


@dataclass(frozen=True)
class _LesionPlan:
    centre_mm: tuple[float, float, float]
    radius: float
    kind: str
    hu: float
    region: str
    shape_seed: int


def _lesion_diameter(kind: str, rng: np.random.Generator) -> float:
    lo = {"cavitated": 10.0, "lobulated": 8.0, "spiculated": 8.0, "part_solid": 8.0}.get(kind, 3.0)
    hi = 12.0 if kind == "calcified" else 30.0
    u = rng.random()
    d = rng.uniform(4, 10) if u < 0.5 else (rng.uniform(3, 4) if u < 0.6 else math.exp(rng.uniform(math.log(10), math.log(30))))
    return float(np.clip(d, lo, hi))


def _lesion_hu(kind: str, liver_hu: float, rng: np.random.Generator) -> float:
    return float({
        "solid": lambda: rng.uniform(0, 60), "lobulated": lambda: rng.uniform(10, 60),
        "spiculated": lambda: rng.uniform(10, 60), "cavitated": lambda: rng.uniform(10, 60),
        "ground_glass": lambda: rng.uniform(-650, -500), "part_solid": lambda: rng.uniform(-650, -500),
        "calcified": lambda: rng.uniform(250, 900), "hypodense": lambda: liver_hu - rng.uniform(20, 50),
        "cystic": lambda: rng.uniform(0, 15), "hyperdense": lambda: liver_hu + rng.uniform(40, 80),
    }[kind]())


def _plan_lesions(an: _Anatomy, n: int, liver_hu: float, rng: np.random.Generator) -> list[_LesionPlan]:
    """Place lesions on a fixed 2 mm grid so placement never depends on the output grid."""
    step = _PLACEMENT_STEP_MM
    gz = np.arange(step / 2, an.z_extent, step, dtype=np.float32)
    g = _Grid(gz, np.arange(-170, 170, step, dtype=np.float32), np.arange(-200, 200, step, dtype=np.float32),
              np.zeros_like(gz))
    origin = np.array([g.z[0], g.y[0], g.x[0]])
    labels = _render_labels(an, g)
    lung_idx, liver_idx = np.flatnonzero(_LUNG_LUT[labels]), np.flatnonzero(labels == _LIVER)
    wall_lut = _lut((_MUSCLE, _FAT, _SOFT))

    def ball(r: float) -> tuple[np.ndarray, np.ndarray]:
        k = int(math.ceil(r / step))
        o = np.stack(np.meshgrid(*[np.arange(-k, k + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
        return o, np.sqrt((o**2).sum(1)) * step

    def labels_at(c: np.ndarray, offs: np.ndarray) -> np.ndarray:
        idx = np.round((c - origin) / step).astype(int)[None] + offs
        inside = np.all((idx >= 0) & (idx < labels.shape), axis=1)
        out = np.full(len(offs), 255, np.uint8)  # 255: outside the volume, fails every test
        out[inside] = labels[tuple(idx[inside].T)]
        return out

    plans: list[_LesionPlan] = []
    vessels = [t for t, level in an.vessels if 1.0 <= t.radius <= 3.5]
    for _ in range(n):
        in_lung = liver_idx.size == 0 or rng.random() < 0.75
        kinds = CLINICAL_LUNG_LESION_KINDS if in_lung else CLINICAL_LIVER_LESION_KINDS
        kind = kinds[int(rng.integers(len(kinds)))]
        diameter = _lesion_diameter(kind, rng) if in_lung else max(_lesion_diameter(kind, rng), 5.0)
        r = diameter / 2
        hu = _lesion_hu(kind, liver_hu, rng)
        reach = r * (1.6 if kind == "spiculated" else 1.0)
        offs, dist = ball(reach + 3.0)
        mode = rng.random() if in_lung else 1.0
        for _attempt in range(80):
            if in_lung and mode < 0.25 and vessels:  # juxtavascular
                t = vessels[int(rng.integers(len(vessels)))]
                a, b = np.array(t.a), np.array(t.b)
                perp = np.cross(b - a, rng.normal(size=3))
                c = a + rng.uniform(0.2, 0.8) * (b - a) + perp / (np.linalg.norm(perp) or 1) * (t.radius + r * 0.95)
            else:
                pool = lung_idx if in_lung else liver_idx
                if pool.size == 0:
                    break
                iz, iy, ix = np.unravel_index(int(pool[int(rng.integers(pool.size))]), labels.shape)
                c = np.array([g.z[iz], g.y[iy], g.x[ix]], float) + rng.uniform(-1, 1, 3)
            if any(np.linalg.norm(c - np.array(pl.centre_mm)) < r + pl.radius * 1.6 + 3 for pl in plans):
                continue
            lab = labels_at(c, offs)
            if np.any(_FORBIDDEN_LUT[lab[dist <= reach + 2.5]]) or np.any(lab[dist <= r + 2.5] == 255):
                continue
            if in_lung:
                if not np.all(_LUNG_LUT[lab[dist <= max(0.6 * r, 1.0)]]):
                    continue
                touches_wall = bool(np.any(wall_lut[lab[dist <= r + 1.0]]))
                if 0.25 <= mode < 0.5 and not touches_wall:  # juxtapleural wanted
                    continue
                if mode >= 0.5 and not np.all(_LUNG_LUT[lab[dist <= r + 1.5]]):
                    continue
            elif not np.all(lab[dist <= r + 3.0] == _LIVER):
                continue
            plans.append(_LesionPlan((float(c[0]), float(c[1]), float(c[2])), r, kind, hu,
                                     "lung" if in_lung else "liver", int(rng.integers(2**31))))
            break
    return plans


def _lesion_shape(plan: _LesionPlan, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside, value) of one lesion on broadcast offsets in mm from its centre."""
    rng = np.random.default_rng(plan.shape_seed)
    r, kind = plan.radius, plan.kind
    ang = rng.uniform(0, math.pi)
    axes = rng.uniform(0.8, 1.0, 3) * r
    u = dx * math.cos(ang) + dy * math.sin(ang)
    v = -dx * math.sin(ang) + dy * math.cos(ang)
    q = (u / axes[0]) ** 2 + (v / axes[1]) ** 2 + (dz / axes[2]) ** 2
    inside = q <= 1.0
    value = np.full(np.broadcast_shapes(dz.shape, dy.shape, dx.shape), plan.hu, np.float32)
    if kind == "part_solid":
        value[q <= rng.uniform(0.3, 0.55) ** 2] = rng.uniform(10, 50)
    elif kind == "cavitated":
        off = rng.uniform(-0.2, 0.2, 3) * r
        ri = r * rng.uniform(0.35, 0.6)
        value[(dz - off[0]) ** 2 + (dy - off[1]) ** 2 + (dx - off[2]) ** 2 <= ri * ri] = -1000
    elif kind == "lobulated":
        inside = q <= 0.55**2
        for _ in range(int(rng.integers(3, 7))):
            d = rng.normal(size=3)
            d[0] *= 0.6
            d /= np.linalg.norm(d)
            rl = r * rng.uniform(0.35, 0.5)
            c = d * (r - rl)
            inside = inside | ((dz - c[0]) ** 2 + (dy - c[1]) ** 2 + (dx - c[2]) ** 2 <= rl * rl)
    elif kind == "spiculated":
        for _ in range(int(rng.integers(6, 13))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            e = d * r * rng.uniform(1.25, 1.6)
            t = np.clip((dz * e[0] + dy * e[1] + dx * e[2]) / float(e @ e), 0, 1)
            d2 = (dz - t * e[0]) ** 2 + (dy - t * e[1]) ** 2 + (dx - t * e[2]) ** 2
            rs = rng.uniform(0.5, 0.9) * (1.0 - 0.7 * t)  # spicules taper outwards
            inside = inside | (d2 <= rs * rs)
    return inside, value


def _gaussian_1d(sigma_px: float) -> np.ndarray:
    half = max(1, int(math.ceil(3 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_px) ** 2)
    kernel: np.ndarray = (k / k.sum()).astype(np.float32)
    return kernel


def _blur_in_plane(vol: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur over rows and columns, edges repeated."""
    if sigma_px < 0.2:
        return vol
    k = _gaussian_1d(sigma_px)
    half = k.size // 2
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (half, half)
        padded = np.pad(vol, pad, mode="edge")
        out = np.zeros_like(vol)
        n = vol.shape[axis]
        for i, w in enumerate(k):
            out += w * (padded[:, i:i + n] if axis == 1 else padded[:, :, i:i + n])
        vol = out
    return vol


def make_clinical_phantom(
    seed: int, *, size: int = 512, pixel_spacing_mm: float = 0.7, slice_thickness_mm: float = 2.5,
    z_extent_mm: float = 100.0, n_lesions: int | None = None, kernel: str | None = None,
    contrast: bool | None = None,
) -> Phantom:
    """Build a deterministic chest CT with ribs and full bone anatomy on a clinical grid.

    ``kernel`` is "soft" or "sharp" and ``contrast`` says whether IV contrast was given; ``None``
    draws them from the seed. ``n_lesions=None`` draws 0-6 (about 1 in 6 scans lesion-free);
    ``n_lesions=0`` gives a lesion-free scan with all the anatomy (a hard negative).
    """
    return _make_clinical_phantom_with_labels(
        seed, size=size, pixel_spacing_mm=pixel_spacing_mm, slice_thickness_mm=slice_thickness_mm,
        z_extent_mm=z_extent_mm, n_lesions=n_lesions, kernel=kernel, contrast=contrast)[0]


def _make_clinical_phantom_with_labels(
    seed: int, *, size: int = 512, pixel_spacing_mm: float = 0.7, slice_thickness_mm: float = 2.5,
    z_extent_mm: float = 100.0, n_lesions: int | None = None, kernel: str | None = None,
    contrast: bool | None = None,
) -> tuple[Phantom, np.ndarray]:
    """The phantom and its tissue labels at each slice's central plane (for tests)."""
    if seed < 0:
        raise PhantomError(f"seed must be >= 0, got {seed}")
    if size < 32 or pixel_spacing_mm <= 0 or slice_thickness_mm <= 0 or z_extent_mm < slice_thickness_mm:
        raise PhantomError(f"invalid grid: size={size}, pixel={pixel_spacing_mm}, slice={slice_thickness_mm}, "
                           f"z_extent={z_extent_mm}")
    if kernel is not None and kernel not in KERNELS:
        raise PhantomError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if n_lesions is not None and n_lesions < 0:
        raise PhantomError(f"n_lesions must be >= 0, got {n_lesions}")

    # Fixed sub-streams: changing one choice (say the kernel) never moves the anatomy or lesions.
    scan_rng = np.random.default_rng([seed, 0])
    drawn_lesions = int(scan_rng.choice(7, p=[1 / 6] + [5 / 36] * 6))
    drawn_kernel = KERNELS[int(scan_rng.integers(2))]
    drawn_contrast = bool(scan_rng.random() < 0.6)
    breathing = scan_rng.uniform(1.5, 4.0) if scan_rng.random() < 0.3 else 0.0
    breath_phase = scan_rng.uniform(0, 2 * math.pi)
    n_lesions = drawn_lesions if n_lesions is None else n_lesions
    kernel = kernel or drawn_kernel
    contrast = drawn_contrast if contrast is None else contrast

    an = _draw_anatomy(np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2]), z_extent_mm)
    table = _hu_table(np.random.default_rng([seed, 3]), contrast)
    plans = _plan_lesions(an, n_lesions, float(table[_LIVER]), np.random.default_rng([seed, 4]))
    if len(plans) < n_lesions:
        logger.info("seed %d: placed %d of %d lesions (no room left)", seed, len(plans), n_lesions)

    n_slices = max(int(round(z_extent_mm / slice_thickness_mm)), 1)
    n_sub = max(int(math.ceil(slice_thickness_mm / _SUB_SLICE_MM - 1e-6)), 1)
    t, sp = slice_thickness_mm, pixel_spacing_mm
    sub_z = ((np.arange(n_slices)[:, None] + (np.arange(n_sub)[None] + 0.5) / n_sub) * t).ravel()
    breath = breathing * np.sin(breath_phase + 2 * math.pi * np.arange(n_sub) / n_sub)
    coords = ((np.arange(size) - size / 2 + 0.5) * sp).astype(np.float32)
    grid = _Grid(sub_z.astype(np.float32), coords, coords, np.tile(breath, n_slices).astype(np.float32))
    labels = _render_labels(an, grid)
    hu = table[labels]

    lesion_mask = np.zeros((n_slices, size, size), bool)
    lesions: list[PhantomLesion] = []
    for plan in plans:
        reach = plan.radius * (1.6 if plan.kind == "spiculated" else 1.0) + sp
        cz, cy, cx = plan.centre_mm
        s0, s1 = max(int((cz - reach) // t), 0), min(int((cz + reach) // t) + 1, n_slices)
        zs = slice(s0 * n_sub, s1 * n_sub)
        ys, xs = grid.span(1, cy - reach, cy + reach), grid.span(2, cx - reach, cx + reach)
        inside, value = _lesion_shape(plan, (grid.z[zs] - cz)[:, None, None], (grid.y[ys] - cy)[None, :, None],
                                      (grid.x[xs] - cx)[None, None, :])
        inside = inside & ~_FORBIDDEN_LUT[labels[zs, ys, xs]]
        region = hu[zs, ys, xs]
        region[inside] = value[inside]
        occupancy = inside.reshape(s1 - s0, n_sub, *inside.shape[1:]).mean(1)
        lesion_mask[s0:s1, ys, xs] |= occupancy >= 0.5
        centre = (cz / t - 0.5, cy / sp + size / 2 - 0.5, cx / sp + size / 2 - 0.5)
        vz, vy, vx = (min(max(int(round(c)), 0), n - 1) for c, n in zip(centre, (n_slices, size, size), strict=True))
        lesion_mask[vz, vy, vx] = True
        lesions.append(PhantomLesion(centre_zyx=(round(centre[0], 3), round(centre[1], 3), round(centre[2], 3)),
                                     diameter_mm=round(2 * plan.radius, 2), kind=plan.kind, hu=round(plan.hu, 1),
                                     region=plan.region))

    volume = hu.reshape(n_slices, n_sub, size, size).mean(1)
    del hu
    central_labels = labels.reshape(n_slices, n_sub, size, size)[:, n_sub // 2].copy()
    del labels

    noise_rng = np.random.default_rng([seed, 5])
    psf_mm = noise_rng.uniform(0.8, 1.1) if kernel == "soft" else noise_rng.uniform(0.4, 0.6)
    sigma = noise_rng.uniform(8, 20) if kernel == "soft" else noise_rng.uniform(25, 60)
    sigma *= min(math.sqrt(_REFERENCE_THICKNESS_MM / t), 2.0)
    grain_mm = 0.9 if kernel == "soft" else 0.45
    volume = _blur_in_plane(volume, psf_mm / sp)
    noise = noise_rng.standard_normal(volume.shape, dtype=np.float32)
    grain_px = grain_mm / sp
    if grain_px >= 0.2:
        noise = _blur_in_plane(noise, grain_px)
        noise *= 1.0 / float((_gaussian_1d(grain_px) ** 2).sum())
    volume += sigma * noise
    del noise
    fov = (coords[:, None] ** 2 + coords[None, :] ** 2) <= (size * sp / 2) ** 2
    volume[:, ~fov] = HU_MIN
    volume_hu = np.clip(np.rint(volume), HU_MIN, HU_MAX).astype(np.int16)
    body_mask = (central_labels != _AIR) & fov[None]
    phantom = Phantom(volume_hu=volume_hu, lesion_mask=lesion_mask & fov[None], lesions=lesions,
                      pixel_spacing_mm=sp, slice_thickness_mm=t, seed=seed, body_mask=body_mask)
    return phantom, central_labels
