"""Whether an instance's pixel data is whole: the archive's check before it answers Success.

A modality deletes its copy once the archive says Success, so an image cut off in transit (a
broken file on a router, an interrupted export) must be refused, not kept as if whole. The check
uses only the data set's own Image Pixel module:

- native (uncompressed) syntaxes: the Pixel Data must be at least Rows x Columns x SamplesPerPixel
  x BitsAllocated/8 x NumberOfFrames bytes (pydicom's `get_expected_length`, which knows 1-bit
  packing and YBR_FULL_422 subsampling), plus the padding byte when that is odd;
- encapsulated (compressed) syntaxes: the fragments must be well formed and lie within the value,
  there must be at least one fragment per frame, and every frame must decode when pydicom has a
  decoder for the syntax. Where it has none (JPEG Lossless without pylibjpeg, say) the structure
  is all that is checked, and the instance carries a warning saying so.

Pure: a pydicom Dataset in, an `IncompletePixelData` out; `imaging_orders.archive.ingest` turns it
into the status the sender is answered with.
"""

from __future__ import annotations

import logging
import struct

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.pixels.utils import get_expected_length, get_nr_frames
from pydicom.uid import UID

from hospital.dicom_status import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS

logger = logging.getLogger(__name__)

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Type 1 attributes of the Image Pixel module without which the pixel data cannot be read.
_PIXEL_DESCRIPTION = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")
_ITEM_TAG = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD


class IncompletePixelData(ValueError):
    """The pixel data is not what the data set's own attributes say it is; retrying will not help."""

    def __init__(self, reason: str, dicom_status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dicom_status = dicom_status


def check_pixel_data(ds: Dataset, syntax: UID, warnings_out: list[str]) -> None:
    """Raise `IncompletePixelData` unless `ds`'s pixel data is whole (and decodes, if compressed).

    `ds` is a parsed data set with its pixel data, in `syntax`. A data set without pixel data (an
    SR, a KOS) passes. Checks that could not be made are appended to `warnings_out`.
    """
    keyword = next((k for k in PIXEL_DATA_KEYWORDS if k in ds), None)
    if keyword is None:
        return
    missing = [k for k in _PIXEL_DESCRIPTION if ds.get(k) in (None, "")]
    if missing:
        raise IncompletePixelData(
            f"{keyword} without {', '.join(missing)}: the image cannot be read", DATASET_DOES_NOT_MATCH_SOP_CLASS
        )
    try:
        frames = get_nr_frames(ds, warn=False)
        expected = get_expected_length(ds, "bytes")
    except (TypeError, ValueError) as exc:
        raise IncompletePixelData(f"the Image Pixel attributes are not usable: {exc}", DATASET_DOES_NOT_MATCH_SOP_CLASS) from exc
    if syntax.is_encapsulated and keyword == "PixelData":
        _check_encapsulated(ds, syntax, frames, warnings_out)
        return
    actual = len(ds[keyword].value or b"")
    if actual < expected:
        raise IncompletePixelData(
            f"cut off: {keyword} is {actual} bytes, {frames} frame(s) of {ds.Rows}x{ds.Columns} need {expected}",
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if actual > expected + (expected % 2):
        # pydicom reads the expected bytes and ignores the rest; nothing is lost, but say so.
        warnings_out.append(f"{keyword} is {actual} bytes, {expected} expected; the excess is ignored by readers")


def _check_encapsulated(ds: Dataset, syntax: UID, frames: int, warnings_out: list[str]) -> None:
    element = ds["PixelData"]
    if not element.is_undefined_length:
        raise IncompletePixelData(
            f"Pixel Data in {syntax.name} must be encapsulated, but has a defined length",
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    offsets, fragments = _encapsulated_items(bytes(element.value or b""))
    if fragments < frames:
        raise IncompletePixelData(
            f"cut off: {frames} frame(s) declared, {fragments} fragment(s) present", DATASET_DOES_NOT_MATCH_SOP_CLASS
        )
    if offsets and len(offsets) != frames:
        raise IncompletePixelData(
            f"{frames} frame(s) declared, the Basic Offset Table lists {len(offsets)}", DATASET_DOES_NOT_MATCH_SOP_CLASS
        )
    try:
        decodable = get_decoder(syntax).is_available
    except NotImplementedError:  # pydicom has no decoder at all for this syntax (MPEG, J2K Part 2)
        decodable = False
    if not decodable:
        warnings_out.append(f"{syntax.name} pixel data not decoded on ingest (no decoder installed); structure checked")
        return
    try:
        for _ in iter_pixels(ds, as_rgb=False):
            pass
    except Exception as exc:  # decoder plugins raise anything (OSError, RuntimeError, ...): all mean "cannot be read"
        raise IncompletePixelData(
            f"{syntax.name} pixel data cannot be decoded: {type(exc).__name__}: {exc}"[:300], CANNOT_UNDERSTAND
        ) from exc


def _encapsulated_items(value: bytes) -> tuple[list[int], int]:
    """(Basic Offset Table, number of fragments) of an encapsulated Pixel Data value (PS3.5 A.4).

    Unlike pydicom's `parse_fragments`, this refuses an item whose length runs past the value,
    which is what a file cut off inside its last fragment looks like.
    """
    position, items, offsets = 0, 0, []
    while position + 8 <= len(value):
        group, elem, length = struct.unpack_from("<HHL", value, position)
        tag = group << 16 | elem
        position += 8
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM_TAG:
            raise IncompletePixelData(
                f"unexpected tag {tag:08X} in the encapsulated Pixel Data at byte {position - 8}", CANNOT_UNDERSTAND
            )
        if length == 0xFFFFFFFF or position + length > len(value):
            raise IncompletePixelData(
                f"cut off: encapsulated Pixel Data item {items} runs past the end",
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
        if items == 0:
            if length % 4:
                raise IncompletePixelData("the Basic Offset Table length is not a multiple of 4", CANNOT_UNDERSTAND)
            offsets = list(struct.unpack_from(f"<{length // 4}L", value, position))
        items += 1
        position += length
    else:
        if position != len(value):
            raise IncompletePixelData("cut off: the encapsulated Pixel Data ends inside an item header",
                                      DATASET_DOES_NOT_MATCH_SOP_CLASS)
    if items == 0:
        raise IncompletePixelData("the encapsulated Pixel Data has no Basic Offset Table item", CANNOT_UNDERSTAND)
    return offsets, items - 1
