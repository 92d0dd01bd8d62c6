"""The DICOM node against real peers: dcmtk's echoscu, storescu and findscu, and a pynetdicom SCU
sending broken data. The server runs in this process on a free port against the run's database."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import func, select

import hospital.jobs
from hospital.db import get_db
from hospital.dicom_status import CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS
from imaging_orders.archive.dicom_server import start_dicom_server
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, StudyStatus
from imaging_orders.models import AppointmentStatus
from imaging_orders.worklist import study_instance_uid_for
from referrals.models import Referral, ReferralStatus
from referrals.public import referral_summary
from synthetic.dicom_factory import ct_series_datasets, write_ct_series
from synthetic.phantoms import make_ct_phantom
from tests.conftest import make_test_app
from tests.imaging_orders.factories import Order, make_centre, make_order

NODE_AE = "TESTNODE"
STATION_AE = "PEERCT1"
TOOL_TIMEOUT = 30


@dataclass
class Node:
    app: Flask
    server: ThreadedAssociationServer
    port: int
    published: list[dict[str, Any]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def node(live_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    published: list[dict[str, Any]] = []
    real_publish = hospital.jobs.publish

    def recording_publish(session: Any, event: Any) -> Any:
        published.append({"event": event.name, "study_id": event.study_id})
        return real_publish(session, event)

    # Jobs are recorded but not run: the AI and billing stages are not under test here.
    monkeypatch.setattr("imaging_orders.archive.ingest.publish", recording_publish)
    monkeypatch.setattr(hospital.jobs, "dispatch", lambda app, ids: None)
    app = make_test_app(live_database, tmp_path / "instance", STUDY_QUIET_SECONDS=0.5)
    port = free_port()
    server = start_dicom_server(app, host="127.0.0.1", port=port, ae_title=NODE_AE, block=False)
    assert server is not None
    try:
        yield Node(app, server, port, published)
    finally:
        server.shutdown()
        get_db(app).engine.dispose()


@pytest.fixture()
def order(node: Node) -> Order:
    with get_db(node.app).transaction() as session:
        centre = make_centre(session, station_ae_title=STATION_AE)
        made = make_order(
            session, centre, family_name="Rivera", given_name="Alex", mrn="PEER-0001", accession_number="PEERACC1",
            start=datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0),
        )
        session.expunge_all()
    return made


def run_tool(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=cwd)
    assert result.returncode == 0, f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def wait_for(condition: Any, timeout: float = 10.0, what: str = "the condition") -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def test_echoscu(node: Node) -> None:
    result = run_tool(["echoscu", "-aet", "ECHOSCU", "-aec", NODE_AE, "127.0.0.1", str(node.port)])
    assert "error" not in result.stderr.lower()


def test_storescu_study_is_indexed_once_and_completed(node: Node, order: Order, tmp_path: Path) -> None:
    phantom = make_ct_phantom(3, n_slices=8, size=64)
    study_uid = generate_uid()
    folder = tmp_path / "study"
    paths = []
    for series_number in (1, 2):
        paths += write_ct_series(
            phantom, folder, patient_id="PEER-0001", patient_name="Rivera^Alex", accession_number="PEERACC1",
            study_instance_uid=study_uid, series_number=series_number,
        )
    assert len(paths) == 16
    storescu = ["storescu", "-aet", STATION_AE, "-aec", NODE_AE, "+sd", "127.0.0.1", str(node.port), str(folder)]

    run_tool(storescu)

    storage = Path(node.app.config["DICOM_STORAGE_DIR"])
    with get_db(node.app).session() as session:
        study = session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid))
        assert study is not None
        assert study.referral_id == order.referral.id
        instances = session.scalars(select(ImagingInstance).join(ImagingSeries).where(ImagingSeries.study_id == study.id)).all()
        assert len(instances) == 16
        assert session.scalar(select(func.count()).select_from(ImagingSeries).where(ImagingSeries.study_id == study.id)) == 2
        sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
        for instance in instances:
            stored = storage / instance.path
            data = stored.read_bytes()
            assert hashlib.sha256(data).hexdigest() == instance.sha256
            assert len(data) == instance.size_bytes
            original = pydicom.dcmread(sent[instance.sop_instance_uid])
            assert pydicom.dcmread(stored).PixelData == original.PixelData

    # A modality's retry after a lost response sends everything again: no duplicates.
    run_tool(storescu)
    with get_db(node.app).session() as session:
        assert session.scalar(select(func.count()).select_from(ImagingInstance)) == 16
        assert session.scalar(select(func.count()).select_from(ImagingStudy)) == 1
    assert len(list(storage.rglob("*.dcm"))) == 16

    # The completion loop notices the quiet study, closes the order and publishes once.
    def completed() -> ImagingStudy | None:
        with get_db(node.app).session() as session:
            row = session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid))
            return row if row is not None and row.status is StudyStatus.AVAILABLE else None

    study = wait_for(completed)
    time.sleep(1.2)  # a few more loop ticks: still exactly one event
    assert node.published == [{"event": "imaging.study_completed", "study_id": study.id}]
    with get_db(node.app).session() as session:
        referral = session.get(Referral, order.referral.id)
        assert referral is not None and referral.status is ReferralStatus.COMPLETED
        assert order.appointment is not None
        appointment = session.get(type(order.appointment), order.appointment.id)
        assert appointment is not None and appointment.status is AppointmentStatus.FULFILLED


WORKLIST_REQUEST = """\
(0008,0005) CS [ISO_IR 100]
(0008,0050) SH []
(0010,0010) PN [RIV*]
(0010,0020) LO []
(0010,0030) DA []
(0010,0040) CS []
(0008,0090) PN []
(0020,000d) UI []
(0032,1060) LO []
(0040,1001) SH []
(0040,0100) SQ
(fffe,e000) -
(0008,0060) CS [CT]
(0040,0001) AE [{station}]
(0040,0002) DA [{date}]
(0040,0003) TM []
(0040,0007) LO []
(0040,0009) SH []
(0040,0010) SH []
(0040,0011) SH []
(fffe,e00d) -
(fffe,e0dd) -
"""


def test_findscu_worklist(node: Node, order: Order, tmp_path: Path) -> None:
    today = datetime.now(UTC)
    span = f"{(today - timedelta(days=1)):%Y%m%d}-{(today + timedelta(days=1)):%Y%m%d}"
    request = tmp_path / "query.txt"
    request.write_text(WORKLIST_REQUEST.format(station=STATION_AE, date=span))
    query_file = tmp_path / "query.wl"
    run_tool(["dump2dcm", str(request), str(query_file)])
    responses = tmp_path / "responses"
    responses.mkdir()

    run_tool(
        ["findscu", "-W", "-aet", STATION_AE, "-aec", NODE_AE, "-X", "-od", str(responses),
         "127.0.0.1", str(node.port), str(query_file)]
    )

    found = sorted(responses.glob("rsp*.dcm"))
    assert len(found) == 1
    item = pydicom.dcmread(found[0], force=True)
    with get_db(node.app).session() as session:
        referral = referral_summary(session, order.referral.id)
        assert referral is not None
        expected_uid = study_instance_uid_for(referral)
    assert str(item.PatientName) == "Rivera^Alex"
    assert item.PatientID == "PEER-0001"
    assert item.PatientBirthDate == "19680412"
    assert item.PatientSex == "F"
    assert item.AccessionNumber == "PEERACC1"
    assert str(item.ReferringPhysicianName) == "Lovelace^Ada"
    assert item.RequestedProcedureDescription == "CT chest without contrast"
    assert item.RequestedProcedureID == f"RP{order.referral.id}"
    assert item.StudyInstanceUID == expected_uid
    step = item.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT"
    assert step.ScheduledStationAETitle == STATION_AE
    assert step.ScheduledProcedureStepStartDate == f"{today:%Y%m%d}"
    assert step.ScheduledProcedureStepStartTime == "100000"
    assert order.appointment is not None
    assert step.ScheduledProcedureStepID == f"SPS{order.appointment.id}"
    assert step.ScheduledProcedureStepLocation == "Room 1"

    # Another station's query sees nothing of it.
    request.write_text(WORKLIST_REQUEST.format(station="OTHERCT", date=span))
    run_tool(["dump2dcm", str(request), str(query_file)])
    other = tmp_path / "other"
    other.mkdir()
    run_tool(["findscu", "-W", "-aec", NODE_AE, "-X", "-od", str(other), "127.0.0.1", str(node.port), str(query_file)])
    assert list(other.glob("rsp*.dcm")) == []


def test_bad_worklist_query_fails_cleanly(node: Node) -> None:
    ae = AE(ae_title="BADWL")
    ae.add_requested_context("1.2.840.10008.5.1.4.31")
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        query = pydicom.Dataset()
        query.PatientName = ""
        step = pydicom.Dataset()
        step.ScheduledProcedureStepStartDate = "20300101-20200101"  # ends before it starts
        query.ScheduledProcedureStepSequence = [step]
        statuses = [status for status, _ in assoc.send_c_find(query, "1.2.840.10008.5.1.4.31")]
    finally:
        assoc.release()
    assert statuses and statuses[-1].Status == 0xC000
    assert "ends before it starts" in statuses[-1].ErrorComment


def _part10_file(path: Path, sop_uid: str, dataset_bytes: bytes) -> Path:
    """A file whose meta is valid but whose data set is whatever we say: how broken peers look."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(b"\x00" * 128 + b"DICM" + buffer.getvalue() + dataset_bytes)
    return path


def _encode(ds: pydicom.Dataset) -> bytes:
    """The data set alone, without preamble and file meta (what goes on the wire)."""
    data = _full(ds)
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) group length
    return data[144 + meta_length :]


def test_broken_instances_fail_and_the_server_keeps_serving(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sending from a path with chunked sending puts the file's data set bytes on the wire as they
    # are, so the SCU does not get to refuse or repair them first.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    datasets = ct_series_datasets(
        make_ct_phantom(5, n_slices=3, size=64), patient_id="BROKEN-1", patient_name="Broken^Peer",
        accession_number="NOSUCHACC",
    )
    no_sop_uid = pydicom.dcmread(DicomBytesIO(_full(datasets[0])))
    del no_sop_uid.SOPInstanceUID
    no_study_uid = pydicom.dcmread(DicomBytesIO(_full(datasets[1])))
    del no_study_uid.StudyInstanceUID
    files = {
        "garbage": _part10_file(tmp_path / "garbage.dcm", generate_uid(), b"\x13\x37not dicom at all\xff" * 64),
        "no_sop_uid": _part10_file(tmp_path / "no_sop.dcm", generate_uid(), _encode(no_sop_uid)),
        "no_study_uid": _part10_file(tmp_path / "no_study.dcm", datasets[1].SOPInstanceUID, _encode(no_study_uid)),
        "truncated": _part10_file(tmp_path / "truncated.dcm", datasets[2].SOPInstanceUID, _encode(datasets[2])[:301]),
    }

    ae = AE(ae_title="BROKENSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        statuses = {name: assoc.send_c_store(path) for name, path in files.items()}
        assert assoc.is_established  # the association survives, too
        good = assoc.send_c_store(_part10_file(tmp_path / "good.dcm", datasets[0].SOPInstanceUID, _encode(datasets[0])))
    finally:
        assoc.release()

    assert statuses["garbage"].Status == CANNOT_UNDERSTAND
    assert statuses["no_sop_uid"].Status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOPInstanceUID" in statuses["no_sop_uid"].ErrorComment
    assert statuses["no_study_uid"].Status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert statuses["truncated"].Status in (CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS)
    assert all(status.get("ErrorComment") for status in statuses.values())
    assert good.Status == 0x0000

    with get_db(node.app).session() as session:
        stored = session.scalars(select(ImagingInstance.sop_instance_uid)).all()
        study = session.scalar(select(ImagingStudy))
    assert stored == [datasets[0].SOPInstanceUID]
    assert study is not None and study.referral_id is None  # unknown accession: reconciliation queue
    assert len(list(Path(node.app.config["DICOM_STORAGE_DIR"]).rglob("*.dcm"))) == 1
    # And a fresh peer is still served.
    run_tool(["echoscu", "-aec", NODE_AE, "127.0.0.1", str(node.port)])


def _full(ds: pydicom.Dataset) -> bytes:
    buffer = DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_cli_serves_until_sigterm(live_database: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": live_database,
        "HOSPITAL_INSTANCE_DIR": str(tmp_path),
        "SECRET_KEY": "test-secret",
        "REDIS_URL": "",
    }
    command = [sys.executable, "-m", "flask", "--app", "hospital.app:create_app", "dicom",
               "--host", "127.0.0.1", "--port", str(port), "--ae-title", "CLINODE"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def answers() -> bool:
            echo = subprocess.run(["echoscu", "-aec", "CLINODE", "127.0.0.1", str(port)], capture_output=True, timeout=10)
            return echo.returncode == 0

        wait_for(answers, timeout=30)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "DICOM node stopped" in output


TRANSFER_SYNTAX_CASES = [
    # (converter command, storescu proposal flag, transfer syntax the node must keep)
    (["dcmconv", "+ti"], "-xi", pydicom.uid.ImplicitVRLittleEndian),
    (["dcmconv", "+tb"], "-xb", pydicom.uid.ExplicitVRBigEndian),
    (["dcmconv", "+td"], "-xd", pydicom.uid.DeflatedExplicitVRLittleEndian),
    (["dcmcjpeg", "+e1"], "-xs", pydicom.uid.JPEGLosslessSV1),
    (["dcmcjpeg", "+eb"], "-xy", pydicom.uid.JPEGBaseline8Bit),
    (["dcmcjpls"], "-xt", pydicom.uid.JPEGLSLossless),
    (["dcmcrle"], "-xr", pydicom.uid.RLELossless),
]


def test_compressed_and_other_transfer_syntaxes_are_kept_as_sent(node: Node, tmp_path: Path) -> None:
    plain = write_ct_series(
        make_ct_phantom(11, n_slices=len(TRANSFER_SYNTAX_CASES), size=64), tmp_path / "plain",
        patient_id="TS-0001", patient_name="Syntax^Sam", accession_number="TSACC",
    )
    expected: dict[str, str] = {}
    for (converter, flag, syntax), source in zip(TRANSFER_SYNTAX_CASES, plain, strict=True):
        if syntax == pydicom.uid.JPEGBaseline8Bit:
            # Baseline JPEG is 8-bit only; a real modality sends such images for e.g. secondary captures.
            ds = pydicom.dcmread(source)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = (ds.pixel_array // 16).astype("uint8").tobytes()
            pydicom.dcmwrite(source, ds, enforce_file_format=True)
        converted = tmp_path / f"{syntax.name.replace(' ', '_')}.dcm"
        run_tool([*converter, str(source), str(converted)])
        assert pydicom.dcmread(converted, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        run_tool(["storescu", flag, "-aec", NODE_AE, "127.0.0.1", str(node.port), str(converted)])
        expected[pydicom.dcmread(converted, stop_before_pixels=True).SOPInstanceUID] = str(syntax)

    with get_db(node.app).session() as session:
        kept = {i.sop_instance_uid: i.transfer_syntax_uid for i in session.scalars(select(ImagingInstance))}
    assert kept == expected
    for path in Path(node.app.config["DICOM_STORAGE_DIR"]).rglob("*.dcm"):
        stored = pydicom.dcmread(path, stop_before_pixels=True)
        assert stored.file_meta.TransferSyntaxUID == expected[stored.SOPInstanceUID]


def test_storescu_of_cut_off_images_is_refused_and_nothing_kept(node: Node, tmp_path: Path) -> None:
    """A modality deletes its copy on Success, so an image cut off on its way must get a failure."""
    whole, short_element, multiframe, rle = write_ct_series(
        make_ct_phantom(13, n_slices=4, size=64), tmp_path / "plain",
        patient_id="CUT-0001", patient_name="Cut^Carla", accession_number="CUTACC",
    )
    # The Pixel Data element's own length is consistent, but 100 rows are missing.
    ds = pydicom.dcmread(short_element)
    ds.PixelData = ds.PixelData[: 64 * 2 * 20]
    pydicom.dcmwrite(short_element, ds, enforce_file_format=True)
    # Says three frames, holds two.
    ds = pydicom.dcmread(multiframe)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 2
    pydicom.dcmwrite(multiframe, ds, enforce_file_format=True)
    # RLE with a frame count its fragments do not have.
    converted = tmp_path / "rle.dcm"
    run_tool(["dcmcrle", str(rle), str(converted)])
    ds = pydicom.dcmread(converted)
    ds.NumberOfFrames = 2
    pydicom.dcmwrite(converted, ds, enforce_file_format=True)

    for path, flag in [(short_element, "-xe"), (multiframe, "-xe"), (converted, "-xr")]:
        result = subprocess.run(
            ["storescu", "-d", flag, "-aec", NODE_AE, "127.0.0.1", str(node.port), str(path)],
            capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False,
        )
        output = result.stdout + result.stderr
        assert "0xa900" in output and "cut off" in output, output
    run_tool(["storescu", "-aec", NODE_AE, "127.0.0.1", str(node.port), str(whole)])

    with get_db(node.app).session() as session:
        stored = session.scalars(select(ImagingInstance.sop_instance_uid)).all()
    assert stored == [pydicom.dcmread(whole, stop_before_pixels=True).SOPInstanceUID]
    assert len(list(Path(node.app.config["DICOM_STORAGE_DIR"]).rglob("*.dcm"))) == 1


def test_an_association_to_another_called_ae_title_is_rejected(node: Node) -> None:
    ae = AE(ae_title="LOSTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SOMEONEELSE")
    assert assoc.is_rejected
    refused = subprocess.run(["echoscu", "-aec", "SOMEONEELSE", "127.0.0.1", str(node.port)],
                             capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    assert refused.returncode != 0 and "Called AE Title Not Recognized" in refused.stdout + refused.stderr
    run_tool(["echoscu", "-aec", NODE_AE, "127.0.0.1", str(node.port)])


PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.8.498.99.1"  # pydicom's root: a vendor's private storage class


def _private_instance() -> pydicom.Dataset:
    ds = ct_series_datasets(make_ct_phantom(17, n_slices=1, size=32), patient_id="PRIV-1", patient_name="Private^Pat",
                            accession_number="PRIVACC")[0]
    ds.SOPClassUID = PRIVATE_SOP_CLASS
    return ds


def _send_private(port: int) -> int | None:
    """C-STORE one private-class instance; its status, or None when no context was accepted."""
    ds = _private_instance()
    ae = AE(ae_title="VENDORSCU")
    ae.add_requested_context(PRIVATE_SOP_CLASS, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        if not any(cx.abstract_syntax == PRIVATE_SOP_CLASS for cx in assoc.accepted_contexts):
            return None
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_private_sop_classes_are_refused_by_default(node: Node) -> None:
    assert _send_private(node.port) is None
    with get_db(node.app).session() as session:
        assert session.scalar(select(func.count()).select_from(ImagingInstance)) == 0


@pytest.fixture()
def accepting_node(live_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)
    app = make_test_app(live_database, tmp_path / "instance", DICOM_ACCEPT_UNKNOWN_SOP_CLASSES=True)
    port = free_port()
    previous = _config.UNRESTRICTED_STORAGE_SERVICE
    server = start_dicom_server(app, host="127.0.0.1", port=port, ae_title=NODE_AE, block=False)
    assert server is not None
    try:
        yield Node(app, server, port, [])
    finally:
        server.shutdown()
        _config.UNRESTRICTED_STORAGE_SERVICE = previous  # a pynetdicom global: restore it
        get_db(app).engine.dispose()


def test_private_sop_classes_are_stored_when_the_policy_accepts_them(accepting_node: Node, tmp_path: Path) -> None:
    assert _send_private(accepting_node.port) == 0x0000
    # A public class still goes through its ordinary context.
    [whole] = write_ct_series(make_ct_phantom(18, n_slices=1, size=32), tmp_path, patient_id="PRIV-2",
                              patient_name="Public^Pat", accession_number="PUBACC")
    run_tool(["storescu", "-aec", NODE_AE, "127.0.0.1", str(accepting_node.port), str(whole)])
    with get_db(accepting_node.app).session() as session:
        classes = sorted(session.scalars(select(ImagingInstance.sop_class_uid)).all())
    assert classes == sorted([PRIVATE_SOP_CLASS, CTImageStorage])
