"""Storing instances, idempotency, matching to orders, reconciliation and study completion."""

from __future__ import annotations

import copy
import errno
import hashlib
import random
import struct
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

import hospital.jobs
import imaging_orders.archive.ingest as ingest
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.dicom_status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    STORE_PROCESSING_FAILURE,
)
from hospital.errors import Conflict
from hospital.events import DomainEvent
from hospital.models import JobRecord
from imaging_orders.archive.events import StudyCompleted
from imaging_orders.archive.ingest import (
    InstanceRejected,
    StorageUnavailable,
    complete_quiet_studies,
    reconcile_study,
    store_instance,
)
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, StudyStatus
from imaging_orders.archive.query_retrieve import StudyCriteria, search_studies
from imaging_orders.models import AppointmentStatus
from referrals.models import ReferralStatus
from synthetic.dicom_factory import ct_series_datasets
from synthetic.phantoms import make_ct_phantom
from tests.conftest import make_test_app
from tests.imaging_orders.factories import Order, make_centre, make_order

LATER = timedelta(hours=1)


def ct_study(mrn: str, accession: str, *, slices: int = 4, series: int = 1, seed: int = 7) -> list[pydicom.Dataset]:
    phantom = make_ct_phantom(seed, n_slices=slices, size=64)
    study_uid = pydicom.uid.generate_uid()
    datasets: list[pydicom.Dataset] = []
    for number in range(1, series + 1):
        datasets += ct_series_datasets(
            phantom, patient_id=mrn, patient_name="Rivera^Alex", accession_number=accession,
            study_instance_uid=study_uid, series_number=number,
        )
    return datasets


@pytest.fixture()
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every study-completed publish, recorded; jobs are not dispatched (no AI runs here)."""
    calls: list[dict[str, Any]] = []
    real_publish = ingest.publish

    def recording_publish(session: Session, event: DomainEvent) -> list[JobRecord]:
        calls.append({"event": event.name, "study_id": event.payload()["study_id"]})
        return real_publish(session, event)

    monkeypatch.setattr(ingest, "publish", recording_publish)
    monkeypatch.setattr(hospital.jobs, "dispatch", lambda app, ids: None)
    return calls


def storage_files(app: Flask) -> set[Path]:
    root = Path(app.config["DICOM_STORAGE_DIR"])
    return set(root.rglob("*")) if root.exists() else set()


def store_all(app: Flask, datasets: list[pydicom.Dataset]) -> list[ingest.StoreResult]:
    return [store_instance(app, ds, transfer_syntax_uid=None, calling_ae="TESTSCU") for ds in datasets]


# ---------------------------------------------------------------------------------------------
# Storing
# ---------------------------------------------------------------------------------------------


def test_store_writes_file_and_indexes_it(app: Flask, db_session: Session) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    datasets = ct_study(order.patient.mrn, order.referral.accession_number or "", series=2)

    results = store_all(app, datasets)

    assert not any(r.duplicate for r in results)
    study = db_session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == datasets[0].StudyInstanceUID))
    assert study is not None and study.status is StudyStatus.REGISTERED
    assert len(study.series) == 2
    instances = [i for s in study.series for i in s.instances]
    assert len(instances) == len(datasets)
    first = instances[0]
    path = Path(app.config["DICOM_STORAGE_DIR"]) / first.path
    assert first.path == f"{study.study_instance_uid}/{first.series.series_instance_uid}/{first.sop_instance_uid}.dcm"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == first.sha256
    assert len(data) == first.size_bytes
    on_disk = pydicom.dcmread(path)
    assert on_disk.file_meta.MediaStorageSOPInstanceUID == first.sop_instance_uid
    assert on_disk.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert on_disk.pixel_array.shape == (64, 64)
    assert not list(path.parent.glob(".incoming-*"))  # no temp files left behind


def test_same_instance_twice_is_stored_once(app: Flask, db_session: Session) -> None:
    datasets = ct_study("MRN-NONE", "ACC-UNKNOWN1", slices=2)
    first = store_all(app, datasets)
    again = store_all(app, datasets)

    assert [r.duplicate for r in again] == [True, True]
    assert [r.instance_id for r in again] == [r.instance_id for r in first]
    uids = [ds.SOPInstanceUID for ds in datasets]
    count = db_session.scalar(select(func.count()).select_from(ImagingInstance).where(ImagingInstance.sop_instance_uid.in_(uids)))
    assert count == 2


def test_oddities_are_stored_with_warnings(app: Flask, db_session: Session) -> None:
    ds = copy.deepcopy(ct_study("MRN-ODD", "ACC-ODD", slices=1)[0])
    del ds.PatientName
    ds.add_new(0x00091010, "LO", "vendor secret")
    ds.SpecificCharacterSet = "ISO_IR 999"

    result = store_instance(app, ds, transfer_syntax_uid=None, calling_ae="TESTSCU")

    instance = db_session.get(ImagingInstance, result.instance_id)
    assert instance is not None
    text = " | ".join(instance.warnings)
    assert "PatientName is missing" in text
    assert "private elements" in text
    assert "ISO_IR 999" in text


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"])
def test_missing_uid_is_rejected_and_nothing_written(app: Flask, db_session: Session, keyword: str) -> None:
    ds = copy.deepcopy(ct_study("MRN-X", "ACC-X", slices=1)[0])
    delattr(ds, keyword)
    before = storage_files(app)

    with pytest.raises(InstanceRejected) as caught:
        store_instance(app, ds, transfer_syntax_uid=None, calling_ae="TESTSCU")

    assert caught.value.dicom_status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert keyword in caught.value.reason
    assert storage_files(app) == before


def test_invalid_uid_is_rejected(app: Flask, db_session: Session) -> None:
    ds = copy.deepcopy(ct_study("MRN-X", "ACC-X", slices=1)[0])
    ds.SeriesInstanceUID = "1.2.../../etc"
    with pytest.raises(InstanceRejected) as caught:
        store_instance(app, ds, transfer_syntax_uid=None, calling_ae="TESTSCU")
    assert caught.value.dicom_status == DATASET_DOES_NOT_MATCH_SOP_CLASS


@pytest.mark.parametrize("payload", [b"this is not dicom at all" * 20, bytes(range(256)) * 8, b""])
def test_garbage_bytes_are_rejected(app: Flask, db_session: Session, payload: bytes) -> None:
    with pytest.raises(InstanceRejected) as caught:
        store_instance(app, payload, transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian, calling_ae="TESTSCU")
    assert caught.value.dicom_status == CANNOT_UNDERSTAND


def test_part10_bytes_and_command_uid_mismatch(app: Flask, db_session: Session, tmp_path: Path) -> None:
    ds = ct_study("MRN-P10", "ACC-P10", slices=1)[0]
    path = tmp_path / "one.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)

    with pytest.raises(InstanceRejected) as caught:
        store_instance(
            app, path.read_bytes(), transfer_syntax_uid=None, calling_ae="TESTSCU",
            expected_sop_instance_uid="1.2.3.4",
        )
    assert caught.value.dicom_status == DATASET_DOES_NOT_MATCH_SOP_CLASS

    result = store_instance(app, path.read_bytes(), transfer_syntax_uid=None, calling_ae="TESTSCU")
    assert result.sop_instance_uid == ds.SOPInstanceUID


def test_disk_full_leaves_nothing_half_written(app: Flask, db_session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = ct_study("MRN-FULL", "ACC-FULL", slices=1)

    def disk_full(target: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ingest, "write_file_durably", disk_full)
    with pytest.raises(StorageUnavailable) as caught:
        store_all(app, datasets)
    assert caught.value.dicom_status == OUT_OF_RESOURCES
    assert db_session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == datasets[0].StudyInstanceUID)) is None


def test_database_failure_after_write_removes_the_file(
    app: Flask, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = ct_study("MRN-DB", "ACC-DB", slices=1)
    real_write = ingest.write_file_durably
    written: list[Path] = []

    def write_then_lose_database(target: Path, data: bytes) -> None:
        real_write(target, data)
        written.append(target)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(ingest, "write_file_durably", write_then_lose_database)
    with pytest.raises(StorageUnavailable) as caught:
        store_all(app, datasets)
    assert caught.value.dicom_status == STORE_PROCESSING_FAILURE
    assert written and not written[0].exists()
    assert db_session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == datasets[0].StudyInstanceUID)) is None


def test_a_commit_in_doubt_keeps_the_file_for_the_row_that_may_exist(
    app: Flask, db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary died after committing (its synchronous standby, promoted, has the row) but
    before answering: the sender is told to retry, and the row must not point at a removed file."""
    datasets = ct_study("MRN-DOUBT", "ACC-DOUBT", slices=1)
    real_commit = Session.commit

    def commit_then_lose_the_answer(self: Session) -> None:
        real_commit(self)
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(Session, "commit", commit_then_lose_the_answer)
    with pytest.raises(StorageUnavailable) as caught:
        store_all(app, datasets)
    monkeypatch.undo()
    assert caught.value.dicom_status == STORE_PROCESSING_FAILURE
    instance = db_session.scalar(select(ImagingInstance).where(ImagingInstance.sop_instance_uid == datasets[0].SOPInstanceUID))
    assert instance is not None, "committed despite the lost answer"
    assert (Path(app.config["DICOM_STORAGE_DIR"]) / instance.path).exists()
    assert store_all(app, datasets)[0].duplicate, "the sender's re-send finds what was kept"


# ---------------------------------------------------------------------------------------------
# Pixel data integrity: a Success is a promise the image is whole
# ---------------------------------------------------------------------------------------------


def _nothing_kept(app: Flask, db_session: Session, ds: pydicom.Dataset, before: set[Path]) -> None:
    assert storage_files(app) == before
    assert db_session.scalar(select(ImagingInstance).where(ImagingInstance.sop_instance_uid == ds.SOPInstanceUID)) is None
    assert db_session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == ds.StudyInstanceUID)) is None


def _multiframe(ds: pydicom.Dataset, frames: int) -> pydicom.Dataset:
    many = copy.deepcopy(ds)
    many.NumberOfFrames = frames
    many.PixelData = ds.PixelData * frames
    return many


def _rle(ds: pydicom.Dataset) -> pydicom.Dataset:
    compressed = copy.deepcopy(ds)
    compressed.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
    return compressed


def _cut_pixel_data(ds: pydicom.Dataset, keep: int) -> pydicom.Dataset:
    cut = copy.deepcopy(ds)
    cut.PixelData = ds.PixelData[:keep]
    return cut


@pytest.mark.parametrize(
    "make_broken",
    [
        pytest.param(lambda ds: _cut_pixel_data(ds, len(ds.PixelData) - 128), id="native-short"),
        pytest.param(lambda ds: _cut_pixel_data(_multiframe(ds, 3), 2 * len(ds.PixelData)), id="native-frames-missing"),
        pytest.param(lambda ds: _cut_pixel_data(ds, 0), id="native-empty"),
    ],
)
def test_cut_off_native_pixel_data_is_refused_and_nothing_kept(
    app: Flask, db_session: Session, make_broken: Any
) -> None:
    ds = make_broken(ct_study("MRN-CUT", "ACC-CUT", slices=1)[0])
    before = storage_files(app)

    with pytest.raises(InstanceRejected) as caught:
        store_instance(app, ds, transfer_syntax_uid=None, calling_ae="TESTSCU")

    assert caught.value.dicom_status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "cut off" in caught.value.reason
    _nothing_kept(app, db_session, ds, before)


def test_file_cut_off_inside_its_pixel_data_is_refused(app: Flask, db_session: Session, tmp_path: Path) -> None:
    ds = ct_study("MRN-CUTF", "ACC-CUTF", slices=1)[0]
    path = tmp_path / "whole.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    before = storage_files(app)

    with pytest.raises(InstanceRejected) as caught:
        store_instance(app, path.read_bytes()[:-1000], transfer_syntax_uid=None, calling_ae="TESTSCU")

    assert "cut off" in caught.value.reason
    _nothing_kept(app, db_session, ds, before)


def test_compressed_pixel_data_with_missing_frames_or_cut_off_is_refused(app: Flask, db_session: Session) -> None:
    source = ct_study("MRN-RLE", "ACC-RLE", slices=1)[0]
    one_frame_of_two = _rle(source)
    one_frame_of_two.NumberOfFrames = 2
    cut_in_fragment = _rle(source)
    cut_in_fragment.PixelData = cut_in_fragment.PixelData[:-64]  # the last item's length now runs past the end
    undecodable = _rle(source)
    # An RLE header with one segment: 16-bit pixels need two, so the frame cannot be decoded.
    one_segment = struct.pack("<16L", 1, 64, *([0] * 14)) + b"\x00\x00" * 8
    undecodable.PixelData = pydicom.encaps.encapsulate([one_segment])
    before = storage_files(app)

    for broken, status, words in [
        (one_frame_of_two, DATASET_DOES_NOT_MATCH_SOP_CLASS, "2 frame(s) declared, 1 fragment(s)"),
        (cut_in_fragment, DATASET_DOES_NOT_MATCH_SOP_CLASS, "cut off"),
        (undecodable, CANNOT_UNDERSTAND, "cannot be decoded"),
    ]:
        with pytest.raises(InstanceRejected) as caught:
            store_instance(app, broken, transfer_syntax_uid=None, calling_ae="TESTSCU")
        assert (caught.value.dicom_status, words in caught.value.reason) == (status, True), caught.value.reason
    _nothing_kept(app, db_session, source, before)


def test_whole_images_in_every_shape_are_kept(app: Flask, db_session: Session) -> None:
    source = ct_study("MRN-WHOLE", "ACC-WHOLE", slices=3)
    multiframe = _multiframe(source[1], 4)
    results = store_all(app, [source[0], multiframe, _rle(source[2])])
    assert not any(r.duplicate for r in results)
    assert not any("Pixel" in w for r in results for w in r.warnings)


# ---------------------------------------------------------------------------------------------
# Odd header values: indexed as sent, never the loop stopped
# ---------------------------------------------------------------------------------------------


def test_two_valued_accession_number_indexes_and_matches_the_first(app: Flask, db_session: Session) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    datasets = ct_study(order.patient.mrn, order.referral.accession_number or "", slices=1)
    datasets[0].AccessionNumber = [order.referral.accession_number, "OTHERACC"]

    [result] = store_all(app, datasets)

    study = _study(db_session, datasets)
    assert study.accession_number == order.referral.accession_number
    assert study.referral_id == order.referral.id
    assert any("AccessionNumber has 2 values" in w for w in result.warnings)


def test_values_longer_than_their_vr_allows_are_indexed_whole_and_found(app: Flask, db_session: Session) -> None:
    long_accession = "RIS-2026-000000123456"  # 21 characters; SH allows 16
    long_patient_id = "HOSPITAL-NORTH/" + "9" * 60  # 75; LO allows 64
    long_description = "CT THORAX ABDOMEN PELVIS WITH CONTRAST, PORTAL VENOUS PHASE, LOW DOSE PROTOCOL v2"
    datasets = ct_study(long_patient_id, long_accession, slices=1)
    datasets[0].StudyDescription = long_description

    [result] = store_all(app, datasets)

    study = _study(db_session, datasets)
    assert (study.accession_number, study.dicom_patient_id, study.description) == (
        long_accession, long_patient_id, long_description)
    assert any("AccessionNumber is 21 characters" in w and "indexed in full" in w for w in result.warnings)
    found = search_studies(db_session, StudyCriteria(accession_numbers=[long_accession], patient_ids=[long_patient_id]))
    assert [s.id for s in found] == [study.id]


# ---------------------------------------------------------------------------------------------
# Matching and reconciliation
# ---------------------------------------------------------------------------------------------


def _study(session: Session, datasets: list[pydicom.Dataset]) -> ImagingStudy:
    study = session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == datasets[0].StudyInstanceUID))
    assert study is not None
    session.refresh(study)
    return study


def test_study_matches_order_by_accession(app: Flask, db_session: Session) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    datasets = ct_study(order.patient.mrn, order.referral.accession_number or "")

    store_all(app, datasets)

    study = _study(db_session, datasets)
    db_session.refresh(order.referral)
    assert order.appointment is not None
    db_session.refresh(order.appointment)
    assert study.referral_id == order.referral.id
    assert study.patient_id == order.patient.id
    assert study.organization_id == centre.organization.id
    assert order.referral.status is ReferralStatus.IN_PROGRESS
    assert order.appointment.status is AppointmentStatus.ARRIVED


def test_patient_id_mismatch_is_not_matched(app: Flask, db_session: Session) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    datasets = ct_study("SOMEONE-ELSE", order.referral.accession_number or "")

    results = store_all(app, datasets)

    study = _study(db_session, datasets)
    db_session.refresh(order.referral)
    assert study.referral_id is None and study.patient_id is None
    assert order.referral.status is ReferralStatus.SCHEDULED
    assert any("PatientID" in w for w in results[0].warnings)
    # Staff cannot force it either: the patient must agree.
    with pytest.raises(Conflict):
        reconcile_study(db_session, study.id, order.referral.id)


def test_unknown_accession_waits_for_reconciliation(app: Flask, db_session: Session, published: list[dict[str, Any]]) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    datasets = ct_study(order.patient.mrn, "TYPO-ACC")
    store_all(app, datasets)
    study = _study(db_session, datasets)
    assert study.referral_id is None

    assert study.id in complete_quiet_studies(app, now=utcnow() + LATER)
    db_session.refresh(study)
    assert study.status is StudyStatus.AVAILABLE
    assert published == []  # unmatched: nothing downstream until a human decides

    reconcile_study(db_session, study.id, order.referral.id)
    db_session.flush()
    db_session.refresh(order.referral)
    assert study.referral_id == order.referral.id
    assert order.referral.status is ReferralStatus.COMPLETED
    assert published == [{"event": "imaging.study_completed", "study_id": study.id}]
    # Reconciling twice changes nothing and publishes nothing more.
    reconcile_study(db_session, study.id, order.referral.id)
    assert len(published) == 1


# ---------------------------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------------------------


def test_quiet_study_completes_once(app: Flask, db_session: Session, published: list[dict[str, Any]]) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    datasets = ct_study(order.patient.mrn, order.referral.accession_number or "")
    store_all(app, datasets)
    study = _study(db_session, datasets)

    assert study.id not in complete_quiet_studies(app)  # not quiet yet
    assert study.id in complete_quiet_studies(app, now=utcnow() + LATER)
    assert study.id not in complete_quiet_studies(app, now=utcnow() + 2 * LATER)

    db_session.refresh(study)
    db_session.refresh(order.referral)
    assert order.appointment is not None
    db_session.refresh(order.appointment)
    assert study.status is StudyStatus.AVAILABLE and study.completed_at is not None
    assert order.referral.status is ReferralStatus.COMPLETED
    assert order.appointment.status is AppointmentStatus.FULFILLED
    assert published == [{"event": "imaging.study_completed", "study_id": study.id}]
    records = db_session.scalars(select(JobRecord).where(JobRecord.event == "imaging.study_completed")).all()
    subscribers = app.extensions["hospital.jobs"].subscriptions.get(StudyCompleted, [])
    assert len([r for r in records if r.payload["study_id"] == study.id]) == len(subscribers)


def test_instance_after_completion_is_kept_with_warning(app: Flask, db_session: Session, published: list[dict[str, Any]]) -> None:
    datasets = ct_study("MRN-LATE", "ACC-LATE", slices=2)
    store_all(app, datasets[:1])
    complete_quiet_studies(app, now=utcnow() + LATER)
    late = store_all(app, datasets[1:])[0]
    assert not late.duplicate
    assert any("after the study" in w for w in late.warnings)
    assert _study(db_session, datasets).status is StudyStatus.AVAILABLE


# ---------------------------------------------------------------------------------------------
# Races (real commits, several threads)
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def live_app(live_database: str, tmp_path: Path) -> Iterator[Flask]:
    app = make_test_app(live_database, tmp_path)
    yield app
    get_db(app).engine.dispose()


def _run_threads(count: int, target: Any) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def test_concurrent_stores_of_one_study(live_app: Flask) -> None:
    datasets = ct_study("MRN-RACE", "ACC-RACE", slices=6, series=2)

    def send_all(index: int) -> None:
        order = list(datasets)
        random.Random(index).shuffle(order)
        store_all(live_app, order)

    assert _run_threads(6, send_all) == []
    with get_db(live_app).session() as session:
        assert session.scalar(select(func.count()).select_from(ImagingStudy)) == 1
        assert session.scalar(select(func.count()).select_from(ImagingSeries)) == 2
        assert session.scalar(select(func.count()).select_from(ImagingInstance)) == len(datasets)
        for instance in session.scalars(select(ImagingInstance)):
            data = (Path(live_app.config["DICOM_STORAGE_DIR"]) / instance.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == instance.sha256


def test_two_completers_publish_once(live_app: Flask, published: list[dict[str, Any]]) -> None:
    with get_db(live_app).transaction() as session:
        centre = make_centre(session)
        orders: list[Order] = [make_order(session, centre) for _ in range(4)]
    for n, order in enumerate(orders):
        store_all(live_app, ct_study(order.patient.mrn, order.referral.accession_number or "", slices=1, seed=n))

    later = utcnow() + LATER
    completed: list[list[int]] = [[], [], [], []]

    def complete(index: int) -> None:
        completed[index] = complete_quiet_studies(live_app, now=later)

    assert _run_threads(4, complete) == []
    winners = sorted(i for ids in completed for i in ids)
    assert len(winners) == 4 and len(set(winners)) == 4
    assert sorted(call["study_id"] for call in published) == winners
