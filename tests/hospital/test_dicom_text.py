"""Person names and character sets in DICOM (`hospital.dicom_text`), and matching a PatientName key
against names in their component groups (`hospital.dicom_matching`)."""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from hospital.dicom_matching import person_name_matches
from hospital.dicom_text import declare_character_set, dicom_person_name

# PS3.5 H.3.2's example written as GB2312 in ISO 2022 IR 58: each ideographic run opens with
# ESC $ ) A, and the "^" between components returns to ASCII.
IR58_NAME = b"Wang^Xiaoming=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xc3\xf7"


@pytest.mark.parametrize(("family", "given", "expected"), [
    ("王", "小明", "Wang^Xiaoming=王^小明"),
    # Surnames read as surnames, not as the character's everyday reading (dan, ceng, qu ...).
    ("单", "田芳", "Shan^Tianfang=单^田芳"),
    ("曾", "国藩", "Zeng^Guofan=曾^国藩"),
    ("区", "家麟", "Ou^Jialin=区^家麟"),
    ("解", "缙", "Xie^Jin=解^缙"),
    ("尉迟", "恭", "Yuchi^Gong=尉迟^恭"),
    ("欧阳", "修", "Ouyang^Xiu=欧阳^修"),
    # ü as "yu" (GB/T 28039), so the alphabetic group stays ASCII.
    ("吕", "布", "Lyu^Bu=吕^布"),
    ("王", "", "Wang=王"),
    ("Rivera", "Alex", "Rivera^Alex"),
    ("Müller", "Anna", "Müller^Anna"),
])
def test_names_are_written_in_their_component_groups(family: str, given: str, expected: str) -> None:
    assert dicom_person_name(family, given) == expected


def test_a_name_cannot_split_its_own_value() -> None:
    assert dicom_person_name("Doe^Smith", "J=\\R") == "Doe Smith^J R"
    assert dicom_person_name("王", "小^明") == "Wang^Xiao ming=王^小 明"


def _written(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_a_chinese_name_declares_utf8_and_survives_writing() -> None:
    ds = Dataset()
    ds.PatientName = "Wang^Xiaoming=王^小明"
    ds.ContentSequence = [Dataset()]
    ds.ContentSequence[0].TextValue = "右肺结节"

    declare_character_set(ds)

    assert ds.SpecificCharacterSet == "ISO_IR 192"
    data = _written(ds)
    assert "Wang^Xiaoming=王^小明".encode() in data
    back = pydicom.dcmread(BytesIO(data))
    assert back.PatientName.ideographic == "王^小明"
    assert back.ContentSequence[0].TextValue == "右肺结节"


def test_ascii_keeps_its_encoding_and_a_sufficient_declaration_is_kept() -> None:
    plain = Dataset()
    plain.PatientName = "Rivera^Alex"
    declare_character_set(plain)
    assert "SpecificCharacterSet" not in plain

    gb = Dataset()
    gb.SpecificCharacterSet = "GB18030"
    gb.PatientName = "Wang^Xiaoming=王^小明"
    declare_character_set(gb)
    assert gb.SpecificCharacterSet == "GB18030"
    assert "王".encode("gb18030") in _written(gb)


def test_a_declaration_lacking_the_characters_becomes_utf8_without_reinterpreting_read_values() -> None:
    source = Dataset()
    source.SpecificCharacterSet = "ISO_IR 100"
    source.StudyDescription = "Thorax Müller"
    source.PatientName = "Müller^Anna"
    read = pydicom.dcmread(BytesIO(_written(source)))  # both are still Latin-1 bytes here
    read.ReferringPhysicianName = "Wang^Xiaoming=王^小明"

    declare_character_set(read)

    back = pydicom.dcmread(BytesIO(_written(read)))
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.StudyDescription == "Thorax Müller"
    assert str(back.PatientName) == "Müller^Anna"
    assert str(back.ReferringPhysicianName) == "Wang^Xiaoming=王^小明"


def test_iso_2022_ir_58_names_decode_without_their_escape_sequences() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
    ds.PatientName = "Wang^Xiaoming=王^小明"
    ds.StudyDescription = "胸部CT"
    data = _written(ds)
    # Written as the standard shows it: an escape sequence before each ideographic run.
    assert IR58_NAME in data

    back = pydicom.dcmread(BytesIO(data))
    assert str(back.PatientName) == "Wang^Xiaoming=王^小明"
    assert back.PatientName.ideographic == "王^小明"
    assert back.StudyDescription == "胸部CT"


@pytest.mark.parametrize(("key", "matches"), [
    ("Wang^Xiaoming", True),
    ("WANG^XIAOMING^^^", True),
    ("Wang*", True),
    ("王^小明", True),
    ("王*", True),
    ("=王^小明", True),
    ("Wang*=王^小明", True),
    ("Wang*=李*", False),
    ("Li*", False),
    ("=Wang*", False),
    ("王^小?", True),
])
def test_a_name_key_matches_by_component_group(key: str, matches: bool) -> None:
    assert person_name_matches(key, "Wang^Xiaoming=王^小明") is matches
