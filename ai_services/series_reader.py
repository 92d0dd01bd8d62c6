"""Reads a CT DICOM series from files into a Hounsfield-unit volume for the AI models.

Pure pydicom and numpy: paths in, a ``CtVolume`` out. Files may arrive in any order (C-STORE gives
no ordering guarantee), so slices are sorted by their position along the slice normal, falling back
to InstanceNumber when geometry is missing; an InstanceNumber that is not a number counts as
missing. Every problem raises ``SeriesReadError`` naming the offending file and value, so the job
that called us can record exactly what was wrong.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

logger = logging.getLogger(__name__)


class SeriesReadError(ValueError):
    """Raised when a set of files cannot be read as one CT volume."""


@dataclass
class CtVolume:
    """A CT series as a volume: ``hu`` is float32 (slices, rows, columns) in slice order."""

    hu: np.ndarray
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    slice_thickness_mm: float
    sop_instance_uids: list[str]
    series_instance_uid: str


@dataclass(frozen=True)
class _Slice:
    path: Path
    dataset: pydicom.Dataset
    position: float | None
    instance_number: int | None


def read_ct_volume(paths: Sequence[Path]) -> CtVolume:
    """Read ``paths`` (one file per slice, any order) as a single volume in HU."""
    if not paths:
        raise SeriesReadError("no files given")
    slices = [_read_slice(Path(p)) for p in paths]

    first = slices[0]
    series_uid = str(first.dataset.get("SeriesInstanceUID", ""))
    for s in slices[1:]:
        other = str(s.dataset.get("SeriesInstanceUID", ""))
        if other != series_uid:
            raise SeriesReadError(f"{s.path}: SeriesInstanceUID {other!r} differs from {series_uid!r}")
    size = (int(first.dataset.Rows), int(first.dataset.Columns))
    for s in slices[1:]:
        other_size = (int(s.dataset.Rows), int(s.dataset.Columns))
        if other_size != size:
            raise SeriesReadError(f"{s.path}: slice size {other_size} differs from {size} in {first.path}")

    slices = _sort_slices(slices)
    hu = np.empty((len(slices), *size), dtype=np.float32)
    for i, s in enumerate(slices):
        hu[i] = _slice_hu(s)
    spacing = _pixel_spacing(first)
    return CtVolume(
        hu=hu,
        pixel_spacing_mm=spacing,
        slice_thickness_mm=_slice_thickness(slices),
        sop_instance_uids=[str(s.dataset.SOPInstanceUID) for s in slices],
        series_instance_uid=series_uid,
    )


def _read_slice(path: Path) -> _Slice:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise SeriesReadError(f"{path}: not a readable DICOM file ({exc})") from exc
    for keyword in ("Rows", "Columns", "PixelData", "SOPInstanceUID"):
        if keyword not in ds:
            raise SeriesReadError(f"{path}: missing {keyword}")
    position = None
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
        try:
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
            origin = np.array([float(v) for v in ds.ImagePositionPatient])
        except (TypeError, ValueError) as exc:
            raise SeriesReadError(f"{path}: bad geometry {ds.ImagePositionPatient!r} ({exc})") from exc
        if orientation.shape != (6,) or origin.shape != (3,):
            raise SeriesReadError(f"{path}: bad ImageOrientationPatient {list(orientation)!r}")
        normal = np.cross(orientation[:3], orientation[3:])
        position = float(origin @ normal)
    return _Slice(path, ds, position, _instance_number(ds))


def _instance_number(ds: pydicom.Dataset) -> int | None:
    """InstanceNumber when it is a number, else None: modalities send "A1" or "" in an IS, and an
    odd label must not stop the reader when positions order the slices anyway."""
    element = ds.get((0x0020, 0x0013))
    raw = element.value if element is not None else None
    if raw is None:
        return None
    try:
        number = float(str(raw).strip())
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _sort_slices(slices: list[_Slice]) -> list[_Slice]:
    if all(s.position is not None for s in slices):
        ordered = sorted(slices, key=lambda s: s.position)  # type: ignore[arg-type, return-value]
        positions = [s.position for s in ordered]
        for a, b in itertools.pairwise(ordered):
            if a.position == b.position:
                raise SeriesReadError(f"{b.path}: duplicate slice position {b.position} (also {a.path})")
        logger.debug("sorted %d slices by position %.2f..%.2f", len(ordered), positions[0], positions[-1])
        return ordered
    if all(s.instance_number is not None for s in slices):
        return sorted(slices, key=lambda s: s.instance_number)  # type: ignore[arg-type, return-value]
    missing = next(s for s in slices if s.instance_number is None)
    raise SeriesReadError(f"{missing.path}: neither ImagePositionPatient nor InstanceNumber to order by")


def _slice_hu(s: _Slice) -> np.ndarray:
    try:
        pixels = s.dataset.pixel_array
    except (AttributeError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise SeriesReadError(f"{s.path}: cannot decode pixel data ({exc})") from exc
    if pixels.ndim != 2:
        raise SeriesReadError(f"{s.path}: expected a single-frame image, got shape {pixels.shape}")
    try:
        slope = float(s.dataset.get("RescaleSlope", 1.0))
        intercept = float(s.dataset.get("RescaleIntercept", 0.0))
    except (TypeError, ValueError) as exc:
        raise SeriesReadError(f"{s.path}: bad rescale values ({exc})") from exc
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _pixel_spacing(s: _Slice) -> tuple[float, float]:
    value = s.dataset.get("PixelSpacing")
    try:
        row, col = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise SeriesReadError(f"{s.path}: bad or missing PixelSpacing {value!r}") from exc
    if row <= 0 or col <= 0:
        raise SeriesReadError(f"{s.path}: non-positive PixelSpacing {value!r}")
    return row, col


def _slice_thickness(ordered: list[_Slice]) -> float:
    """Slice spacing from positions when available (what geometry really is), else SliceThickness."""
    if len(ordered) > 1 and all(s.position is not None for s in ordered):
        gaps = np.diff([s.position for s in ordered])  # type: ignore[arg-type]
        return float(np.median(gaps))
    value = ordered[0].dataset.get("SliceThickness")
    try:
        return float(value) if value not in (None, "") else 1.0
    except (TypeError, ValueError) as exc:
        raise SeriesReadError(f"{ordered[0].path}: bad SliceThickness {value!r}") from exc


def read_series_headers(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    """Every file's header without its pixels, for checks that must not depend on decoding them
    (an NM or RT dose object is multi-frame and would fail ``read_ct_volume`` for the wrong reason)."""
    headers: list[pydicom.Dataset] = []
    for path in paths:
        try:
            headers.append(pydicom.dcmread(Path(path), stop_before_pixels=True))
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise SeriesReadError(f"{path}: not a readable DICOM file ({exc})") from exc
    return headers
