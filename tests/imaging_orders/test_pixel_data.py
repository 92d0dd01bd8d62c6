"""The pixel data check on its own: odd lengths and their padding byte, subsampled YBR, 1-bit
packing, and compressed syntaxes without a decoder."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000MCLossless

from hospital.dicom_status import DATASET_DOES_NOT_MATCH_SOP_CLASS
from imaging_orders.archive.pixel_data import IncompletePixelData, check_pixel_data


def image(rows: int, columns: int, *, bits: int = 8, samples: int = 1, photometric: str = "MONOCHROME2",
          frames: int | None = None, pixel_data: bytes = b"") -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, columns, bits, bits, bits - 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = samples, photometric, 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = pixel_data
    return ds


def whole(ds: Dataset, syntax: UID = ExplicitVRLittleEndian) -> list[str]:
    found: list[str] = []
    check_pixel_data(ds, syntax, found)
    return found


@pytest.mark.parametrize(
    ("ds", "length_needed"),
    [
        (image(3, 3), 9),  # odd: stored with a padding byte
        (image(2, 2, samples=3, photometric="YBR_FULL_422"), 8),  # 2 of every 3 samples (PS3.3 C.7.6.3.1.2)
        (image(10, 10, bits=1), 13),  # 100 bits packed into 13 bytes
        (image(4, 4, bits=16, frames=3), 96),
    ],
    ids=["odd-length", "ybr-full-422", "one-bit", "multiframe"],
)
def test_native_lengths_follow_the_image_attributes(ds: Dataset, length_needed: int) -> None:
    padded = length_needed + length_needed % 2
    ds.PixelData = b"\x00" * padded
    assert whole(ds) == []
    ds.PixelData = b"\x00" * (length_needed - 1 - (length_needed - 1) % 2)  # even, one pixel's worth short
    with pytest.raises(IncompletePixelData) as caught:
        whole(ds)
    assert caught.value.dicom_status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "cut off" in caught.value.reason


def test_excess_bytes_are_kept_with_a_warning() -> None:
    assert any("excess" in w for w in whole(image(2, 2, pixel_data=b"\x00" * 8)))


def test_pixel_data_without_its_description_is_refused() -> None:
    ds = image(2, 2, pixel_data=b"\x00" * 4)
    del ds.Rows
    with pytest.raises(IncompletePixelData, match="without Rows"):
        whole(ds)


def test_no_pixel_data_passes() -> None:
    ds = Dataset()
    ds.Modality = "SR"
    assert whole(ds) == []


def test_compressed_without_a_decoder_is_checked_for_structure_and_says_so() -> None:
    ds = image(8, 8, frames=2, pixel_data=encapsulate([b"\xff\xd8frame1\xff\xd9", b"\xff\xd8frame2\xff\xd9"]))
    ds["PixelData"].is_undefined_length = True
    # A syntax pydicom has no decoder for (JPEG Lossless now decodes, through pylibjpeg-libjpeg).
    found = whole(ds, JPEG2000MCLossless)
    assert any("not decoded" in w for w in found)

    ds.PixelData = encapsulate([b"\xff\xd8frame1\xff\xd9"])
    with pytest.raises(IncompletePixelData, match="2 frame"):
        whole(ds, JPEG2000MCLossless)
