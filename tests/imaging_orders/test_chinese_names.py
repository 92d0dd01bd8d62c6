"""Chinese patient names through the worklist and the archive, both ways: the Modality Worklist
answers and matches "Wang^Xiaoming=王^小明"; instances whose names come as ISO_IR 192, GB18030 or
ISO 2022 IR 58 are indexed as characters, matched and reconciled, and QIDO answers them with
Alphabetic and Ideographic groups; our own outputs declare UTF-8; and text the declared character
set cannot decode is kept as sent, indexed with replacement characters and answered with a warning.
"""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from sqlalchemy.orm import Session

from ai_services.dicom_outputs import OutputFinding, OutputReport, build_report_outputs
from hospital.dicom_status import COERCION_OF_DATA_ELEMENTS
from hospital.seed import DemoSeed
from imaging_orders.archive.ingest import reconcile_study, store_instance
from imaging_orders.archive.models import ImagingInstance, ImagingStudy
from imaging_orders.archive.query_retrieve import StudyCriteria, search_studies
from imaging_orders.worklist import find_worklist_items
from tests.conftest import make_test_app
from tests.imaging_orders.dicom_payloads import demo_order, multipart_body, part10, small_ct_study
from tests.imaging_orders.factories import make_centre, make_order
from tests.imaging_orders.test_dicomweb import register_blueprints
from tests.imaging_orders.test_worklist import query

NAME = "Wang^Xiaoming=王^小明"
WHEN = datetime(2031, 5, 6, 9, 0, tzinfo=UTC)
PATIENT_NAME = "00100010"
WARNING_REASON = "00081196"
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def app(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return register_blueprints(make_test_app(database_url, tmp_path_factory.mktemp("chinese-names")))


@pytest.fixture(autouse=True)
def no_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)


# ---------------------------------------------------------------------------------------------
# The worklist
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def worklist(db_session: Session) -> str:
    centre = make_centre(db_session, station_ae_title="ZHCT1")
    centre.requester.family_name, centre.requester.given_name = "李", "华"
    make_order(db_session, centre, family_name="王", given_name="小明", mrn="ZH-001", accession_number="ZHA1", start=WHEN)
    make_order(db_session, centre, family_name="单", given_name="田芳", mrn="ZH-002", accession_number="ZHA2", start=WHEN)
    make_order(db_session, centre, family_name="Rivera", given_name="Alex", mrn="ZH-003", accession_number="ZHA3",
               start=WHEN)
    return "ZHCT1"


def test_the_worklist_names_a_chinese_patient_in_pinyin_and_characters(db_session: Session, worklist: str) -> None:
    [item] = find_worklist_items(db_session, query(station=worklist, PatientID="ZH-001", ReferringPhysicianName=""))

    assert item.SpecificCharacterSet == "ISO_IR 192"
    # The bytes a modality receives: the alphabetic group in ASCII pinyin, the ideographic in UTF-8.
    assert item.get_item("PatientName").value.rstrip(b" ") == NAME.encode()
    assert (item.PatientName.alphabetic, item.PatientName.ideographic) == ("Wang^Xiaoming", "王^小明")
    assert str(item.ReferringPhysicianName) == "Li^Hua=李^华"
    [other] = find_worklist_items(db_session, query(station=worklist, PatientID="ZH-003"))
    assert other.get_item("PatientName").value == b"Rivera^Alex "


@pytest.mark.parametrize(("key", "expected"), [
    ("Wang^Xiaoming", {"ZHA1"}),
    ("WANG*", {"ZHA1"}),
    ("王^小明", {"ZHA1"}),
    ("王*", {"ZHA1"}),
    ("=王^小明", {"ZHA1"}),
    ("Wang*=王*", {"ZHA1"}),
    ("Shan*", {"ZHA2"}),  # 单 read as a surname
    ("Dan*", set()),
    ("Riv*", {"ZHA3"}),
    ("Li*", set()),
])
def test_the_worklist_matches_a_name_by_pinyin_or_characters(
    db_session: Session, worklist: str, key: str, expected: set[str]
) -> None:
    found = {str(item.AccessionNumber) for item in find_worklist_items(db_session, query(station=worklist, PatientName=key))}
    assert found == expected


# ---------------------------------------------------------------------------------------------
# Receiving
# ---------------------------------------------------------------------------------------------

# The patient's name as each character set writes it, as found in the bytes sent.
CHARACTER_SETS: dict[str, tuple[str | list[str], bytes]] = {
    "utf-8": ("ISO_IR 192", NAME.encode()),
    "gb18030": ("GB18030", b"Wang^Xiaoming=" + "王^小明".encode("gb18030")),
    "iso-2022-ir-58": (["", "ISO 2022 IR 58"], b"Wang^Xiaoming=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xc3\xf7"),
}


def chinese_study(mrn: str, accession: str, charset: str | list[str], *, slices: int = 2) -> list[pydicom.Dataset]:
    datasets = small_ct_study(patient_id=mrn, accession_number=accession, n_slices=slices, patient_name=NAME)
    for ds in datasets:
        ds.SpecificCharacterSet = charset
        ds.PatientName = NAME
        ds.StudyDescription = "胸部CT平扫"
    return datasets


def chinese_order(db_session: Session, demo: DemoSeed) -> tuple[Any, str, str]:
    n = next(_numbers)
    mrn, accession = f"ZHS-{n:04d}", f"ZHSACC{n}"
    order = demo_order(db_session, demo, family_name="王", given_name="小明", mrn=mrn, accession_number=accession)
    db_session.commit()
    return order, mrn, accession


@pytest.mark.parametrize("encoding", list(CHARACTER_SETS))
def test_names_in_each_chinese_character_set_are_indexed_as_characters_and_matched(
    app: Flask, db_session: Session, demo: DemoSeed, encoding: str
) -> None:
    charset, name_bytes = CHARACTER_SETS[encoding]
    order, mrn, accession = chinese_order(db_session, demo)
    sent = [part10(ds) for ds in chinese_study(mrn, accession, charset)]
    assert all(name_bytes in data for data in sent)

    results = [store_instance(app, data, transfer_syntax_uid=None, calling_ae="ZHMOD") for data in sent]

    assert [r.character_set_problems for r in results] == [(), ()]
    study = db_session.get(ImagingStudy, results[0].study_id)
    assert study is not None
    assert study.dicom_patient_name == NAME
    assert study.description == "胸部CT平扫"
    assert study.referral_id == order.referral.id
    # Kept as sent: the file holds the sender's own encoding.
    instance = db_session.get(ImagingInstance, results[0].instance_id)
    assert instance is not None
    stored = (Path(app.config["DICOM_STORAGE_DIR"]) / instance.path).read_bytes()
    assert name_bytes in stored
    assert str(pydicom.dcmread(BytesIO(stored)).PatientName) == NAME
    for key in ("王^小明", "Wang^Xiaoming", "wang*", "=王*", "Wang*=王^小明"):
        assert [s.id for s in search_studies(db_session, StudyCriteria(patient_names=[key]))] == [study.id], key


def test_an_unmatched_chinese_study_is_reconciled_by_hand(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    order, mrn, _ = chinese_order(db_session, demo)
    [result] = [store_instance(app, part10(ds), transfer_syntax_uid=None, calling_ae="ZHMOD")
                for ds in chinese_study(mrn, "NO-SUCH-ACC", "GB18030", slices=1)]

    queue = as_role("imaging_staff").get("/api/reconciliation/studies").get_json()
    [entry] = [e for e in queue if e["id"] == result.study_id]
    assert entry["headers"]["patient_name"] == NAME
    assert [c["referral_id"] for c in entry["candidates"]] == [order.referral.id]
    assert entry["candidates"][0]["patient"]["name"] == "王小明"

    study = reconcile_study(db_session, result.study_id, order.referral.id)
    assert study.referral_id == order.referral.id


def test_qido_answers_a_chinese_name_with_alphabetic_and_ideographic_groups(
    db_session: Session, demo: DemoSeed, as_role: Any
) -> None:
    _, mrn, accession = chinese_order(db_session, demo)
    body, content_type = multipart_body([part10(ds) for ds in chinese_study(mrn, accession, "GB18030")])
    staff = as_role("imaging_staff")
    assert staff.post("/dicomweb/studies", data=body, content_type=content_type).status_code == 200

    for key in ("王^小明", "Wang^Xiaoming", "WANG*", "=王*"):
        found = staff.get("/dicomweb/studies", query_string={"PatientName": key, "PatientID": mrn})
        assert found.status_code == 200, key
        [study] = found.get_json()
        assert study[PATIENT_NAME] == {"vr": "PN", "Value": [{"Alphabetic": "Wang^Xiaoming", "Ideographic": "王^小明"}]}
    [study] = staff.get("/dicomweb/studies", query_string={"PatientID": mrn}).get_json()
    series = staff.get(f"/dicomweb/studies/{study['0020000D']['Value'][0]}/metadata").get_json()
    assert series[0][PATIENT_NAME]["Value"] == [{"Alphabetic": "Wang^Xiaoming", "Ideographic": "王^小明"}]


# ---------------------------------------------------------------------------------------------
# Text the declared character set does not decode
# ---------------------------------------------------------------------------------------------

_GB18030_DECLARED = b"\x08\x00\x05\x00CS\x08\x00GB18030 "


def _declared_otherwise(data: bytes, declaration: bytes) -> bytes:
    """GB18030 bytes under another (or no) SpecificCharacterSet: what a misconfigured modality sends."""
    assert data.count(_GB18030_DECLARED) == 1
    return data.replace(_GB18030_DECLARED, declaration)


MISDECLARED = {
    "utf-8": b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 192",
    "unknown": b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 999",
    "none": b"",
}


@pytest.mark.parametrize("declared", list(MISDECLARED))
def test_text_the_declared_character_set_cannot_decode_is_kept_as_sent_and_flagged(
    app: Flask, db_session: Session, demo: DemoSeed, declared: str
) -> None:
    order, mrn, accession = chinese_order(db_session, demo)
    [ds] = chinese_study(mrn, accession, "GB18030", slices=1)
    data = _declared_otherwise(part10(ds), MISDECLARED[declared])

    result = store_instance(app, data, transfer_syntax_uid=None, calling_ae="ZHMOD")

    assert result.character_set_problems and "PatientName" in result.character_set_problems[0]
    study = db_session.get(ImagingStudy, result.study_id)
    instance = db_session.get(ImagingInstance, result.instance_id)
    assert study is not None and instance is not None
    # Not a plausible-looking wrong name ("Íõ^Ð¡Ã÷"): replacement characters, and the instance says why.
    assert study.dicom_patient_name is not None and study.dicom_patient_name.startswith("Wang^Xiaoming=")
    assert "\ufffd" in study.dicom_patient_name and "Í" not in study.dicom_patient_name
    assert any("replacement characters" in w for w in instance.warnings)
    # Matched by PatientID and AccessionNumber all the same; the file keeps the bytes as sent.
    assert study.referral_id == order.referral.id
    stored = (Path(app.config["DICOM_STORAGE_DIR"]) / instance.path).read_bytes()
    assert stored.endswith(_data_set_of(data))


def _data_set_of(part10_file: bytes) -> bytes:
    """The data set of a Part 10 file: what follows the preamble and the file meta group."""
    meta = 132  # the preamble and "DICM"; the group opens with its length, (0002,0000) UL
    group_length = int.from_bytes(part10_file[meta + 8:meta + 12], "little")
    return part10_file[meta + 12 + group_length:]


def test_stow_answers_undecodable_text_with_a_warning(db_session: Session, demo: DemoSeed, as_role: Any) -> None:
    _, mrn, accession = chinese_order(db_session, demo)
    [ds] = chinese_study(mrn, accession, "GB18030", slices=1)
    body, content_type = multipart_body([_declared_otherwise(part10(ds), MISDECLARED["utf-8"])])

    response = as_role("imaging_staff").post("/dicomweb/studies", data=body, content_type=content_type)

    assert response.status_code == 202
    [item] = response.get_json()["00081199"]["Value"]
    assert item[WARNING_REASON]["Value"] == [COERCION_OF_DATA_ELEMENTS]


# ---------------------------------------------------------------------------------------------
# What we encode
# ---------------------------------------------------------------------------------------------


def _stored_dataset(app: Flask, db_session: Session, instance_id: int) -> pydicom.Dataset:
    instance = db_session.get(ImagingInstance, instance_id)
    assert instance is not None
    return pydicom.dcmread(Path(app.config["DICOM_STORAGE_DIR"]) / instance.path)


def test_our_outputs_declare_utf8_for_a_chinese_name(app: Flask, db_session: Session) -> None:
    # Source images with no SpecificCharacterSet (ASCII names), and a radiologist whose name is not.
    slices = small_ct_study(patient_id="ZHO-1", accession_number="ZHOACC1", n_slices=2)
    for ds in slices:
        del ds.SpecificCharacterSet
    sources = {str(ds.SOPInstanceUID): ds for ds in slices}
    first = next(iter(sources))
    report = OutputReport(41, "final", (OutputFinding(1, first, (10, 10, 20, 20), 12.0, 0.9, "accepted", "ai"),),
                          model_version="1", signed_by="Li^Hua=李^华", organization="华山医院影像中心")
    outputs = build_report_outputs(report, sources)
    for ds in slices:
        store_instance(app, part10(ds), transfer_syntax_uid=None, calling_ae="ZHMOD")

    stored = [store_instance(app, ds, transfer_syntax_uid=None, calling_ae="AI", derived=True) for ds in outputs.datasets]

    sr = _stored_dataset(app, db_session, stored[0].instance_id)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Li^Hua=李^华"
    assert sr.VerifyingObserverSequence[0].VerifyingOrganization == "华山医院影像中心"
    assert str(sr.PatientName) == "Rivera^Alex"


def test_a_rejection_note_for_a_chinese_patient_keeps_the_name(app: Flask, db_session: Session) -> None:
    [source] = small_ct_study(patient_id="ZHO-2", accession_number="ZHOACC2", n_slices=1, patient_name=NAME)
    note = copy.deepcopy(source)
    del note.SpecificCharacterSet  # built like withdrawal_page's note: values set, no declaration
    note.SOPInstanceUID = pydicom.uid.generate_uid()
    note.PatientName = NAME

    result = store_instance(app, note, transfer_syntax_uid=None, calling_ae="ZHMOD")

    kept = _stored_dataset(app, db_session, result.instance_id)
    assert kept.SpecificCharacterSet == "ISO_IR 192"
    assert str(kept.PatientName) == NAME
    assert "SpecificCharacterSet" not in note  # the caller's own dataset is left as it was

