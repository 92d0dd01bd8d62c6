"""Rendered images of stored instances (PS3.18 8.3.5, 10.4): one frame as an 8-bit image after
the modality LUT and a window, scaled to a viewport, encoded as JPEG or PNG.

Pure: a pydicom Dataset in, a PIL image or bytes out. `imaging_orders.archive.wado` loads,
authorises and audits.
"""

from __future__ import annotations

import logging
from io import BytesIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from werkzeug.http import parse_options_header

from hospital.errors import InvalidInput, NotAcceptable, NotFound, UnprocessableEntity

logger = logging.getLogger(__name__)

RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png")
THUMBNAIL_SIZE = (128, 128)  # a thumbnail fits in this unless a viewport says otherwise
MAX_VIEWPORT = 4096


def render_frame(ds: Dataset, frame: int, window: tuple[float, float] | None) -> Image.Image:
    """One frame as an 8-bit image: modality LUT, then the requested, stored or full-range window."""
    if "PixelData" not in ds:
        raise UnprocessableEntity("this instance has no pixel data to render")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise NotFound(f"frame {frame} does not exist; the instance has {frames}")
    try:
        pixels = ds.pixel_array
    except (ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError) as exc:
        raise UnprocessableEntity(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc
    if frames > 1:
        pixels = pixels[frame - 1]
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    center, width = window or _stored_window(ds) or _full_range(values)
    low = center - width / 2
    scaled = np.clip((values - low) / width * 255.0, 0, 255)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _stored_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError):
        return None
    return (c, w) if w > 0 else None


def _full_range(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


def fit_to_viewport(image: Image.Image, viewport: tuple[int, int] | None, *, enlarge: bool = True) -> Image.Image:
    """`image` scaled, aspect kept, to fit `viewport` (width, height); never enlarged unless `enlarge`."""
    if viewport is None:
        return image
    scale = min(viewport[0] / image.width, viewport[1] / image.height)
    if scale == 1 or (scale > 1 and not enlarge):
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_image(image: Image.Image, media_type: str, quality: int) -> bytes:
    buffer = BytesIO()
    if media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def window_parameter(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    pieces = value.split(",")
    try:
        center, width = float(pieces[0]), float(pieces[1])
    except (ValueError, IndexError) as exc:
        raise InvalidInput(f"window is 'center,width[,function]', got {value[:40]!r}") from exc
    if width <= 0:
        raise InvalidInput("window width must be positive")
    return center, width


def quality_parameter(value: str | None) -> int:
    if not value:
        return 90
    try:
        quality = int(value)
    except ValueError as exc:
        raise InvalidInput(f"quality is 1..100, got {value[:20]!r}") from exc
    if not 1 <= quality <= 100:
        raise InvalidInput(f"quality is 1..100, got {quality}")
    return quality


def viewport_parameter(value: str | None) -> tuple[int, int] | None:
    """`viewport=vw,vh` (PS3.18 8.3.5.1.3); the source-region form is not offered."""
    if not value:
        return None
    pieces = value.split(",")
    try:
        width, height = int(pieces[0]), int(pieces[1])
    except (ValueError, IndexError) as exc:
        raise InvalidInput(f"viewport is 'width,height' in pixels, got {value[:40]!r}") from exc
    if len(pieces) > 2:
        raise InvalidInput("viewport takes width,height only; a source region is not supported")
    if not (1 <= width <= MAX_VIEWPORT and 1 <= height <= MAX_VIEWPORT):
        raise InvalidInput(f"viewport width and height are 1..{MAX_VIEWPORT}, got {width},{height}")
    return width, height


def rendered_media_type(accept: str) -> str:
    """image/jpeg or image/png from an Accept header (bare or as a multipart/related type);
    image/jpeg when none is said (PS3.18 8.7.4 default)."""
    if not accept.strip():
        return "image/jpeg"
    ranked = []
    for position, media_range in enumerate(accept.split(",")):
        mimetype, params = parse_options_header(media_range)
        mimetype = mimetype.lower()
        if mimetype == "multipart/related":
            mimetype = params.get("type", "image/jpeg").lower()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            ranked.append((-q, position, mimetype))
    for _, _, mimetype in sorted(ranked):
        if mimetype in RENDERED_MEDIA_TYPES:
            return mimetype
        if mimetype in ("*/*", "image/*", "multipart/*"):
            return "image/jpeg"
    raise NotAcceptable(f"rendered images are {' or '.join(RENDERED_MEDIA_TYPES)}, not {accept[:80]!r}")
