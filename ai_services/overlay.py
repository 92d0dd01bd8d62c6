"""Key-image rendering: one CT slice, windowed, with finding boxes drawn over it, as PNG.

Pure: a DICOM file path and boxes in, PNG bytes out (no Flask, no database).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

# Window presets radiologists use: (centre, width) in HU.
WINDOWS = {"lung": (-600.0, 1500.0), "soft_tissue": (40.0, 400.0), "bone": (400.0, 1800.0)}


@dataclass(frozen=True)
class OverlayBox:
    x0: int
    y0: int
    x1: int
    y1: int
    label: str
    colour: str = "#ffcc00"


def slice_hu(path: Path) -> np.ndarray:
    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array.astype(np.float32)
    slope = float(getattr(dataset, "RescaleSlope", 1.0))
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0))
    return pixels * slope + intercept


# A free window's limits (HU), as the viewer's window/level drag may ask for.
WINDOW_CENTRE_RANGE = (-2000.0, 4000.0)
WINDOW_WIDTH_RANGE = (1.0, 8000.0)


def window(hu: np.ndarray, preset: str, centre_width: tuple[float, float] | None = None) -> np.ndarray:
    """8-bit grey levels of `hu` in the preset window, or in `centre_width` (HU) when given."""
    if centre_width is not None:
        centre, width = centre_width
    else:
        try:
            centre, width = WINDOWS[preset]
        except KeyError as exc:
            raise ValueError(f"unknown window preset {preset!r}; expected one of {sorted(WINDOWS)}") from exc
    low = centre - width / 2
    scaled = np.clip((hu - low) / width, 0.0, 1.0)
    return (scaled * 255).astype(np.uint8)


def render_overlay(
    path: Path, boxes: list[OverlayBox], preset: str = "lung", centre_width: tuple[float, float] | None = None
) -> bytes:
    image = Image.fromarray(window(slice_hu(path), preset, centre_width)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for box in boxes:
        draw.rectangle([box.x0 - 2, box.y0 - 2, box.x1 + 1, box.y1 + 1], outline=box.colour, width=2)
        draw.text((box.x0, max(0, box.y0 - 12)), box.label, fill=box.colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
