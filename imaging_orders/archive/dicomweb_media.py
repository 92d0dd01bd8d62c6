"""What WADO-RS sends and in which encoding (PS3.18 8.7): Accept negotiation of media types and
transfer syntaxes, transcoding, frames and bulk data out of a stored instance, and DICOM JSON
metadata that names bulk data by URI instead of carrying it inline.

Pure: pydicom data sets and paths in, bytes and dataclasses out; `dicomweb` (the routes) loads,
authorises and audits. Errors are `hospital.errors` types the routes turn into HTTP problems.

Encodings offered: the stored one (`transfer-syntax=*`), explicit VR little endian (the PS3.18
default, decoded with pydicom's decoders: RLE natively, JPEG and JPEG 2000 through pylibjpeg and
openjpeg) and the lossless compressions pydicom can write here (RLE, JPEG-LS, JPEG 2000). Lossy
syntaxes are sent only as stored: making one would silently lose information. Implicit VR and big
endian are not DICOMweb encodings (PS3.18 8.7.3.5.2), so they are refused too.
"""

from __future__ import annotations

import copy
import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, get_encoder, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from werkzeug.http import parse_options_header

from hospital.errors import InvalidInput, NotAcceptable, NotFound, UnprocessableEntity

logger = logging.getLogger(__name__)

OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"
# PS3.18 Table 8.7.3-5 (media types of compressed pixel data), by transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}
_MEDIA_TYPE_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
# The syntax a compressed media type means when the Accept names no transfer-syntax (PS3.18 8.7.3.5.3).
_DEFAULT_SYNTAX_OF_MEDIA_TYPE = {
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
}
# Lossless syntaxes pydicom can write (its encoders, with pylibjpeg/pyjpegls/openjpeg installed).
LOSSLESS_ENCODINGS = (str(RLELossless), str(JPEGLSLossless), str(JPEG2000Lossless))
_NOT_DICOMWEB = (str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian))
_NATIVE_LITTLE_ENDIAN = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(DeflatedExplicitVRLittleEndian))
PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_DATA_THRESHOLD = 1024  # bytes; smaller binary values stay inline
MAX_FRAMES_PER_REQUEST = 1000


@dataclass(frozen=True)
class AcceptedRange:
    """One media range of an Accept header: the part media type and transfer syntax it asks for
    (None: not said; "*": as stored)."""

    media_type: str
    transfer_syntax: str | None


def accepted_ranges(accept: str, default_part_type: str) -> list[AcceptedRange]:
    """The multipart/related ranges of `accept`, best first (by q, then order). `*/*`,
    `multipart/*` and a multipart/related without `type` ask for `default_part_type`."""
    if not accept.strip():
        return [AcceptedRange(default_part_type, None)]
    ranked: list[tuple[float, int, AcceptedRange]] = []
    for position, media_range in enumerate(accept.split(",")):
        mimetype, params = parse_options_header(media_range)
        mimetype = mimetype.lower()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if q <= 0:
            continue
        syntax = params.get("transfer-syntax")
        if mimetype in ("*/*", "multipart/*"):
            part = default_part_type
        elif mimetype == "multipart/related":
            part = params.get("type", default_part_type).lower()
        elif mimetype == default_part_type:
            part = mimetype  # single part asked: we answer multipart, but of the asked type
        else:
            continue
        part = _MEDIA_TYPE_ALIASES.get(part, part)
        ranked.append((-q, position, AcceptedRange(part, syntax.strip() if syntax else None)))
    return [r for _, _, r in sorted(ranked, key=lambda t: (t[0], t[1]))]


def can_transcode(stored: str, target: str) -> bool:
    """Whether pydicom here can turn pixel data stored in `stored` into `target`."""
    if stored == target:
        return True
    if target in _NOT_DICOMWEB or (target not in LOSSLESS_ENCODINGS and target != str(ExplicitVRLittleEndian)):
        return False
    if UID(stored).is_compressed:
        try:
            if not get_decoder(stored).is_available:
                return False
        except NotImplementedError:
            return False
    return target == str(ExplicitVRLittleEndian) or get_encoder(target).is_available


def _refusal(target: str, stored: Iterable[str]) -> str:
    stored_text = ", ".join(sorted(set(stored)))
    if target in _NOT_DICOMWEB:
        return f"transfer syntax {target} is not used by DICOMweb (PS3.18 8.7.3.5.2); ask for {ExplicitVRLittleEndian}"
    name = UID(target).name if UID(target).is_transfer_syntax else "not a transfer syntax"
    return (f"transfer syntax {target} ({name}) cannot be made from the stored {stored_text}: offered are * (as "
            f"stored), {ExplicitVRLittleEndian} and the lossless {', '.join(LOSSLESS_ENCODINGS)}")


def choose_instance_syntax(accept: str, stored_syntaxes: set[str]) -> str | None:
    """The transfer syntax application/dicom parts are sent in; None means each as stored."""
    refusals = []
    for wanted in accepted_ranges(accept, DICOM):
        if wanted.media_type not in (DICOM, "*/*", "application/*"):
            refusals.append(f"part type {wanted.media_type} is not application/dicom")
            continue
        if wanted.transfer_syntax == "*":
            return None
        target = wanted.transfer_syntax or str(ExplicitVRLittleEndian)
        if all(can_transcode(s, target) for s in stored_syntaxes):
            return target
        refusals.append(_refusal(target, stored_syntaxes))
    raise NotAcceptable("; ".join(refusals) or "instances are multipart/related; type=\"application/dicom\"")


@dataclass(frozen=True)
class FrameEncoding:
    """How frames (or pixel bulk data) are sent: the part media type and the transfer syntax."""

    media_type: str
    transfer_syntax: str

    @property
    def native(self) -> bool:
        return not UID(self.transfer_syntax).is_encapsulated

    @property
    def content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


def choose_frame_encoding(accept: str, stored: str) -> FrameEncoding:
    """The encoding of frames of an instance stored in `stored` (PS3.18 8.7.3.5.3). The default
    (no Accept, `*/*`) is uncompressed application/octet-stream in explicit VR little endian; an
    octet-stream with `transfer-syntax=*` is the stored bytes however compressed (what OHIF asks)."""
    stored_is_native = not UID(stored).is_encapsulated
    stored_media = OCTET_STREAM if stored_is_native else FRAME_MEDIA_TYPES.get(stored)
    refusals = []
    for wanted in accepted_ranges(accept, OCTET_STREAM):
        media = wanted.media_type
        if media in ("*/*", "image/*") and wanted.transfer_syntax in (None, "*"):
            if wanted.transfer_syntax == "*" and stored_media is not None:
                return FrameEncoding(stored_media, stored if not stored_is_native else str(ExplicitVRLittleEndian))
            if media == "*/*":
                media = OCTET_STREAM
            elif stored_media is not None and stored_media != OCTET_STREAM:
                return FrameEncoding(stored_media, stored)
        if media == OCTET_STREAM:
            if wanted.transfer_syntax == "*":
                # As stored; native pixel data always leaves as explicit VR little endian.
                return FrameEncoding(OCTET_STREAM, stored if not stored_is_native else str(ExplicitVRLittleEndian))
            target = wanted.transfer_syntax or str(ExplicitVRLittleEndian)
            if target == str(ExplicitVRLittleEndian) and can_transcode(stored, target):
                return FrameEncoding(OCTET_STREAM, target)
            refusals.append(f"application/octet-stream is uncompressed ({ExplicitVRLittleEndian}) or * , not {target}"
                            if target != str(ExplicitVRLittleEndian) else _refusal(target, [stored]))
            continue
        if media not in _DEFAULT_SYNTAX_OF_MEDIA_TYPE:
            refusals.append(f"frames are not offered as {media}")
            continue
        if wanted.transfer_syntax in (None, "*") and stored_media == media:
            return FrameEncoding(media, stored)
        target = wanted.transfer_syntax if wanted.transfer_syntax not in (None, "*") else _DEFAULT_SYNTAX_OF_MEDIA_TYPE[media]
        assert target is not None
        if FRAME_MEDIA_TYPES.get(target) != media:
            refusals.append(f"transfer syntax {target} is not {media}")
        elif can_transcode(stored, target):
            return FrameEncoding(media, target)
        else:
            refusals.append(f"{media}: " + _refusal(target, [stored]))
    raise NotAcceptable("; ".join(refusals) or "no acceptable media type for frames")


# ---------------------------------------------------------------------------------------------
# Transcoding and frames
# ---------------------------------------------------------------------------------------------


def dataset_in_syntax(ds: Dataset, target: str) -> Dataset:
    """`ds` re-encoded in `target` (pixel data decoded and, for a compressed target, encoded).
    A change of transfer syntax keeps the SOP Instance UID (PS3.5 A.4). `ds` is changed."""
    stored = str(ds.file_meta.TransferSyntaxUID)
    if stored == target:
        return ds
    has_pixels = any(k in ds for k in PIXEL_KEYWORDS.values())
    try:
        if has_pixels and UID(stored).is_compressed:
            ds.decompress(generate_instance_uid=False)
        if target in LOSSLESS_ENCODINGS:
            if not has_pixels:
                raise UnprocessableEntity(f"an instance without pixel data cannot be sent in {UID(target).name}")
            ds.compress(target, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(target)
    except UnprocessableEntity:
        raise
    except Exception as exc:  # decoder and encoder plugins raise anything; all mean "not this image"
        raise UnprocessableEntity(f"the image cannot be encoded in {UID(target).name}: {type(exc).__name__}: {exc}"[:300]) from exc
    return ds


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def frames_of(ds: Dataset, numbers: list[int], encoding: FrameEncoding) -> list[bytes]:
    """The 1-based `numbers` frames of `ds` (read with its pixel data) in `encoding`."""
    if "PixelData" not in ds:
        raise NotFound("this instance has no frames (no Pixel Data)")
    frames = number_of_frames(ds)
    beyond = [n for n in numbers if n > frames]
    if beyond:
        raise NotFound(f"frame {beyond[0]} does not exist; the instance has {frames} frame(s)")
    stored = str(ds.file_meta.TransferSyntaxUID)
    try:
        if encoding.transfer_syntax == stored and UID(stored).is_encapsulated:
            return [get_frame(ds.PixelData, n - 1, number_of_frames=frames) for n in numbers]
        if encoding.native:
            return [_native_frame(ds, n - 1, frames) for n in numbers]
        encoded = dataset_in_syntax(copy.deepcopy(ds), encoding.transfer_syntax)
        return [get_frame(encoded.PixelData, n - 1, number_of_frames=frames) for n in numbers]
    except (NotFound, UnprocessableEntity):
        raise
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise anything; all mean "cannot read this image"
        raise UnprocessableEntity(f"the frames cannot be read: {type(exc).__name__}: {exc}"[:300]) from exc


def _native_frame(ds: Dataset, index: int, frames: int) -> bytes:
    stored = str(ds.file_meta.TransferSyntaxUID)
    if stored in _NATIVE_LITTLE_ENDIAN and int(ds.get("BitsAllocated", 8) or 8) % 8 == 0:
        length = get_expected_length(ds, "bytes") // frames
        return bytes(ds.PixelData[index * length : (index + 1) * length])
    # Compressed or big endian: decode this frame alone, little endian out.
    array = pixel_array(ds, index=index)
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).tobytes()


def parse_frame_list(text: str) -> list[int]:
    """`1,3,2` -> [1, 3, 2]; frame numbers are 1-based (PS3.18 10.4.1.1.5)."""
    pieces = text.split(",")
    if len(pieces) > MAX_FRAMES_PER_REQUEST:
        raise InvalidInput(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    numbers = []
    for piece in pieces:
        piece = piece.strip()
        if not piece.isdigit() or len(piece) > 9 or int(piece) < 1:
            raise InvalidInput(f"frame numbers are positive integers separated by commas, got {text[:60]!r}")
        numbers.append(int(piece))
    return numbers


# ---------------------------------------------------------------------------------------------
# Headers, metadata and bulk data
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelElement:
    """The pixel data element a header read stopped before: its tag and VR."""

    tag: int
    vr: str


def read_header(path: Path) -> tuple[Dataset, PixelElement | None]:
    """The stored instance without its pixel data, and which pixel data element follows, read
    without reading the pixel data itself (the file position where the header read stopped)."""
    with path.open("rb") as handle:
        header = pydicom.dcmread(handle, stop_before_pixels=True)
        syntax = str(header.file_meta.TransferSyntaxUID)
        if syntax == str(DeflatedExplicitVRLittleEndian):
            pixels = None
            full = pydicom.dcmread(path)
            for tag, keyword in PIXEL_KEYWORDS.items():
                if keyword in full:
                    pixels = PixelElement(tag, full[keyword].VR)
            return header, pixels
        raw = handle.read(8)
    if len(raw) < 8:
        return header, None
    order = ">" if syntax == str(ExplicitVRBigEndian) else "<"
    group, element = struct.unpack(f"{order}HH", raw[:4])
    tag = group << 16 | element
    if tag not in PIXEL_KEYWORDS:
        return header, None
    vr = raw[4:6].decode("ascii", "replace")
    if syntax == str(ImplicitVRLittleEndian) or not vr.isalpha():
        vr = {0x7FE00008: "OF", 0x7FE00009: "OD"}.get(tag) or ("OW" if int(header.get("BitsAllocated", 8) or 8) > 8 else "OB")
    return header, PixelElement(tag, vr)


BulkDataUrl = Callable[[str], str]


def metadata_json(header: Dataset, pixels: PixelElement | None, bulk_url: BulkDataUrl) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) of `header` with each large binary value, and the pixel data the
    header read stopped before, as a BulkDataURI (`bulk_url(path)`: path is `tag[/item/tag...]`)."""
    document = _json_of(header, bulk_url, "")
    if pixels is not None:
        document[f"{pixels.tag:08X}"] = {"vr": pixels.vr, "BulkDataURI": bulk_url(f"{pixels.tag:08X}")}
    return document


def _json_of(ds: Dataset, bulk_url: BulkDataUrl, prefix: str) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for element in ds:
        tag = f"{element.tag:08X}"
        path = f"{prefix}{tag}"
        if element.VR == "SQ":
            items = [_json_of(item, bulk_url, f"{path}/{index}/") for index, item in enumerate(element.value or [])]
            document[tag] = {"vr": "SQ", **({"Value": items} if items else {})}
        elif _is_bulk(element):
            document[tag] = {"vr": element.VR, "BulkDataURI": bulk_url(path)}
        else:
            document[tag] = element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=BULK_DATA_THRESHOLD)
    return document


def _is_bulk(element: DataElement) -> bool:
    if element.VR not in BULK_VRS or element.value is None:
        return False
    return element.tag in PIXEL_KEYWORDS or len(element.value) > BULK_DATA_THRESHOLD


def bulk_element(ds: Dataset, path: str) -> DataElement:
    """The binary element at `path` (`tag[/item/tag...]`, items 0-based) of `ds`, which must be
    read with its pixel data. Only elements `metadata_json` names by URI are bulk data."""
    pieces = path.strip("/").split("/")
    if len(pieces) % 2 != 1 or len(pieces) > 15:
        raise InvalidInput(f"a bulk data path is tag[/item/tag...], got {path[:80]!r}")
    current = ds
    element: DataElement | None = None
    for position, piece in enumerate(pieces):
        if position % 2:
            if not piece.isdigit() or len(piece) > 6:
                raise InvalidInput(f"an item number is a non-negative integer, got {piece[:20]!r}")
            assert element is not None  # an item number follows a tag
            if element.VR != "SQ":
                raise NotFound(f"{element.tag} is not a sequence")
            items = element.value or []
            if int(piece) >= len(items):
                raise NotFound(f"item {piece} of {element.tag} does not exist")
            current = items[int(piece)]
            continue
        try:
            tag = int(piece, 16)
        except ValueError as exc:
            raise InvalidInput(f"{piece[:20]!r} is not a tag (8 hexadecimal digits)") from exc
        if len(piece) != 8:
            raise InvalidInput(f"{piece[:20]!r} is not a tag (8 hexadecimal digits)")
        if tag not in current:
            raise NotFound(f"the instance has no ({piece[:4]},{piece[4:]})")
        element = current[tag]
    assert element is not None
    if element.VR not in BULK_VRS or not (element.tag in PIXEL_KEYWORDS or _is_bulk(element)):
        raise NotFound(f"({pieces[-1][:4]},{pieces[-1][4:]}) is not bulk data; it is in the metadata")
    return element
