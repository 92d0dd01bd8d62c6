"""Binary masks of partner segmentation models, kept as run lengths so a run's JSON `outputs` can
hold them (ai_services.package_runs) and the DICOM Segmentation can be made from them again
whenever the report changes (ai_services.dicom_outputs).

A mask is a (rows, columns) boolean array on one study slice. Its run lengths are taken over the
pixels in row-major order, alternating background and foreground, starting with background (so
the first run is 0 when the top-left pixel is foreground); they add up to rows x columns. A
512 x 512 slice with one blob takes a few hundred numbers, not 262,144.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


class MaskError(ValueError):
    """Run lengths that do not describe a mask of the given size."""


def encode_mask(mask: np.ndarray) -> list[int]:
    """The run lengths of a 2-D boolean mask (background first)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    # Where the value changes, plus the two ends: the run boundaries.
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def decode_mask(runs: Sequence[int], rows: int, columns: int) -> np.ndarray:
    """The (rows, columns) boolean mask the run lengths describe."""
    lengths = np.asarray(runs, dtype=np.int64)
    if (lengths < 0).any() or int(lengths.sum()) != rows * columns:
        raise MaskError(f"run lengths add up to {int(lengths.sum())}, not {rows} x {columns} = {rows * columns} pixels")
    values = np.arange(lengths.size) % 2 == 1  # background, foreground, background, ...
    return np.repeat(values, lengths).reshape(rows, columns)
