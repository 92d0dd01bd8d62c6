"""Lesion detection on CT volumes: weights in, ``Detection`` dataclasses out.

Pure torch/numpy (no Flask, no database) so it can be loaded once per worker and tested directly.
Pipeline:

1. preprocess: a model with a ``PhysicalGrid`` in its manifest (v2) resamples every slice to fixed
   millimetre pixels and takes its neighbours a fixed distance in mm away, interpolated between
   slices, so any matrix, pixel spacing or slice interval reads the same; a single-grid model (v1)
   resizes slices larger than its working size (256) with area averaging and takes the adjacent
   slices. Both window the HU values through the lung and soft-tissue windows to [0, 1] and stack
   each slice with its two neighbours (2.5D input, see ``ai_services.network``);
2. run the U-Net in batches under ``torch.inference_mode()`` (thread count is the caller's choice);
3. upsample the per-pixel lesion probability back to the original grid, threshold it at the
   candidate threshold from the manifest, and split it into 3D connected components
   (6-connectivity, our own union-find in numpy; scipy is not a dependency);
4. one ``Detection`` per component, with a calibrated confidence (Platt scaling fitted on
   validation phantoms at training time, on the component's size in voxels for v1 and in mm^3 for
   v2; parameters live in the manifest). ``LesionDetector.reported`` keeps those at or above the
   model's report threshold (its operating point), which is what a radiologist is shown.

Measurements: ``diameter_mm`` is the longest in-plane extent of the component on its key slice
(the slice with the largest area), i.e. max(bbox width x column spacing, bbox height x row spacing),
which is how radiologists measure a nodule's long axis on an axial image. ``bbox`` is
(x0, y0, x1, y1) in original pixel coordinates with x1/y1 exclusive, like Python slices.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ai_services.network import CONTEXT_SLICES, WINDOWS, LesionUNet, fuse_for_inference
from ai_services.series_reader import CtVolume

logger = logging.getLogger(__name__)

WORKING_SIZE = 256
DEFAULT_CANDIDATE_THRESHOLD = 0.3
ProgressCallback = Callable[[int, int], None]


class WeightsIntegrityError(RuntimeError):
    """Raised when weights are missing, lack a manifest, or do not match the manifest's sha256."""


class InferenceInputError(ValueError):
    """Raised when the volume or spacing given to the detector is unusable."""


SIZE_UNITS = ("voxels", "mm3")


@dataclass(frozen=True)
class Calibration:
    """Platt scaling: confidence = sigmoid(coef_logit * logit(max_prob) + coef_size * log(size) + intercept).

    ``size_unit`` says what ``size`` is: "voxels" (v1, fitted on one grid, so the same lesion scored
    differently on a finer grid) or "mm3", the component's physical volume, which is the same
    lesion's size on any grid.
    """

    coef_logit: float = 1.0
    coef_size: float = 0.0
    intercept: float = 0.0
    size_unit: str = "voxels"

    def apply(self, max_probability: np.ndarray, size: np.ndarray) -> np.ndarray:
        z = (self.coef_logit * logit(max_probability) + self.coef_size * np.log(np.maximum(size, 1e-6))
             + self.intercept)
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict[str, object]:
        size = "log(n_voxels)" if self.size_unit == "voxels" else "log(volume_mm3)"
        return {"method": "platt", "features": ["logit(max_probability)", size],
                "coef_logit": self.coef_logit, "coef_size": self.coef_size,
                "intercept": self.intercept, "size_unit": self.size_unit}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Calibration:
        unit = str(data.get("size_unit", "voxels"))
        if unit not in SIZE_UNITS:
            raise WeightsIntegrityError(f"unknown calibration size unit {unit!r}")
        return cls(float(data["coef_logit"]), float(data["coef_size"]),  # type: ignore[arg-type]
                   float(data["intercept"]), unit)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PhysicalGrid:
    """How a grid-independent model reads a volume: every slice resampled to ``in_plane_mm`` pixels,
    and its neighbours taken ``context_mm`` above and below (interpolated between slices), whatever
    the scan's own spacing and slice interval. In the manifest as ``preprocessing``."""

    in_plane_mm: float
    context_mm: float

    def to_json(self) -> dict[str, object]:
        return {"in_plane_spacing_mm": self.in_plane_mm, "context_offset_mm": self.context_mm}

    @classmethod
    def from_json(cls, data: object) -> PhysicalGrid | None:
        if not isinstance(data, dict):
            return None
        grid = cls(float(data["in_plane_spacing_mm"]), float(data["context_offset_mm"]))
        if grid.in_plane_mm <= 0 or grid.context_mm < 0:
            raise WeightsIntegrityError(f"invalid preprocessing {data!r}")
        return grid


@dataclass(frozen=True)
class Detection:
    """One suspected lesion (a 3D connected component of the probability map)."""

    slice_index: int  # key slice: the one where the component has the largest area
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1) on the key slice, x1/y1 exclusive
    centre_xy: tuple[float, float]  # centroid on the key slice, original pixel coordinates
    diameter_mm: float  # longest in-plane extent on the key slice
    area_mm2: float  # area on the key slice
    n_slices: int
    first_slice: int
    last_slice: int
    max_probability: float  # raw network output, uncalibrated
    n_voxels: int
    confidence: float  # calibrated probability that this is a true lesion


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path_for(weights_path: Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def window_hu(hu: torch.Tensor) -> torch.Tensor:
    """(N, H, W) HU -> (N, len(WINDOWS), H, W) in [0, 1]."""
    channels = [((hu - (c - w / 2)) / w).clamp_(0.0, 1.0) for c, w in WINDOWS]
    return torch.stack(channels, dim=1)


def stack_context(windowed: torch.Tensor, indices: range | list[int]) -> torch.Tensor:
    """Gather 2.5D inputs for ``indices`` from a (S, C, H, W) windowed volume (edges replicated)."""
    half = CONTEXT_SLICES // 2
    n = windowed.shape[0]
    parts = []
    for i in indices:
        neighbours = [min(max(i + k, 0), n - 1) for k in range(-half, half + 1)]
        parts.append(windowed[neighbours].reshape(-1, *windowed.shape[2:]))
    return torch.stack(parts)


def resample_in_plane(hu: torch.Tensor, spacing_mm: tuple[float, float], target_mm: float) -> torch.Tensor:
    """(S, H, W) -> (S, h, w) with pixels of ``target_mm`` (antialiased bilinear both ways)."""
    rows, cols = hu.shape[1:]
    size = (max(round(rows * spacing_mm[0] / target_mm), 8), max(round(cols * spacing_mm[1] / target_mm), 8))
    if size == (rows, cols):
        return hu
    return F.interpolate(hu[:, None], size=size, mode="bilinear", antialias=True, align_corners=False)[:, 0]


def physical_context(windowed: torch.Tensor, indices: range | list[int], slice_spacing_mm: float,
                     context_mm: float) -> torch.Tensor:
    """2.5D inputs whose neighbours lie ``context_mm`` above and below each slice in ``indices``.

    ``windowed`` is (S, C, H, W). Neighbours between two slices are interpolated linearly; beyond
    the first and last slice the edge slice is repeated. Returns (len(indices), 3 * C, H, W) in the
    order (below, slice, above), like ``stack_context``.
    """
    n = windowed.shape[0]
    step = context_mm / slice_spacing_mm if slice_spacing_mm > 0 else 1.0
    parts = []
    for i in indices:
        planes = []
        for position in (i - step, float(i), i + step):
            position = min(max(position, 0.0), n - 1.0)
            low = int(math.floor(position))
            high = min(low + 1, n - 1)
            weight = position - low
            plane = windowed[low] if weight < 1e-6 else torch.lerp(windowed[low], windowed[high], weight)
            planes.append(plane)
        parts.append(torch.cat(planes, dim=0))
    return torch.stack(parts)


def label_components_3d(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 6-connected components of a boolean 3D mask; returns (int32 labels, count).

    Union-find with pointer jumping, vectorised over the edges between neighbouring foreground
    voxels; converges in a few rounds even for large components. Labels are 1..count in order of
    each component's first voxel (C order), 0 is background.
    """
    if mask.ndim != 3:
        raise InferenceInputError(f"expected a 3D mask, got shape {mask.shape}")
    flat = np.flatnonzero(mask)
    labels = np.zeros(mask.shape, dtype=np.int32)
    if flat.size == 0:
        return labels, 0
    index_of = np.full(mask.size, -1, dtype=np.int64)
    index_of[flat] = np.arange(flat.size)
    index_volume = index_of.reshape(mask.shape)
    edges_u, edges_v = [], []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis] = slice(None, -1)
        b[axis] = slice(1, None)
        both = mask[tuple(a)] & mask[tuple(b)]
        edges_u.append(index_volume[tuple(a)][both])
        edges_v.append(index_volume[tuple(b)][both])
    u = np.concatenate(edges_u)
    v = np.concatenate(edges_v)
    parent = np.arange(flat.size, dtype=np.int64)
    while u.size:
        pu, pv = parent[u], parent[v]
        low = np.minimum(pu, pv)
        np.minimum.at(parent, pu, low)
        np.minimum.at(parent, pv, low)
        while True:  # pointer jumping until every node points at a root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        unresolved = parent[u] != parent[v]
        u, v = u[unresolved], v[unresolved]
    roots, compact = np.unique(parent, return_inverse=True)
    labels.reshape(-1)[flat] = compact.astype(np.int32) + 1
    return labels, int(roots.size)


def extract_detections(
    probability: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    *,
    threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
    calibration: Calibration | None = None,
    slice_spacing_mm: float | None = None,
) -> list[Detection]:
    """Turn a (S, H, W) probability map into detections, most confident first.

    A calibration in physical units needs ``slice_spacing_mm`` to know each voxel's volume.
    """
    row_sp, col_sp = pixel_spacing_mm
    labels, count = label_components_3d(probability >= threshold)
    if count == 0:
        return []
    flat_labels = labels.reshape(-1)
    fg = np.flatnonzero(flat_labels)
    comp = flat_labels[fg] - 1
    z, y, x = np.unravel_index(fg, labels.shape)
    n_voxels = np.bincount(comp, minlength=count)
    max_prob = np.zeros(count, dtype=np.float64)
    np.maximum.at(max_prob, comp, probability.reshape(-1)[fg])
    # Area per (component, slice) to find each component's key slice.
    n_slices_total = labels.shape[0]
    per_slice = np.bincount(comp * n_slices_total + z, minlength=count * n_slices_total)
    per_slice = per_slice.reshape(count, n_slices_total)
    key_slice = per_slice.argmax(axis=1)
    calibration = calibration or Calibration()
    if calibration.size_unit == "mm3":
        if not slice_spacing_mm or slice_spacing_mm <= 0:
            raise InferenceInputError("a calibration in mm3 needs the slice spacing")
        size = n_voxels.astype(np.float64) * row_sp * col_sp * slice_spacing_mm
    else:
        size = n_voxels.astype(np.float64)
    confidence = calibration.apply(max_prob, size)

    order = np.argsort(comp, kind="stable")
    starts = np.searchsorted(comp[order], np.arange(count))
    ends = np.append(starts[1:], comp.size)
    detections = []
    for k in range(count):
        sel = order[starts[k]:ends[k]]
        zk, yk, xk = z[sel], y[sel], x[sel]
        on_key = zk == key_slice[k]
        ys, xs = yk[on_key], xk[on_key]
        x0, x1 = int(xs.min()), int(xs.max()) + 1
        y0, y1 = int(ys.min()), int(ys.max()) + 1
        detections.append(Detection(
            slice_index=int(key_slice[k]),
            bbox=(x0, y0, x1, y1),
            centre_xy=(float(xs.mean()), float(ys.mean())),
            diameter_mm=round(max((x1 - x0) * col_sp, (y1 - y0) * row_sp), 2),
            area_mm2=round(float(on_key.sum()) * row_sp * col_sp, 2),
            n_slices=int(np.count_nonzero(per_slice[k])),
            first_slice=int(zk.min()),
            last_slice=int(zk.max()),
            max_probability=float(max_prob[k]),
            n_voxels=int(n_voxels[k]),
            confidence=float(confidence[k]),
        ))
    detections.sort(key=lambda d: d.confidence, reverse=True)
    return detections


class LesionDetector:
    """A loaded, verified lesion detector. Create with ``LesionDetector.load``."""

    def __init__(self, model: LesionUNet, manifest: dict[str, object]) -> None:
        self.model = fuse_for_inference(model).to(memory_format=torch.channels_last)
        self.manifest = manifest
        calibration = manifest.get("calibration")
        self.calibration = Calibration.from_json(calibration) if calibration else Calibration()  # type: ignore[arg-type]
        self.threshold = float(manifest.get("candidate_threshold", DEFAULT_CANDIDATE_THRESHOLD))  # type: ignore[arg-type]
        self.working_size = int(manifest.get("working_size", WORKING_SIZE))  # type: ignore[arg-type]
        self.grid = PhysicalGrid.from_json(manifest.get("preprocessing"))
        # Candidates below this confidence are not reported as findings (v2: the operating point
        # fixed on validation scans, at most 1 false positive per scan); 0 reports every candidate.
        self.report_threshold = float(manifest.get("report_threshold", 0.0))  # type: ignore[arg-type]

    @classmethod
    def load(cls, weights_path: Path) -> LesionDetector:
        """Load weights after checking their sha256 against the manifest json next to them."""
        weights_path = Path(weights_path)
        manifest_path = manifest_path_for(weights_path)
        if not weights_path.is_file():
            raise WeightsIntegrityError(f"weights file not found: {weights_path}")
        if not manifest_path.is_file():
            raise WeightsIntegrityError(f"manifest not found next to weights: {manifest_path}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise WeightsIntegrityError(f"{manifest_path}: invalid JSON ({exc})") from exc
        expected = manifest.get("sha256")
        actual = sha256_of_file(weights_path)
        if expected != actual:
            raise WeightsIntegrityError(
                f"{weights_path}: sha256 {actual} does not match manifest {manifest_path} ({expected})"
            )
        arch = manifest.get("architecture", {})
        model = LesionUNet(int(arch.get("in_channels", CONTEXT_SLICES * len(WINDOWS))),
                           tuple(arch.get("widths", (8, 16, 32, 48))))
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        logger.info("loaded %s v%s (sha256 %s)", manifest.get("model_name"), manifest.get("version"),
                    actual[:12])
        return cls(model, manifest)

    @classmethod
    def from_model(cls, model: LesionUNet, *, calibration: Calibration | None = None,
                   threshold: float = DEFAULT_CANDIDATE_THRESHOLD, grid: PhysicalGrid | None = None) -> LesionDetector:
        """Wrap an in-memory model (training/calibration); the model is copied, not modified."""
        copy = LesionUNet(model.in_channels, model.widths)
        copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        manifest: dict[str, object] = {"candidate_threshold": threshold}
        if calibration is not None:
            manifest["calibration"] = calibration.to_json()
        if grid is not None:
            manifest["preprocessing"] = grid.to_json()
        return cls(copy, manifest)

    def predict_probabilities(
        self,
        volume: CtVolume | np.ndarray,
        *,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
        pixel_spacing_mm: tuple[float, float] | None = None,
        slice_spacing_mm: float | None = None,
    ) -> np.ndarray:
        """Per-voxel lesion probability, float32 (S, H, W) on the input grid.

        A model with a physical grid (``PhysicalGrid``) needs the spacings; a ``CtVolume`` brings
        its own.
        """
        hu = volume.hu if isinstance(volume, CtVolume) else np.asarray(volume)
        if hu.ndim != 3 or min(hu.shape) < 1:
            raise InferenceInputError(f"expected a (slices, rows, columns) volume, got shape {hu.shape}")
        if batch_size < 1:
            raise InferenceInputError(f"batch_size must be >= 1, got {batch_size}")
        n_slices, rows, cols = hu.shape
        hu_t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))
        dz = 1.0
        if self.grid is not None:
            spacing, dz = _spacings(volume, pixel_spacing_mm, slice_spacing_mm)
            hu_t = resample_in_plane(hu_t, spacing, self.grid.in_plane_mm)
        else:
            scale = min(1.0, self.working_size / max(rows, cols))
            if scale < 1.0:
                work_size = (max(round(rows * scale), 8), max(round(cols * scale), 8))
                hu_t = F.interpolate(hu_t[:, None], size=work_size, mode="area")[:, 0]
        h, w = hu_t.shape[1:]
        resampled = (h, w) != (rows, cols)
        pad_h, pad_w = (-h) % 8, (-w) % 8
        if pad_h or pad_w:
            hu_t = F.pad(hu_t, (0, pad_w, 0, pad_h), value=-1000.0)
        windowed = window_hu(hu_t)
        out = torch.empty((n_slices, h, w), dtype=torch.float32)
        total = math.ceil(n_slices / batch_size)
        with torch.inference_mode():
            for b, start in enumerate(range(0, n_slices, batch_size)):
                idx = range(start, min(start + batch_size, n_slices))
                x = (physical_context(windowed, idx, dz, self.grid.context_mm) if self.grid is not None
                     else stack_context(windowed, idx)).contiguous(memory_format=torch.channels_last)
                out[start:idx.stop] = torch.sigmoid(self.model(x))[:, 0, :h, :w]
                if progress is not None:
                    progress(b + 1, total)
            if resampled:
                out = F.interpolate(out[:, None], size=(rows, cols), mode="bilinear",
                                    align_corners=False)[:, 0]
        return out.numpy()

    def reported(self, detections: list[Detection]) -> list[Detection]:
        """The detections a radiologist is shown: those at or above the model's operating point."""
        return [d for d in detections if d.confidence >= self.report_threshold]

    def detect(
        self,
        volume: CtVolume | np.ndarray,
        pixel_spacing_mm: tuple[float, float] | float | None = None,
        *,
        slice_spacing_mm: float | None = None,
        batch_size: int = 8,
        progress: ProgressCallback | None = None,
    ) -> list[Detection]:
        """Find suspected lesions; most confident first.

        ``pixel_spacing_mm`` is (row, column) or one number; for a ``CtVolume`` it defaults to the
        volume's own spacing.
        """
        if pixel_spacing_mm is None:
            if not isinstance(volume, CtVolume):
                raise InferenceInputError("pixel_spacing_mm is required for a bare array")
            spacing = volume.pixel_spacing_mm
        elif isinstance(pixel_spacing_mm, (int, float)):
            spacing = (float(pixel_spacing_mm), float(pixel_spacing_mm))
        else:
            spacing = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
        if spacing[0] <= 0 or spacing[1] <= 0:
            raise InferenceInputError(f"pixel spacing must be positive, got {pixel_spacing_mm!r}")
        dz = slice_spacing_mm if slice_spacing_mm is not None else (
            volume.slice_thickness_mm if isinstance(volume, CtVolume) else None)
        if dz is not None and dz <= 0:
            raise InferenceInputError(f"slice spacing must be positive, got {dz!r}")
        probability = self.predict_probabilities(volume, batch_size=batch_size, progress=progress,
                                                 pixel_spacing_mm=spacing, slice_spacing_mm=dz)
        return extract_detections(probability, spacing, threshold=self.threshold,
                                  calibration=self.calibration, slice_spacing_mm=dz)


def _spacings(volume: CtVolume | np.ndarray, pixel_spacing_mm: tuple[float, float] | None,
              slice_spacing_mm: float | None) -> tuple[tuple[float, float], float]:
    if isinstance(volume, CtVolume):
        pixel_spacing_mm = pixel_spacing_mm or volume.pixel_spacing_mm
        slice_spacing_mm = slice_spacing_mm or volume.slice_thickness_mm
    if pixel_spacing_mm is None or slice_spacing_mm is None:
        raise InferenceInputError("this model reads volumes on a physical grid: give the pixel and slice spacing")
    if min(pixel_spacing_mm) <= 0 or slice_spacing_mm <= 0:
        raise InferenceInputError(f"spacings must be positive, got {pixel_spacing_mm!r} and {slice_spacing_mm!r}")
    return (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])), float(slice_spacing_mm)
