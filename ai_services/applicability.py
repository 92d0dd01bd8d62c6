"""Whether the lesion detector may read a series at all: its intended use, checked before inference.

The model was trained and evaluated on one kind of image (axial synthetic chest CT on one grid); run
on anything else it still answers, with confident nonsense (an NM image got a 95 mm "finding" at
0.88). So before inference the series is held against the ``intended_use.validated_range`` block of
the model's manifest, first on its DICOM headers (modality, SOP class, localizer, orientation, slice
count, thickness and spacing, pixel spacing, field of view, body part), then on its pixels: a
volume whose Hounsfield statistics are not those of CT (no air, no soft tissue, values beyond the
CT range) is refused even when its headers say CT.

Pure pydicom and numpy: headers and a ``CtVolume`` in, an ``Applicability`` out. The first failed
check is the reason, worded for the report ("AI not applicable: <reason>").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom

from ai_services.series_reader import CtVolume

logger = logging.getLogger(__name__)

NOT_APPLICABLE_PREFIX = "AI not applicable: "


class IntendedUseMissing(ValueError):
    """The model's manifest has no ``intended_use.validated_range``: nothing to check a series against."""


@dataclass(frozen=True)
class Applicability:
    """The gate's verdict: ``reason`` is None when the model may read the series."""

    reason: str | None = None
    check: str | None = None  # which check refused it: "modality", "sop-class", "pixels", ...

    @property
    def applicable(self) -> bool:
        return self.reason is None

    @property
    def label(self) -> str:
        return "AI applicable" if self.reason is None else f"{NOT_APPLICABLE_PREFIX}{self.reason}"


APPLICABLE = Applicability()


@dataclass(frozen=True)
class HuStatisticsRange:
    """What the voxel values of a CT volume inside the validated range look like (see the manifest's note)."""

    padding_below_hu: float
    max_padding_fraction: float
    air_hu: tuple[float, float]
    air_fraction: tuple[float, float]
    soft_tissue_hu: tuple[float, float]
    soft_tissue_fraction: tuple[float, float]
    bone_from_hu: float
    max_bone_fraction: float
    p01_hu_at_most: float
    p999_hu_at_most: float


@dataclass(frozen=True)
class ValidatedRange:
    """The manifest's ``intended_use.validated_range``: the only images the model's metrics speak for."""

    modalities: frozenset[str]
    sop_class_uids: Mapping[str, str]  # UID -> name
    excluded_image_types: frozenset[str]
    body_parts: frozenset[str]
    max_tilt_from_axial_degrees: float
    slice_thickness_mm: tuple[float, float]
    slice_spacing_mm: tuple[float, float]
    pixel_spacing_mm: tuple[float, float]
    min_field_of_view_mm: float
    min_slices: int
    hu: HuStatisticsRange

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ValidatedRange:
        block = (manifest.get("intended_use") or {}).get("validated_range")
        if not block:
            raise IntendedUseMissing(
                f"model {manifest.get('model_name')} {manifest.get('version')}: its manifest has no "
                "intended_use.validated_range, so no series can be said to be within it"
            )
        try:
            hu = block["hu_statistics"]
            return cls(
                modalities=frozenset(str(m).upper() for m in block["modalities"]),
                sop_class_uids=dict(block["sop_class_uids"]),
                excluded_image_types=frozenset(str(t).upper() for t in block.get("excluded_image_types", ())),
                body_parts=frozenset(str(b).upper() for b in block.get("body_parts", ())),
                max_tilt_from_axial_degrees=float(block["max_tilt_from_axial_degrees"]),
                slice_thickness_mm=_pair(block["slice_thickness_mm"]),
                slice_spacing_mm=_pair(block["slice_spacing_mm"]),
                pixel_spacing_mm=_pair(block["pixel_spacing_mm"]),
                min_field_of_view_mm=float(block["min_field_of_view_mm"]),
                min_slices=int(block["min_slices"]),
                hu=HuStatisticsRange(
                    padding_below_hu=float(hu["padding_below_hu"]),
                    max_padding_fraction=float(hu["max_padding_fraction"]),
                    air_hu=_pair(hu["air_hu"]), air_fraction=_pair(hu["air_fraction"]),
                    soft_tissue_hu=_pair(hu["soft_tissue_hu"]), soft_tissue_fraction=_pair(hu["soft_tissue_fraction"]),
                    bone_from_hu=float(hu["bone_from_hu"]), max_bone_fraction=float(hu["max_bone_fraction"]),
                    p01_hu_at_most=float(hu["p01_hu_at_most"]), p999_hu_at_most=float(hu["p999_hu_at_most"]),
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntendedUseMissing(f"intended_use.validated_range is incomplete or malformed ({exc!r})") from exc


def _pair(value: Any) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    return low, high


def _refused(check: str, reason: str) -> Applicability:
    logger.info("AI not applicable (%s): %s", check, reason)
    return Applicability(reason=reason, check=check)


def _mm(value: float) -> str:
    return f"{value:g} mm"


def _range(bounds: tuple[float, float]) -> str:
    return f"{bounds[0]:g}-{bounds[1]:g} mm"


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _floats(ds: pydicom.Dataset, keyword: str) -> list[float] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        return [float(v) for v in items]
    except (TypeError, ValueError):
        return None


def check_headers(headers: Sequence[pydicom.Dataset], valid: ValidatedRange) -> Applicability:
    """The header checks, on every slice's dataset (pixel data may be absent: read with
    ``stop_before_pixels``). The order puts the most basic reason first: an MR series is refused
    for being MR, not for its slice thickness."""
    if not headers:
        return _refused("slices", "the series has no images")
    first = headers[0]
    modality = str(first.get("Modality", "") or "").upper()
    if modality not in valid.modalities:
        return _refused("modality", f"modality {modality or 'missing'}; the model reads {', '.join(sorted(valid.modalities))} only")
    sop_classes = {str(ds.get("SOPClassUID", "")) for ds in headers}
    unsupported = sorted(uid for uid in sop_classes if uid not in valid.sop_class_uids)
    if unsupported:
        uid = unsupported[0]
        name = getattr(pydicom.uid.UID(uid), "name", uid) if uid else "missing"
        allowed = ", ".join(valid.sop_class_uids.values())
        return _refused("sop-class", f"SOP class {name} ({uid}); the model reads {allowed} only")
    for ds in headers:
        image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
        excluded = sorted(image_type & valid.excluded_image_types)
        if excluded:
            return _refused("image-type", f"image type {excluded[0]} (a scout view, not a cross-section)")
    orientation = _floats(first, "ImageOrientationPatient")
    if orientation is None or len(orientation) != 6:
        return _refused("orientation", "no ImageOrientationPatient, so the plane cannot be checked")
    normal = np.cross(np.array(orientation[:3]), np.array(orientation[3:]))
    norm = float(np.linalg.norm(normal))
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])) / norm))) if norm > 0 else 90.0
    if tilt > valid.max_tilt_from_axial_degrees:
        return _refused("orientation", f"{_plane_name(normal)} images ({tilt:.0f} degrees from axial); "
                                       f"the model reads axial images only (within {valid.max_tilt_from_axial_degrees:g} degrees)")
    if len(headers) < valid.min_slices:
        return _refused("slices", f"{len(headers)} slice{'' if len(headers) == 1 else 's'}; the model needs at least {valid.min_slices}")
    thickness = _floats(first, "SliceThickness")
    if thickness and not _within(thickness[0], valid.slice_thickness_mm):
        return _refused("slice-thickness", f"slice thickness {_mm(thickness[0])} is outside the validated {_range(valid.slice_thickness_mm)}")
    spacing = _floats(first, "PixelSpacing")
    if spacing is None or len(spacing) != 2 or min(spacing) <= 0:
        return _refused("pixel-spacing", "no usable PixelSpacing, so sizes cannot be measured")
    rows, columns = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    field_of_view = min(rows * spacing[0], columns * spacing[1])
    if field_of_view < valid.min_field_of_view_mm:
        return _refused("field-of-view", f"field of view {field_of_view:.0f} mm ({columns} x {rows} px) is smaller than "
                                         f"the validated {valid.min_field_of_view_mm:g} mm (a crop, not a whole chest)")
    if not all(_within(s, valid.pixel_spacing_mm) for s in spacing):
        return _refused("pixel-spacing", f"pixel spacing {spacing[0]:g} x {spacing[1]:g} mm is outside the validated "
                                         f"{_range(valid.pixel_spacing_mm)}")
    body_part = str(first.get("BodyPartExamined", "") or "").upper()
    if body_part and valid.body_parts and body_part not in valid.body_parts:
        return _refused("body-part", f"body part {body_part}; the model was validated on {', '.join(sorted(valid.body_parts))}")
    return APPLICABLE


def _plane_name(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def check_volume(volume: CtVolume, valid: ValidatedRange) -> Applicability:
    """The checks on the loaded volume: slice spacing from the positions, and an out-of-distribution
    check on the Hounsfield statistics (the headers can lie; the pixels cannot)."""
    if volume.hu.shape[0] < valid.min_slices:
        return _refused("slices", f"{volume.hu.shape[0]} slices; the model needs at least {valid.min_slices}")
    if not _within(volume.slice_thickness_mm, valid.slice_spacing_mm):
        return _refused("slice-spacing", f"slice spacing {_mm(round(volume.slice_thickness_mm, 2))} is outside the "
                                         f"validated {_range(valid.slice_spacing_mm)}")
    return check_pixels(volume.hu, valid.hu)


@dataclass(frozen=True)
class HuStatistics:
    padding_fraction: float
    air_fraction: float
    soft_tissue_fraction: float
    bone_fraction: float
    p01_hu: float
    p999_hu: float


def hu_statistics(hu: np.ndarray, expected: HuStatisticsRange) -> HuStatistics:
    """Fractions of air, soft tissue and bone among the reconstructed voxels, and the value range.

    Subsampled (every other voxel in-plane) to stay cheap on 512 x 512 studies."""
    sample = np.asarray(hu[:, ::2, ::2], dtype=np.float32).reshape(-1)
    padding = sample < expected.padding_below_hu
    inside = sample[~padding]
    if inside.size == 0:
        return HuStatistics(1.0, 0.0, 0.0, 0.0, float("nan"), float("nan"))

    def fraction(low: float, high: float) -> float:
        return float(np.count_nonzero((inside >= low) & (inside <= high)) / inside.size)

    p01, p999 = np.percentile(inside, [1.0, 99.9])
    return HuStatistics(
        padding_fraction=float(padding.mean()),
        air_fraction=fraction(*expected.air_hu),
        soft_tissue_fraction=fraction(*expected.soft_tissue_hu),
        bone_fraction=float(np.count_nonzero(inside >= expected.bone_from_hu) / inside.size),
        p01_hu=float(p01), p999_hu=float(p999),
    )


def check_pixels(hu: np.ndarray, expected: HuStatisticsRange) -> Applicability:
    stats = hu_statistics(hu, expected)
    why = "the pixel values do not look like CT"
    if stats.padding_fraction > expected.max_padding_fraction:
        return _refused("pixels", f"{why}: {stats.padding_fraction:.0%} of voxels are below {expected.padding_below_hu:g} HU")
    if stats.p999_hu > expected.p999_hu_at_most:
        return _refused("pixels", f"{why}: values reach {stats.p999_hu:.0f}, beyond the CT range (at most {expected.p999_hu_at_most:g} HU)")
    if not _within(stats.air_fraction, expected.air_fraction):
        return _refused("pixels", f"{why}: {stats.air_fraction:.0%} air voxels (expected "
                                  f"{expected.air_fraction[0]:.0%}-{expected.air_fraction[1]:.0%})")
    if stats.p01_hu > expected.p01_hu_at_most:
        return _refused("pixels", f"{why}: the darkest voxels are {stats.p01_hu:.0f} HU, no air")
    if not _within(stats.soft_tissue_fraction, expected.soft_tissue_fraction):
        return _refused("pixels", f"{why}: {stats.soft_tissue_fraction:.0%} soft-tissue voxels (expected "
                                  f"{expected.soft_tissue_fraction[0]:.0%}-{expected.soft_tissue_fraction[1]:.0%})")
    if stats.bone_fraction > expected.max_bone_fraction:
        return _refused("pixels", f"{why}: {stats.bone_fraction:.0%} of voxels are bone-dense (at most "
                                  f"{expected.max_bone_fraction:.0%})")
    return APPLICABLE


def assess(headers: Sequence[pydicom.Dataset], volume: CtVolume | None, valid: ValidatedRange) -> Applicability:
    """Headers first; the volume (None when it could not be read as CT) only if they pass."""
    verdict = check_headers(headers, valid)
    if not verdict.applicable or volume is None:
        return verdict
    return check_volume(volume, valid)
