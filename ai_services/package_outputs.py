"""How one case of a partner package's output becomes findings on the study's key slice: the one
set of rules for a run on a study (`ai_services.package_runs`) and for the held-out evaluation
(`ai_services.held_out`), so a package is scored by what it would add to a report.

By the manifest's `output.kind` (the input is the
`sandbox.study_inputs` view of the study, mapped back by `sandbox.input_geometry`):

- detection: a (1, C, rows, columns) map of per-pixel probabilities (0..1; the largest over C is
  read); each connected region at or over `FOREGROUND` is one finding with its box, size and
  highest probability as its confidence;
- classification: (1, classes) logits; one finding with the most probable class as its label and
  that probability as its confidence, boxed on the whole part of the key slice the model saw;
- segmentation: a map like a detection's; the region at or over `FOREGROUND` is one finding with
  its extent and its volume (pixels x the manifest's voxel size). The region itself is kept too,
  mapped onto the key slice's own pixels, as run lengths (ai_services.masks) in the run's
  `outputs["masks"]` (one entry per finding: its id, the slice's rows and columns, the runs), so
  the study's DICOM Segmentation (ai_services.dicom_outputs) can be made again from it whenever the
  report changes. In the JSON beside the run rather than a file: a mask of one slice is a few
  hundred numbers, and it then lives and goes with the run's row.

Pure: arrays and the manifest in, dataclasses out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ai_services.inference import extract_detections
from ai_services.masks import encode_mask
from ai_services.sandbox import InputGeometry

logger = logging.getLogger(__name__)

# A pixel of a detection or segmentation map at or over this probability is foreground.
FOREGROUND = 0.5
# The most findings one detection package adds to a report (its most confident ones).
MAX_DETECTIONS = 20


class PackageOutputError(ValueError):
    """A package's output does not have the shape its manifest's output kind promises."""


@dataclass(frozen=True)
class PackageFinding:
    """One finding read from a package's output, already on the study's key slice."""

    box: tuple[int, int, int, int]
    diameter_mm: float
    confidence: float | None
    label: str | None = None
    volume_mm3: float | None = None
    n_slices: int = 1
    # A segmentation's region on the key slice (study pixels), as run lengths (ai_services.masks).
    mask_runs: tuple[int, ...] | None = None


def class_probabilities(logits: np.ndarray) -> np.ndarray:
    """A classification's (classes,) logits as probabilities (softmax, steady for large logits)."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits)
    probabilities: np.ndarray = np.exp(shifted) / np.exp(shifted).sum()
    return probabilities


def findings_from_output(values: Sequence[float] | np.ndarray, shape: list[int], manifest: dict[str, Any],
                         geometry: InputGeometry, study_spacing_mm: tuple[float, float]) -> list[PackageFinding]:
    """The findings one case of a package's output says (see the module docstring for the rules)."""
    kind = manifest["output"]["kind"]
    array = np.asarray(values, dtype=np.float64)
    if array.size != math.prod(shape):
        raise PackageOutputError(f"{array.size} values for an output of shape {shape}")
    array = array.reshape(shape)
    row_mm, col_mm, slice_mm = (float(v) for v in manifest["input"]["spacing_mm"])
    if kind == "classification":
        classes = list(manifest["output"]["classes"])
        if array.shape != (1, len(classes)):
            raise PackageOutputError(f"a classification of {len(classes)} classes gave shape {list(array.shape)}")
        probabilities = class_probabilities(array[0])
        best = int(probabilities.argmax())
        rows, columns = (int(v) for v in manifest["input"]["size"])
        return [PackageFinding(box=geometry.to_study_box((0, 0, columns, rows)), diameter_mm=0.0,
                               confidence=round(float(probabilities[best]), 4), label=str(classes[best]))]
    if array.ndim != 4 or array.shape[0] != 1:
        raise PackageOutputError(f"a {kind} map must have shape (1, channels, rows, columns), got {list(array.shape)}")
    probability = np.clip(array[0].max(axis=0), 0.0, 1.0)
    if kind == "segmentation":
        mask = probability >= FOREGROUND
        if not mask.any():
            return []
        ys, xs = np.nonzero(mask)
        box = geometry.to_study_box((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        extent = max((xs.max() + 1 - xs.min()) * col_mm, (ys.max() + 1 - ys.min()) * row_mm)
        return [PackageFinding(box=box, diameter_mm=round(float(extent), 1),
                               confidence=round(float(probability[mask].mean()), 4), label="segmented region",
                               volume_mm3=round(float(mask.sum()) * row_mm * col_mm * slice_mm, 1),
                               mask_runs=tuple(encode_mask(geometry.to_study_mask(mask))))]
    detections = extract_detections(probability[np.newaxis], (row_mm, col_mm), threshold=FOREGROUND)
    found = []
    for detection in detections[:MAX_DETECTIONS]:
        box = geometry.to_study_box(detection.bbox)
        diameter = max((box[2] - box[0]) * study_spacing_mm[1], (box[3] - box[1]) * study_spacing_mm[0])
        found.append(PackageFinding(box=box, diameter_mm=round(diameter, 1),
                                    confidence=round(min(detection.max_probability, 1.0), 4)))
    return found
