"""Study Root and Patient Root Query/Retrieve against dcmtk peers: findscu -S and -P at each level,
getscu, and movescu to a configured destination (dcmtk's storescp)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from flask import Flask
from pydicom.uid import generate_uid
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from hospital.db import get_db
from hospital.models import Organization, OrganizationKind
from imaging_orders.archive.dicom_server import start_dicom_server
from imaging_orders.archive.ingest import store_instance
from imaging_orders.archive.models import ImagingStudy
from imaging_orders.archive.query_retrieve import parse_move_destinations
from imaging_orders.models import Schedule
from tests.conftest import make_test_app
from tests.imaging_orders.dicom_payloads import small_ct_study
from tests.imaging_orders.test_dicom_peers import TOOL_TIMEOUT, free_port, run_tool

NODE_AE = "QRNODE"
DEST_AE = "VIEWER"
# dcmtk's default calling AE titles, trusted to see every centre's studies (DICOM_QR_TRUSTED_AES);
# what a centre's own AE sees is tested at the end.
TRUSTED_AES = "FINDSCU,GETSCU,MOVESCU"


@dataclass
class QRNode:
    app: Flask
    port: int
    dest_port: int
    study_uid: str
    prefix: str  # of this node's PatientIDs, so matches never depend on what other tests left


@pytest.fixture()
def qr_node(live_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[QRNode]:
    """A node holding one two-series study (6 instances) and one single-instance study."""
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)
    dest_port = free_port()
    app = make_test_app(live_database, tmp_path / "instance", STUDY_QUIET_SECONDS=60, DICOM_QR_TRUSTED_AES=TRUSTED_AES,
                        DICOM_MOVE_DESTINATIONS=f"{DEST_AE}=127.0.0.1:{dest_port}")
    study_uid = generate_uid()
    prefix = f"QR{uuid.uuid4().hex[:6].upper()}"
    for ds in small_ct_study(patient_id=f"{prefix}-0001", accession_number="QRACC1", n_slices=3, series=2, study_uid=study_uid):
        store_instance(app, ds, transfer_syntax_uid=None, calling_ae="MODALITY")
    store_instance(app, small_ct_study(patient_id=f"{prefix}-0002", accession_number="QRACC2", n_slices=1)[0],
                   transfer_syntax_uid=None, calling_ae="MODALITY")
    port = free_port()
    server = start_dicom_server(app, host="127.0.0.1", port=port, ae_title=NODE_AE, block=False)
    assert isinstance(server, ThreadedAssociationServer)
    try:
        yield QRNode(app, port, dest_port, study_uid, prefix)
    finally:
        server.shutdown()
        get_db(app).engine.dispose()


def find(port: int, out: Path, *keys: str, model: str = "-S", aet: str = "FINDSCU") -> list[pydicom.Dataset]:
    """findscu's responses; `model` is "-S" (study root) or "-P" (patient root); `aet` the calling AE."""
    out.mkdir()
    args = ["findscu", model, "-aet", aet, "-aec", NODE_AE, "-X", "127.0.0.1", str(port)]
    for key in keys:
        args += ["-k", key]
    run_tool(args, cwd=out)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_study_series_and_image_levels(qr_node: QRNode, tmp_path: Path) -> None:
    port, study_uid, prefix = qr_node.port, qr_node.study_uid, qr_node.prefix
    [study] = find(port, tmp_path / "study", "QueryRetrieveLevel=STUDY", f"PatientID={prefix}-0001", "StudyInstanceUID",
                   "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "PatientBirthDate", "StudyDate=20260301-")
    assert study.StudyInstanceUID == study_uid
    assert int(study.NumberOfStudyRelatedInstances) == 6
    assert study.ModalitiesInStudy == "CT"
    assert study.PatientBirthDate == "19680412"  # not in the index: read from a stored header
    assert len(find(port, tmp_path / "wild", "QueryRetrieveLevel=STUDY", f"PatientID={prefix}-*", "AccessionNumber")) == 2
    series = find(port, tmp_path / "series", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid}",
                  "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances")
    assert sorted(int(s.SeriesNumber) for s in series) == [1, 2]
    assert all(int(s.NumberOfSeriesRelatedInstances) == 3 for s in series)
    images = find(port, tmp_path / "image", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid}",
                  f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID", "Rows")
    assert len(images) == 3 and all(int(i.Rows) == 32 for i in images)
    bad = subprocess.run(["findscu", "-v", "-S", "-aec", NODE_AE, "-k", "QueryRetrieveLevel=PATIENT", "127.0.0.1", str(port)],
                         capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert "DataSetDoesNotMatchSOPClass" in bad.stdout + bad.stderr  # 0xA900


def test_getscu_retrieves_a_study(qr_node: QRNode, tmp_path: Path) -> None:
    port, study_uid = qr_node.port, qr_node.study_uid
    out = tmp_path / "got"
    out.mkdir()
    run_tool(["getscu", "-S", "-aet", "GETSCU", "-aec", NODE_AE, "-od", str(out),
              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)])
    received = [pydicom.dcmread(p) for p in out.iterdir()]
    assert len(received) == 6
    assert {ds.StudyInstanceUID for ds in received} == {study_uid}


@contextmanager
def storescp_receiver(port: int, out: Path) -> Iterator[Path]:
    """dcmtk's storescp as the C-MOVE destination, writing what it receives into `out`."""
    out.mkdir()
    receiver = subprocess.Popen(["storescp", "-aet", DEST_AE, "-od", str(out), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        yield out
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_movescu_to_a_configured_destination_only(qr_node: QRNode, tmp_path: Path) -> None:
    port, dest_port, study_uid = qr_node.port, qr_node.dest_port, qr_node.study_uid
    with storescp_receiver(dest_port, tmp_path / "moved") as out:
        run_tool(["movescu", "-S", "-aet", "MOVESCU", "-aec", NODE_AE, "-aem", DEST_AE,
                  "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
                  "-k", f"SeriesInstanceUID={_first_series(port, tmp_path, study_uid)}", "127.0.0.1", str(port)])
        assert len(list(out.iterdir())) == 3
        unknown = subprocess.run(["movescu", "-v", "-S", "-aec", NODE_AE, "-aem", "STRANGER", "-k", "QueryRetrieveLevel=STUDY",
                                  "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)],
                                 capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        assert "MoveDestinationUnknown" in unknown.stdout + unknown.stderr  # 0xA801


def _first_series(port: int, tmp_path: Path, study_uid: str) -> str:
    series = find(port, tmp_path / "s", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid}", "SeriesInstanceUID")
    return str(series[0].SeriesInstanceUID)


def test_move_destinations_parse() -> None:
    assert parse_move_destinations("A=host:104, B = 10.0.0.2:11112") == {"A": ("host", 104), "B": ("10.0.0.2", 11112)}
    assert parse_move_destinations("") == {}
    with pytest.raises(ValueError):
        parse_move_destinations("A=host")


# ---------------------------------------------------------------------------------------------
# Patient Root (dcmtk's default, -P)
# ---------------------------------------------------------------------------------------------


def find_patient_root(port: int, out: Path, *keys: str) -> list[pydicom.Dataset]:
    return find(port, out, *keys, model="-P")


def test_findscu_patient_root_from_patient_down_to_image(qr_node: QRNode, tmp_path: Path) -> None:
    port, study_uid, prefix = qr_node.port, qr_node.study_uid, qr_node.prefix
    patients = find_patient_root(port, tmp_path / "patients", "QueryRetrieveLevel=PATIENT", f"PatientID={prefix}-*",
                                 "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies",
                                 "NumberOfPatientRelatedInstances")
    assert sorted(p.PatientID for p in patients) == [f"{prefix}-0001", f"{prefix}-0002"]
    first = next(p for p in patients if p.PatientID == f"{prefix}-0001")
    assert str(first.PatientName) == "Rivera^Alex"
    assert first.PatientBirthDate == "19680412"  # read from a stored header
    assert int(first.NumberOfPatientRelatedStudies) == 1 and int(first.NumberOfPatientRelatedInstances) == 6
    [study] = find_patient_root(port, tmp_path / "study", "QueryRetrieveLevel=STUDY", f"PatientID={prefix}-0001",
                                "StudyInstanceUID", "NumberOfStudyRelatedInstances")
    assert study.StudyInstanceUID == study_uid and int(study.NumberOfStudyRelatedInstances) == 6
    series = find_patient_root(port, tmp_path / "series", "QueryRetrieveLevel=SERIES", f"PatientID={prefix}-0001",
                               f"StudyInstanceUID={study_uid}", "SeriesInstanceUID")
    assert len(series) == 2
    images = find_patient_root(port, tmp_path / "image", "QueryRetrieveLevel=IMAGE", f"PatientID={prefix}-0001",
                               f"StudyInstanceUID={study_uid}", f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
                               "SOPInstanceUID")
    assert len(images) == 3


def test_getscu_patient_root_by_patient_and_by_study(qr_node: QRNode, tmp_path: Path) -> None:
    port, study_uid, prefix = qr_node.port, qr_node.study_uid, qr_node.prefix
    by_patient = tmp_path / "patient"
    by_patient.mkdir()
    run_tool(["getscu", "-P", "-aet", "GETSCU", "-aec", NODE_AE, "-od", str(by_patient),
              "-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={prefix}-0002", "127.0.0.1", str(port)])
    assert [pydicom.dcmread(p).PatientID for p in by_patient.iterdir()] == [f"{prefix}-0002"]
    by_study = tmp_path / "study"
    by_study.mkdir()
    # No model option: getscu's default is Patient Root.
    run_tool(["getscu", "-aet", "GETSCU", "-aec", NODE_AE, "-od", str(by_study), "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"PatientID={prefix}-0001", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)])
    assert len(list(by_study.iterdir())) == 6
    # A patient-level retrieve names one patient: a wildcard would send every patient's images.
    wild = subprocess.run(["getscu", "-v", "-P", "-aec", NODE_AE, "-od", str(tmp_path), "-k", "QueryRetrieveLevel=PATIENT",
                           "-k", "PatientID=*", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert "DataSetDoesNotMatchSOPClass" in wild.stdout + wild.stderr  # 0xA900, as dcmtk names it


def test_movescu_patient_root_moves_a_patient(qr_node: QRNode, tmp_path: Path) -> None:
    port, dest_port, prefix = qr_node.port, qr_node.dest_port, qr_node.prefix
    with storescp_receiver(dest_port, tmp_path / "moved") as out:
        run_tool(["movescu", "-P", "-aet", "MOVESCU", "-aec", NODE_AE, "-aem", DEST_AE,
                  "-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={prefix}-0001", "127.0.0.1", str(port)])
        assert len(list(out.iterdir())) == 6


# ---------------------------------------------------------------------------------------------
# Least privilege: a centre's AE sees its own centre's studies; a trusted AE every centre's
# ---------------------------------------------------------------------------------------------


@dataclass
class TwoCentres:
    centre_ae: str  # centre A's own AE title: sees the two-series study
    station_ae: str  # a scanner's station AE title at centre A: the same
    other_ae: str  # centre B's AE title: sees the single-instance study


def two_centres(qr_node: QRNode) -> TwoCentres:
    tag = qr_node.prefix[2:]
    names = TwoCentres(f"A{tag}", f"S{tag}", f"B{tag}")
    with get_db(qr_node.app).transaction() as session:
        a = Organization(name=f"Centre A {tag}", kind=OrganizationKind.IMAGING_CENTRE, ae_title=names.centre_ae)
        b = Organization(name=f"Centre B {tag}", kind=OrganizationKind.IMAGING_CENTRE, ae_title=names.other_ae)
        session.add_all([a, b])
        session.flush()
        session.add(Schedule(organization_id=a.id, name="CT", modality="CT", room="1", station_ae_title=names.station_ae))
        studies = session.scalars(select(ImagingStudy).where(ImagingStudy.dicom_patient_id.like(f"{qr_node.prefix}-%")))
        for study in studies:
            study.organization_id = a.id if study.study_instance_uid == qr_node.study_uid else b.id
    return names


def test_a_centres_ae_finds_only_its_centres_studies_and_a_trusted_ae_finds_all(qr_node: QRNode, tmp_path: Path) -> None:
    port, prefix = qr_node.port, qr_node.prefix
    names = two_centres(qr_node)

    def patients(aet: str, model: str) -> list[str]:
        level = "PATIENT" if model == "-P" else "STUDY"
        found = find(port, tmp_path / f"{aet}{model}", f"QueryRetrieveLevel={level}", f"PatientID={prefix}-*",
                     model=model, aet=aet)
        return sorted(str(ds.PatientID) for ds in found)

    for model in ("-S", "-P"):
        assert patients(names.centre_ae, model) == [f"{prefix}-0001"]
        assert patients(names.station_ae, model) == [f"{prefix}-0001"]
        assert patients(names.other_ae, model) == [f"{prefix}-0002"]
        assert patients("FINDSCU", model) == [f"{prefix}-0001", f"{prefix}-0002"]  # trusted
        assert patients("STRANGER", model) == []  # DICOM_QR_CALLING_AES is "*": allowed in, sees nothing
    series = find(port, tmp_path / "series", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={qr_node.study_uid}",
                  "SeriesInstanceUID", aet=names.other_ae)
    assert series == []


def test_a_centres_ae_retrieves_only_its_centres_studies(qr_node: QRNode, tmp_path: Path) -> None:
    port, dest_port, study_uid = qr_node.port, qr_node.dest_port, qr_node.study_uid
    names = two_centres(qr_node)

    def get(aet: str) -> int:
        out = tmp_path / f"get-{aet}"
        out.mkdir()
        subprocess.run(["getscu", "-S", "-aet", aet, "-aec", NODE_AE, "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)],
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT)
        return len(list(out.iterdir()))

    assert get(names.other_ae) == 0
    assert get("STRANGER") == 0
    assert get(names.centre_ae) == 6
    assert get("GETSCU") == 6


    def move(aet: str) -> None:
        subprocess.run(["movescu", "-P", "-aet", aet, "-aec", NODE_AE, "-aem", DEST_AE, "-k", "QueryRetrieveLevel=PATIENT",
                        "-k", f"PatientID={qr_node.prefix}-0001", "127.0.0.1", str(port)],
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT)

    with storescp_receiver(dest_port, tmp_path / "moved") as out:
        move(names.other_ae)
        assert list(out.iterdir()) == []
        move(names.station_ae)
        assert len(list(out.iterdir())) == 6
