"""Chinese patient names against real peers: dcmtk's findscu reading our worklist and study-root
C-FIND answers, storescu sending GB18030 and ISO 2022 IR 58 files made with pydicom, a pynetdicom
worklist query written in those character sets, and dicomweb-client reading the DICOM JSON. dcmtk decodes with its own character set conversion, so
what it prints is an independent check of the bytes we write (and of those pydicom writes for us).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind
from sqlalchemy import select

import hospital.dicom_text  # noqa: F401 - pydicom writes ISO 2022 IR 58 with its escape sequences
from hospital.db import get_db
from imaging_orders.archive.dicom_server import start_dicom_server
from imaging_orders.archive.models import ImagingStudy
from tests.conftest import make_test_app
from tests.imaging_orders.dicom_payloads import multipart_body, part10, small_ct_study
from tests.imaging_orders.factories import Order, make_centre, make_order
from tests.imaging_orders.test_dicom_peers import NODE_AE, TOOL_TIMEOUT, Node, free_port, run_tool
from tests.imaging_orders.test_dicomweb_client_live import ACCESSION, MRN, bearer, live_server  # noqa: F401 - fixture

NAME = "Wang^Xiaoming=王^小明"
STATION_AE = "ZHPEER1"
TRUSTED_AE = "FINDSCU"

WORKLIST_REQUEST = """\
(0008,0005) CS [ISO_IR 192]
(0008,0050) SH []
(0010,0010) PN [{name}]
(0010,0020) LO []
(0008,0090) PN []
(0040,0100) SQ
(fffe,e000) -
(0008,0060) CS [CT]
(0040,0001) AE [{station}]
(0040,0002) DA [{date}]
(fffe,e00d) -
(fffe,e0dd) -
"""


@pytest.fixture()
def zh_node(live_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """Our DICOM node, trusting findscu's default AE title for study-root queries."""
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)
    app = make_test_app(live_database, tmp_path / "instance", STUDY_QUIET_SECONDS=60, DICOM_QR_TRUSTED_AES=TRUSTED_AE)
    port = free_port()
    server = start_dicom_server(app, host="127.0.0.1", port=port, ae_title=NODE_AE, block=False)
    assert server is not None
    try:
        yield Node(app, server, port, [])
    finally:
        server.shutdown()
        get_db(app).engine.dispose()


@pytest.fixture()
def zh_order(zh_node: Node) -> Order:
    with get_db(zh_node.app).transaction() as session:
        centre = make_centre(session, station_ae_title=STATION_AE)
        made = make_order(
            session, centre, family_name="王", given_name="小明", mrn="ZHPEER-0001", accession_number="ZHPEERACC1",
            start=datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0),
        )
        session.expunge_all()
    return made


def dcmdump_utf8(path: Path) -> str:
    """dcmtk's reading of a file, converted to UTF-8 from whatever character set it declares."""
    return run_tool(["dcmdump", "+U8", str(path)]).stdout


def worklist_responses(node: Node, tmp_path: Path, name: str, folder: str) -> list[Path]:
    today = datetime.now(UTC)
    request = tmp_path / f"{folder}.txt"
    request.write_text(WORKLIST_REQUEST.format(
        name=name, station=STATION_AE, date=f"{today - timedelta(days=1):%Y%m%d}-{today + timedelta(days=1):%Y%m%d}",
    ), encoding="utf-8")
    query_file = tmp_path / f"{folder}.wl"
    run_tool(["dump2dcm", str(request), str(query_file)])
    responses = tmp_path / folder
    responses.mkdir()
    run_tool(["findscu", "-W", "-aet", STATION_AE, "-aec", NODE_AE, "-X", "-od", str(responses),
              "127.0.0.1", str(node.port), str(query_file)])
    return sorted(responses.glob("rsp*.dcm"))


def test_findscu_reads_a_chinese_patient_from_the_worklist(zh_node: Node, zh_order: Order, tmp_path: Path) -> None:
    [response] = worklist_responses(zh_node, tmp_path, "王^小明", "by-characters")

    data = response.read_bytes()
    assert b"ISO_IR 192" in data
    assert NAME.encode() in data  # pinyin in ASCII, then the characters in UTF-8
    dumped = dcmdump_utf8(response)
    assert f"PN [{NAME}]" in dumped and "PatientName" in dumped
    assert "CS [ISO_IR 192]" in dumped
    assert str(pydicom.dcmread(response).PatientName) == NAME
    # A console that can only type ASCII finds the patient by pinyin.
    assert len(worklist_responses(zh_node, tmp_path, "WANG*", "by-pinyin")) == 1
    assert worklist_responses(zh_node, tmp_path, "LI*", "someone-else") == []


def _chinese_files(folder: Path, mrn: str, accession: str, charset: str | list[str]) -> list[Path]:
    folder.mkdir()
    study_uid = generate_uid()
    paths = []
    for ds in small_ct_study(patient_id=mrn, accession_number=accession, n_slices=2, study_uid=study_uid):
        ds.SpecificCharacterSet = charset
        ds.PatientName = NAME
        ds.StudyDescription = "胸部CT平扫"
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(part10(ds))
        paths.append(path)
    return paths


@pytest.mark.parametrize(("charset", "name_bytes"), [
    ("GB18030", b"Wang^Xiaoming=" + "王^小明".encode("gb18030")),
    (["", "ISO 2022 IR 58"], b"Wang^Xiaoming=\x1b$)A\xcd\xf5^\x1b$)A\xd0\xa1\xc3\xf7"),
], ids=["gb18030", "iso-2022-ir-58"])
def test_storescu_of_chinese_character_sets_is_indexed_as_characters(
    zh_node: Node, zh_order: Order, tmp_path: Path, charset: str | list[str], name_bytes: bytes
) -> None:
    paths = _chinese_files(tmp_path / "study", "ZHPEER-0001", "ZHPEERACC1", charset)
    assert all(name_bytes in p.read_bytes() for p in paths)
    # dcmtk reads the files pydicom wrote as the same name: they are what a Chinese modality sends.
    assert f"PN [{NAME}]" in dcmdump_utf8(paths[0])

    result = run_tool(["storescu", "-v", "-aet", STATION_AE, "-aec", NODE_AE, "+sd", "127.0.0.1",
                       str(zh_node.port), str(tmp_path / "study")])

    assert "Warning" not in result.stdout + result.stderr
    with get_db(zh_node.app).session() as session:
        study = session.scalar(select(ImagingStudy).where(ImagingStudy.dicom_patient_id == "ZHPEER-0001"))
        assert study is not None
        assert study.dicom_patient_name == NAME
        assert study.description == "胸部CT平扫"
        assert study.referral_id == zh_order.referral.id

    # A study-root C-FIND by characters answers the name in UTF-8, whatever the images came in.
    out = tmp_path / "find"
    out.mkdir()
    run_tool(["findscu", "-S", "-aet", TRUSTED_AE, "-aec", NODE_AE, "-X", "-k", "QueryRetrieveLevel=STUDY",
              "-k", "SpecificCharacterSet=ISO_IR 192", "-k", "PatientName=王^小明", "-k", "PatientID=ZHPEER-0001",
              "-k", "StudyInstanceUID", "127.0.0.1", str(zh_node.port)], cwd=out)
    [answer] = sorted(out.glob("rsp*.dcm"))
    assert NAME.encode() in answer.read_bytes()
    assert f"PN [{NAME}]" in dcmdump_utf8(answer)


def test_storescu_of_a_misdeclared_character_set_is_kept_with_a_warning(
    zh_node: Node, zh_order: Order, tmp_path: Path
) -> None:
    [path, _] = _chinese_files(tmp_path / "study", "ZHPEER-0001", "ZHPEERACC1", "GB18030")
    data = path.read_bytes()
    # GB18030 bytes declared as UTF-8: a modality configured for the wrong character set.
    path.write_bytes(data.replace(b"\x08\x00\x05\x00CS\x08\x00GB18030 ", b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 192"))

    result = subprocess.run(["storescu", "-v", "-aet", STATION_AE, "-aec", NODE_AE, "127.0.0.1", str(zh_node.port),
                             str(path)], capture_output=True, text=True, timeout=TOOL_TIMEOUT)

    assert "Received Store Response (Warning: CoercionOfDataElements)" in result.stdout + result.stderr
    with get_db(zh_node.app).session() as session:
        study = session.scalar(select(ImagingStudy).where(ImagingStudy.dicom_patient_id == "ZHPEER-0001"))
        assert study is not None and study.dicom_patient_name is not None
        assert "\ufffd" in study.dicom_patient_name
        assert study.referral_id == zh_order.referral.id


def test_dicomweb_client_reads_a_chinese_name_in_its_groups(live_server: str) -> None:  # noqa: F811
    slices = small_ct_study(patient_id=MRN, accession_number=ACCESSION, n_slices=2)
    for ds in slices:
        ds.SpecificCharacterSet = "GB18030"
        ds.PatientName = NAME
    body, content_type = multipart_body([part10(ds) for ds in slices])
    stored = requests.post(f"{live_server}/dicomweb/studies", data=body, timeout=30,
                           headers={**bearer(live_server, "imaging_staff"), "Content-Type": content_type})
    assert stored.status_code == 200, stored.text

    viewer = DICOMwebClient(url=f"{live_server}/dicomweb", headers=bearer(live_server, "radiologist"))
    for key in ("王^小明", "Wang^Xiaoming", "wang*"):
        [study] = viewer.search_for_studies(search_filters={"PatientName": key})
        assert study["00100010"]["Value"] == [{"Alphabetic": "Wang^Xiaoming", "Ideographic": "王^小明"}], key
    metadata: list[dict[str, Any]] = viewer.retrieve_study_metadata(slices[0].StudyInstanceUID)
    name = pydicom.Dataset.from_json(metadata[0]).PatientName
    assert (name.alphabetic, name.ideographic) == ("Wang^Xiaoming", "王^小明")


@pytest.mark.parametrize("charset", ["GB18030", ["", "ISO 2022 IR 58"]], ids=["gb18030", "iso-2022-ir-58"])
def test_a_worklist_query_in_a_chinese_character_set_finds_the_patient(
    zh_node: Node, zh_order: Order, charset: str | list[str]
) -> None:
    query = pydicom.Dataset()
    query.SpecificCharacterSet = charset
    query.PatientName = "王^小明"
    query.AccessionNumber = ""
    ae = AE(ae_title=STATION_AE)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", zh_node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        answers = [(status.Status, found) for status, found in assoc.send_c_find(query, ModalityWorklistInformationFind)]
    finally:
        assoc.release()

    [(pending, found), (done, _)] = answers
    assert (pending, done) == (0xFF00, 0x0000)
    assert found is not None and found.AccessionNumber == "ZHPEERACC1"
    assert str(found.PatientName) == NAME
