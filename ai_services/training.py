"""Training, calibration and held-out evaluation of the lesion detector on synthetic phantoms.

Three disjoint seed ranges keep the reported numbers honest:

- training phantoms: seeds ``seed * 1000 + 0 .. n_train_phantoms - 1`` (one block per run seed);
- validation/calibration phantoms: seeds from ``VALIDATION_SEED_BASE`` (10 000);
- held-out test phantoms: seeds from ``HELDOUT_SEED_BASE`` (20 000); used only for the metrics.

Hit rule (lesion-level matching, used by FROC, size groups and calibration labels): a detection
hits lesion L when its key-slice centre lies inside the ground-truth lesion mask on any slice the
detection spans (the hit is given to the nearest lesion centre), or when its centre is within
max(L's radius, 3 mm) of L's centre in-plane on a slice the detection spans that also intersects L.
Several detections on one lesion count it once; the extra ones are neither hits nor false positives
(as in LUNA16). A detection that hits no lesion is a false positive.

Run ``python -m ai_services.training --help`` for the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.nn import functional as F

from ai_services.inference import (
    DEFAULT_CANDIDATE_THRESHOLD,
    WORKING_SIZE,
    Calibration,
    Detection,
    LesionDetector,
    extract_detections,
    logit,
    manifest_path_for,
    sha256_of_file,
    stack_context,
    window_hu,
)
from ai_services.network import CONTEXT_SLICES, DEFAULT_WIDTHS, IN_CHANNELS, WINDOWS, LesionUNet, count_parameters
from synthetic.phantoms import Phantom, make_ct_phantom

logger = logging.getLogger(__name__)

MODEL_NAME = "lesion-detector"
MODEL_VERSION = "1"
VALIDATION_SEED_BASE = 10_000
HELDOUT_SEED_BASE = 20_000
# The grid-independent model's training scans (``training_clinical``: 10 000 per run seed, 10 run
# seeds); nothing else draws from this block.
GRID_TRAIN_SEEDS = range(200_000, 300_000)
SIZE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("<6mm", 0.0, 6.0), ("6-10mm", 6.0, 10.0), (">10mm", 10.0, math.inf),
)
PHANTOM_SLICES = 24
PHANTOM_SIZE = 256
PATCH_SIZE = 96
MIN_HIT_RADIUS_MM = 3.0


class TrainingError(RuntimeError):
    """Raised for invalid training/evaluation requests."""


@dataclass
class EvaluationMetrics:
    """Held-out metrics; see the module docstring for the hit rule."""

    n_scans: int
    n_lesions: int
    froc_sensitivity_at_1fp: float
    froc_sensitivity_at_4fp: float
    max_sensitivity: float  # at the candidate threshold, any number of false positives
    mean_false_positives_per_scan: float  # at the candidate threshold
    slice_auroc: float
    ece: float
    sensitivity_by_size_at_4fp: dict[str, float] = field(default_factory=dict)
    lesions_by_size: dict[str, int] = field(default_factory=dict)
    sensitivity_by_kind_at_4fp: dict[str, float] = field(default_factory=dict)
    threshold_at_4fp: float = 1.0
    threshold_at_1fp: float = 1.0

    def to_json(self) -> dict[str, object]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class TrainingResult:
    weights_path: Path
    manifest_path: Path
    sha256: str
    metrics: EvaluationMetrics
    calibration: Calibration
    wall_time_s: float
    final_loss: float


# ---------------------------------------------------------------------------------------------
# Metrics (pure numpy; tested on hand-made cases)
# ---------------------------------------------------------------------------------------------

def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise TrainingError(f"AUROC needs both classes, got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average ranks over tied scores.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def expected_calibration_error(confidences: Sequence[float] | np.ndarray,
                               outcomes: Sequence[bool] | np.ndarray, n_bins: int = 10) -> float:
    """ECE with ``n_bins`` equal-width bins: sum over bins of |accuracy - confidence| * weight."""
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(outcomes, dtype=np.float64)
    if conf.size == 0:
        return 0.0
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += abs(hit[sel].mean() - conf[sel].mean()) * sel.mean()
    return float(ece)


@dataclass(frozen=True)
class FrocPoint:
    threshold: float
    sensitivity: float
    false_positives_per_scan: float


def froc_curve(confidences: Sequence[float] | np.ndarray, lesion_ids: Sequence[int] | np.ndarray,
               n_lesions: int, n_scans: int) -> list[FrocPoint]:
    """FROC operating points, one per distinct confidence, from the highest down.

    ``lesion_ids[i]`` is a globally unique id of the lesion detection i hits, or -1 for a false
    positive; repeated hits on one lesion are ignored (neither TP nor FP).
    """
    if n_lesions <= 0 or n_scans <= 0:
        raise TrainingError(f"FROC needs lesions and scans, got {n_lesions} lesions, {n_scans} scans")
    conf = np.asarray(confidences, dtype=np.float64)
    ids = np.asarray(lesion_ids, dtype=np.int64)
    order = np.argsort(-conf, kind="mergesort")
    seen: set[int] = set()
    tp = fp = 0
    points: list[FrocPoint] = [FrocPoint(math.inf, 0.0, 0.0)]
    for rank, i in enumerate(order):
        if ids[i] < 0:
            fp += 1
        elif ids[i] not in seen:
            seen.add(int(ids[i]))
            tp += 1
        last_of_tie = rank + 1 == order.size or conf[order[rank + 1]] != conf[i]
        if last_of_tie:
            points.append(FrocPoint(float(conf[i]), tp / n_lesions, fp / n_scans))
    return points


def sensitivity_at_fp_rate(points: Sequence[FrocPoint], fp_per_scan: float) -> tuple[float, float]:
    """(best sensitivity, its threshold) among operating points with at most ``fp_per_scan``."""
    best = max((p for p in points if p.false_positives_per_scan <= fp_per_scan),
               key=lambda p: (p.sensitivity, -p.false_positives_per_scan))
    return best.sensitivity, best.threshold


class LesionTruth(Protocol):
    """What the hit rule needs of a lesion (``PhantomLesion`` and the evaluation generator's)."""

    @property
    def centre_zyx(self) -> tuple[float, float, float]: ...

    @property
    def diameter_mm(self) -> float: ...


class ScanTruth(Protocol):
    """What the hit rule needs of a scan's ground truth, whichever generator made it."""

    @property
    def lesions(self) -> Sequence[LesionTruth]: ...

    @property
    def lesion_mask(self) -> np.ndarray: ...

    @property
    def pixel_spacing_mm(self) -> float: ...

    @property
    def slice_thickness_mm(self) -> float: ...


def match_detections(detections: Sequence[Detection], phantom: ScanTruth) -> list[int]:
    """For each detection, the index of the lesion it hits in ``phantom.lesions`` or -1."""
    sp, st = phantom.pixel_spacing_mm, phantom.slice_thickness_mm
    centres = np.array([lesion.centre_zyx for lesion in phantom.lesions], dtype=np.float64).reshape(-1, 3)
    radii = np.array([lesion.diameter_mm / 2 for lesion in phantom.lesions], dtype=np.float64)
    out = []
    for det in detections:
        cx, cy = det.centre_xy
        span = np.arange(det.first_slice, det.last_slice + 1)
        if centres.size == 0:
            out.append(-1)
            continue
        in_plane = np.hypot((centres[:, 1] - cy) * sp, (centres[:, 2] - cx) * sp)
        # Closest approach in z between the detection's slices and each lesion centre.
        dz = np.min(np.abs(span[None, :] - centres[:, [0]]), axis=1) * st
        z_overlap = dz <= radii + st / 2
        yi = min(max(int(round(cy)), 0), phantom.lesion_mask.shape[1] - 1)
        xi = min(max(int(round(cx)), 0), phantom.lesion_mask.shape[2] - 1)
        in_mask = bool(phantom.lesion_mask[span, yi, xi].any())
        distance = np.hypot(in_plane, dz)
        if in_mask:
            out.append(int(np.argmin(distance + np.where(z_overlap, 0.0, 1e6))))
            continue
        near = z_overlap & (in_plane <= np.maximum(radii, MIN_HIT_RADIUS_MM))
        out.append(int(np.argmin(np.where(near, distance, np.inf))) if near.any() else -1)
    return out


def _size_group(diameter_mm: float) -> str:
    return next(name for name, lo, hi in SIZE_GROUPS if lo <= diameter_mm < hi)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def training_lesion_count(seed: int) -> int:
    """Lesions per training phantom: 0 for about 1 in 8 (normal scans), else 2-8 (dense signal)."""
    rng = np.random.default_rng([seed, 7])
    return 0 if rng.random() < 0.125 else int(rng.integers(2, 9))


def make_eval_phantom(seed: int) -> Phantom:
    """Validation and held-out phantoms use the generator's default lesion count (1-6)."""
    return make_ct_phantom(seed, n_slices=PHANTOM_SLICES, size=PHANTOM_SIZE)


@dataclass
class _TrainingSet:
    windowed: list[torch.Tensor]  # per phantom (S, C, H, W) float16 to halve memory
    masks: list[np.ndarray]
    lesion_voxels: list[np.ndarray]  # flat indices of lesion voxels, for oversampling
    body_boxes: list[tuple[int, int, int, int]]


def _build_training_set(seeds: Sequence[int]) -> _TrainingSet:
    windowed, masks, lesion_voxels, boxes = [], [], [], []
    for seed in seeds:
        phantom = make_ct_phantom(seed, n_slices=PHANTOM_SLICES, size=PHANTOM_SIZE,
                                  n_lesions=training_lesion_count(seed))
        windowed.append(window_hu(torch.from_numpy(phantom.volume_hu.astype(np.float32))).half())
        masks.append(phantom.lesion_mask)
        lesion_voxels.append(np.flatnonzero(phantom.lesion_mask))
        body = phantom.volume_hu.max(axis=0) > -500
        ys, xs = np.nonzero(body)
        boxes.append((int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())))
    return _TrainingSet(windowed, masks, lesion_voxels, boxes)


def _sample_batch(data: _TrainingSet, batch_size: int, rng: np.random.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the patches contain a lesion voxel; the rest are random patches in the body.

    Lesion voxels are drawn uniformly, so big lesions are seen more often than small ones. Drawing
    per lesion instead was tried (run of 2026-11-23): small-lesion sensitivity did not improve in
    the same training budget and big-lesion sensitivity fell (0.84 -> 0.71), so it was dropped.
    """
    xs, ys = [], []
    half = PATCH_SIZE // 2
    for _ in range(batch_size):
        k = int(rng.integers(len(data.masks)))
        vol, mask = data.windowed[k], data.masks[k]
        n_slices, height, width = mask.shape
        if rng.random() < 0.5 and data.lesion_voxels[k].size:
            z, y, x = np.unravel_index(int(rng.choice(data.lesion_voxels[k])), mask.shape)
            y += int(rng.integers(-half + 8, half - 8))
            x += int(rng.integers(-half + 8, half - 8))
        else:
            y0, y1, x0, x1 = data.body_boxes[k]
            z = int(rng.integers(n_slices))
            y, x = int(rng.integers(y0, y1 + 1)), int(rng.integers(x0, x1 + 1))
        y = min(max(y - half, 0), height - PATCH_SIZE)
        x = min(max(x - half, 0), width - PATCH_SIZE)
        patch = stack_context(vol, [int(z)])[0, :, y:y + PATCH_SIZE, x:x + PATCH_SIZE].float()
        target = torch.from_numpy(mask[z, y:y + PATCH_SIZE, x:x + PATCH_SIZE].astype(np.float32))
        # Flips: lesions occur on either side and the slice stack reads the same upside down.
        if rng.random() < 0.5:
            patch, target = patch.flip(-1), target.flip(-1)
        if rng.random() < 0.5:
            c = len(WINDOWS)
            patch = patch.reshape(CONTEXT_SLICES, c, PATCH_SIZE, PATCH_SIZE).flip(0).reshape(-1, PATCH_SIZE, PATCH_SIZE)
        xs.append(patch)
        ys.append(target)
    return torch.stack(xs), torch.stack(ys)[:, None]


class LabelledExample(Protocol):
    """A labelled slice from outside the generator (a reviewed case's, or a research dataset
    version's: `retraining.LabelledSlice`): its 2.5D HU stack (CONTEXT_SLICES, H, W), the lesion
    mask of its centre slice (H, W), and the points its labels are centred on."""

    @property
    def hu(self) -> np.ndarray: ...

    @property
    def mask(self) -> np.ndarray: ...

    @property
    def focus(self) -> list[tuple[int, int]]: ...


@dataclass
class SlicePool:
    """Labelled slices windowed once for patch drawing (fine-tuning, and training on a dataset)."""

    inputs: list[torch.Tensor]  # windowed (CONTEXT_SLICES * len(WINDOWS), H, W), padded to >= patch
    masks: list[torch.Tensor]
    focus: list[list[tuple[int, int]]]
    drawn: int = 0


def slice_pool(slices: Sequence[LabelledExample], patch: int) -> SlicePool:
    inputs, masks, focus = [], [], []
    for item in slices:
        _, h, w = item.hu.shape
        pad_h, pad_w = max(patch - h, 0), max(patch - w, 0)
        hu = torch.from_numpy(np.ascontiguousarray(item.hu, dtype=np.float32))
        mask = torch.from_numpy(item.mask.astype(np.float32))
        if pad_h or pad_w:
            hu = F.pad(hu, (0, pad_w, 0, pad_h), value=-1000.0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h))
        inputs.append(window_hu(hu).reshape(-1, *hu.shape[1:]).half())
        masks.append(mask)
        focus.append(list(item.focus))
    return SlicePool(inputs, masks, focus)


def draw_patch(pool: SlicePool, patch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A patch of one of the pool's slices: most often near one of its labels, else anywhere."""
    k = int(rng.integers(len(pool.inputs)))
    x, target = pool.inputs[k], pool.masks[k]
    h, w = target.shape
    if pool.focus[k] and rng.random() < 0.8:
        cy, cx = pool.focus[k][int(rng.integers(len(pool.focus[k])))]
        cy += int(rng.integers(-patch // 4, patch // 4 + 1))
        cx += int(rng.integers(-patch // 4, patch // 4 + 1))
    else:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0 = min(max(cy - patch // 2, 0), h - patch)
    x0 = min(max(cx - patch // 2, 0), w - patch)
    xp = x[:, y0:y0 + patch, x0:x0 + patch].float()
    tp = target[y0:y0 + patch, x0:x0 + patch]
    if rng.random() < 0.5:
        xp, tp = xp.flip(-1), tp.flip(-1)
    pool.drawn += 1
    return xp, tp


def _mix_dataset(x: torch.Tensor, y: torch.Tensor, pool: SlicePool | None, fraction: float,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace about `fraction` of a batch's phantom patches with patches of the dataset's slices."""
    if pool is None or not pool.inputs:
        return x, y
    for index in range(x.shape[0]):
        if rng.random() < fraction:
            x[index], y[index, 0] = draw_patch(pool, PATCH_SIZE, rng)
    return x, y


def detection_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE for calibrated per-pixel probabilities plus soft Dice so tiny lesions are not ignored."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice


# ---------------------------------------------------------------------------------------------
# Calibration and evaluation
# ---------------------------------------------------------------------------------------------

def fit_platt(max_probability: np.ndarray, n_voxels: np.ndarray, outcomes: np.ndarray,
              *, l2: float = 1.0, iterations: int = 100) -> Calibration:
    """Logistic regression of outcomes on [logit(max_probability), log(n_voxels)].

    Features are standardised and L2-penalised because the validation set is small and can be
    separable (plain maximum likelihood would then diverge to 0/1 confidences).
    """
    raw = np.stack([logit(max_probability), np.log(np.maximum(n_voxels, 1.0))], axis=1)
    y = np.asarray(outcomes, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        logger.warning("calibration set has %d detections of one class; using identity", y.size)
        return Calibration()
    mean, std = raw.mean(axis=0), raw.std(axis=0) + 1e-6
    features = np.column_stack([(raw - mean) / std, np.ones(len(y))])
    w = np.zeros(3)
    reg = np.diag([l2, l2, 0.0])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-np.clip(features @ w, -50, 50)))
        grad = features.T @ (p - y) + reg @ w
        hess = features.T @ (features * (p * (1 - p))[:, None]) + reg + 1e-6 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    coef = w[:2] / std
    intercept = w[2] - float(coef @ mean)
    return Calibration(coef_logit=float(coef[0]), coef_size=float(coef[1]), intercept=float(intercept))


def run_on_phantoms(detector: LesionDetector, seeds: Sequence[int],
                     make_phantom: Callable[[int], Phantom] = make_eval_phantom,
                     ) -> list[tuple[Phantom, np.ndarray, list[Detection], list[int]]]:
    results = []
    for seed in seeds:
        phantom = make_phantom(seed)
        spacing = (phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)
        prob = detector.predict_probabilities(phantom.volume_hu.astype(np.float32), pixel_spacing_mm=spacing,
                                              slice_spacing_mm=phantom.slice_thickness_mm)
        detections = extract_detections(prob, spacing, threshold=detector.threshold,
                                        calibration=detector.calibration, slice_spacing_mm=phantom.slice_thickness_mm)
        results.append((phantom, prob, detections, match_detections(detections, phantom)))
    return results


def calibration_from_runs(runs: Sequence[tuple[Phantom, np.ndarray, list[Detection], list[int]]], *,
                          physical: bool) -> Calibration:
    """Platt scaling of the runs' detections on [logit(max probability), log(size)]: size in voxels
    for a single-grid model (v1), in mm^3 for one that reads every grid (``PhysicalGrid``)."""
    max_p = np.array([d.max_probability for _, _, dets, _ in runs for d in dets])
    size = np.array([d.n_voxels * (ph.pixel_spacing_mm ** 2 * ph.slice_thickness_mm if physical else 1.0)
                     for ph, _, dets, _ in runs for d in dets], dtype=np.float64)
    hits = np.array([m >= 0 for _, _, _, matches in runs for m in matches])
    fitted = fit_platt(max_p, size, hits)
    return Calibration(fitted.coef_logit, fitted.coef_size, fitted.intercept, "mm3" if physical else "voxels")


def calibrate(detector: LesionDetector, seeds: Sequence[int],
              make_phantom: Callable[[int], Phantom] = make_eval_phantom) -> Calibration:
    runs = run_on_phantoms(detector, seeds, make_phantom)
    calibration = calibration_from_runs(runs, physical=detector.grid is not None)
    logger.info("calibrated on %d detections (%d true) from %d phantoms: %s", sum(len(r[2]) for r in runs),
                sum(m >= 0 for r in runs for m in r[3]), len(seeds), calibration)
    return calibration


def evaluate_detector(detector: LesionDetector, heldout_seeds: Sequence[int],
                      make_phantom: Callable[[int], Phantom] = make_eval_phantom) -> EvaluationMetrics:
    """Held-out metrics on ``make_phantom(seed)`` for each seed (default: the 256x256x24 phantoms)."""
    if not heldout_seeds:
        raise TrainingError("evaluation needs at least one held-out seed")
    return metrics_from_runs(run_on_phantoms(detector, heldout_seeds, make_phantom))


def metrics_from_runs(runs: Sequence[tuple[Phantom, np.ndarray, list[Detection], list[int]]]) -> EvaluationMetrics:
    """``evaluate_detector``'s metrics from runs already made (the retraining loop reuses them)."""
    confidences, lesion_ids, outcomes = [], [], []
    slice_scores, slice_labels = [], []
    lesion_size, lesion_kind = {}, {}
    for scan, (phantom, prob, detections, matches) in enumerate(runs):
        for i, lesion in enumerate(phantom.lesions):
            lesion_size[scan * 1000 + i] = _size_group(lesion.diameter_mm)
            lesion_kind[scan * 1000 + i] = f"{lesion.region}:{lesion.kind}"
        for det, m in zip(detections, matches, strict=True):
            confidences.append(det.confidence)
            lesion_ids.append(scan * 1000 + m if m >= 0 else -1)
            outcomes.append(m >= 0)
        slice_scores.extend(prob.reshape(prob.shape[0], -1).max(axis=1).tolist())
        slice_labels.extend(phantom.lesion_mask.reshape(prob.shape[0], -1).any(axis=1).tolist())
    n_scans, n_lesions = len(runs), len(lesion_size)
    points = froc_curve(confidences, lesion_ids, n_lesions, n_scans)
    sens1, thr1 = sensitivity_at_fp_rate(points, 1.0)
    sens4, thr4 = sensitivity_at_fp_rate(points, 4.0)
    hit_at_4 = {lid for c, lid in zip(confidences, lesion_ids, strict=True) if lid >= 0 and c >= thr4}

    def grouped(key: dict[int, str]) -> tuple[dict[str, float], dict[str, int]]:
        counts: dict[str, int] = {}
        hits: dict[str, int] = {}
        for lid, group in key.items():
            counts[group] = counts.get(group, 0) + 1
            hits[group] = hits.get(group, 0) + (lid in hit_at_4)
        return {g: round(hits[g] / counts[g], 4) for g in sorted(counts)}, dict(sorted(counts.items()))

    by_size, size_counts = grouped(lesion_size)
    by_kind, _ = grouped(lesion_kind)
    return EvaluationMetrics(
        n_scans=n_scans,
        n_lesions=n_lesions,
        froc_sensitivity_at_1fp=sens1,
        froc_sensitivity_at_4fp=sens4,
        max_sensitivity=points[-1].sensitivity,
        mean_false_positives_per_scan=points[-1].false_positives_per_scan,
        slice_auroc=auroc(slice_scores, slice_labels),
        ece=expected_calibration_error(confidences, outcomes),
        sensitivity_by_size_at_4fp=by_size,
        lesions_by_size=size_counts,
        sensitivity_by_kind_at_4fp=by_kind,
        threshold_at_4fp=float(min(thr4, 1.0)),
        threshold_at_1fp=float(min(thr1, 1.0)),
    )


def evaluate_model(weights_path: Path, *, heldout_seeds: Sequence[int]) -> EvaluationMetrics:
    """Load verified weights and compute held-out metrics on phantoms made from ``heldout_seeds``."""
    overlap = [s for s in heldout_seeds if s < VALIDATION_SEED_BASE]
    if overlap:
        logger.warning("held-out seeds %s fall in the training range", overlap[:5])
    return evaluate_detector(LesionDetector.load(weights_path), heldout_seeds)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def code_version() -> str:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"],
                              cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def train_model(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train_phantoms: int,
    epochs: int,
    name: str = f"{MODEL_NAME}-v{MODEL_VERSION}",
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    n_validation_phantoms: int = 16,
    n_heldout_phantoms: int = 20,
    steps_per_epoch: int | None = None,
    threads: int = 2,
    dataset_slices: Sequence[LabelledExample] = (),
    dataset: dict[str, object] | None = None,
) -> TrainingResult:
    """Train, calibrate and evaluate; writes ``<name>.pt`` and ``<name>.json`` into ``out_dir``.

    One epoch is ``steps_per_epoch`` batches, by default as many patches as training slices.
    ``dataset_slices``: labelled slices of a research dataset version (``dataset`` names it: its
    number and manifest SHA-256, kept in the manifest as provenance); a share of every batch's
    patches is drawn from them, in proportion to their number beside the phantoms' slices (at
    least a quarter, at most a half).
    """
    if n_train_phantoms < 1 or epochs < 1:
        raise TrainingError(f"need >= 1 phantom and epoch, got {n_train_phantoms}, {epochs}")
    started = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_seeds = list(range(seed * 1000, seed * 1000 + n_train_phantoms))
    if train_seeds[-1] >= VALIDATION_SEED_BASE:
        raise TrainingError(f"training seeds {train_seeds[0]}..{train_seeds[-1]} overlap validation")
    validation_seeds = list(range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + n_validation_phantoms))
    heldout_seeds = list(range(HELDOUT_SEED_BASE, HELDOUT_SEED_BASE + n_heldout_phantoms))

    data = _build_training_set(train_seeds)
    extra = slice_pool(dataset_slices, PATCH_SIZE) if dataset_slices else None
    fraction = (min(0.5, max(0.25, len(dataset_slices) / (len(dataset_slices) + n_train_phantoms * PHANTOM_SLICES)))
                if extra is not None else 0.0)
    steps = steps_per_epoch or max(1, n_train_phantoms * PHANTOM_SLICES // batch_size)
    total_steps = steps * epochs
    model = LesionUNet(IN_CHANNELS, DEFAULT_WIDTHS)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate,
                                                   total_steps=total_steps, pct_start=0.1)
    model.train()
    running = 0.0
    for epoch in range(epochs):
        running = 0.0
        for _ in range(steps):
            x, y = _mix_dataset(*_sample_batch(data, batch_size, rng), extra, fraction, rng)
            loss = detection_loss(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += loss.item()
        logger.info("epoch %d/%d loss %.4f (%.0f s)", epoch + 1, epochs, running / steps,
                    time.perf_counter() - started)
    model.eval()

    detector = LesionDetector.from_model(model, threshold=DEFAULT_CANDIDATE_THRESHOLD)
    calibration = calibrate(detector, validation_seeds) if validation_seeds else Calibration()
    detector = LesionDetector.from_model(model, calibration=calibration,
                                         threshold=DEFAULT_CANDIDATE_THRESHOLD)
    metrics = evaluate_detector(detector, heldout_seeds) if heldout_seeds else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{name}.pt"
    torch.save(model.state_dict(), weights_path)
    digest = sha256_of_file(weights_path)
    wall = time.perf_counter() - started
    manifest = {
        "model_name": MODEL_NAME,
        "version": MODEL_VERSION,
        "weights_file": weights_path.name,
        "sha256": digest,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "architecture": {"class": "ai_services.network.LesionUNet", "in_channels": IN_CHANNELS,
                         "widths": list(DEFAULT_WIDTHS), "context_slices": CONTEXT_SLICES,
                         "windows_hu": [list(w) for w in WINDOWS],
                         "parameters": count_parameters(model)},
        "working_size": WORKING_SIZE,
        "candidate_threshold": DEFAULT_CANDIDATE_THRESHOLD,
        "calibration": calibration.to_json(),
        "training": {"seed": seed, "epochs": epochs, "steps_per_epoch": steps,
                     "batch_size": batch_size, "patch_size": PATCH_SIZE,
                     "learning_rate": learning_rate, "final_epoch_loss": round(running / steps, 5),
                     "threads": threads, "wall_time_s": round(wall, 1)},
        "training_data": {
            "generator": "synthetic.phantoms.make_ct_phantom",
            "phantom_shape": [PHANTOM_SLICES, PHANTOM_SIZE, PHANTOM_SIZE],
            "train_seeds": [train_seeds[0], train_seeds[-1]],
            "n_train_phantoms": n_train_phantoms,
            "train_lesion_count_rule": "ai_services.training.training_lesion_count(seed)",
            "n_train_lesions": int(sum(training_lesion_count(s) for s in train_seeds)),
            "validation_seeds": [validation_seeds[0], validation_seeds[-1]] if validation_seeds else [],
            "heldout_seeds": [heldout_seeds[0], heldout_seeds[-1]] if heldout_seeds else [],
            **({"dataset": {**(dataset or {}), "slices": len(dataset_slices), "patch_fraction": round(fraction, 3),
                            "patches_drawn": extra.drawn}} if extra is not None else {}),
        },
        "heldout_metrics": metrics.to_json() if metrics else None,
        "hit_rule": "centre in lesion mask on a spanned slice, or within max(radius, 3 mm) in-plane "
                    "on a spanned slice intersecting the lesion; repeats on one lesion ignored",
    }
    manifest_path = manifest_path_for(weights_path)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %s (sha256 %s) in %.0f s", weights_path, digest[:12], wall)
    return TrainingResult(weights_path, manifest_path, digest, metrics, calibration, wall,  # type: ignore[arg-type]
                          running / steps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the synthetic-phantom lesion detector.")
    parser.add_argument("--out", type=Path, default=Path("ai_services/weights"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-phantoms", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--validation-phantoms", type=int, default=16)
    parser.add_argument("--heldout-phantoms", type=int, default=20)
    parser.add_argument("--name", default=f"{MODEL_NAME}-v{MODEL_VERSION}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = train_model(args.out, seed=args.seed, n_train_phantoms=args.train_phantoms,
                         epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, name=args.name,
                         n_validation_phantoms=args.validation_phantoms,
                         n_heldout_phantoms=args.heldout_phantoms)
    print(json.dumps({"weights": str(result.weights_path), "sha256": result.sha256,
                      "wall_time_s": round(result.wall_time_s, 1),
                      "heldout_metrics": result.metrics.to_json() if result.metrics else None},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
