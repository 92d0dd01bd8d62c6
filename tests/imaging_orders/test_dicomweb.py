"""DICOMweb: STOW-RS through the ingest path, QIDO-RS searches, WADO-RS retrieval and rendering,
each limited to the caller's centre and patient compartment and audited."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.auth import issue_token
from hospital.dicom_status import (
    CANNOT_UNDERSTAND,
    COERCION_OF_DATA_ELEMENTS,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    SOP_CLASS_NOT_SUPPORTED,
)
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from imaging_orders.archive import dicomweb, reconciliation
from imaging_orders.archive.dicomweb import parse_multipart_related
from imaging_orders.archive.models import ImagingInstance, ImagingStudy
from tests.conftest import ApiClient, make_test_app
from tests.imaging_orders.dicom_payloads import demo_order, multipart_body, part10, small_ct_study
from tests.imaging_orders.factories import make_centre

MRN = "DW-0001"
ACCESSION = "DWACC1"
# DICOM JSON tags used below.
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
REFERENCED_SOP_INSTANCE_UID = "00081155"
RETRIEVE_URL = "00081190"
STUDY_INSTANCE_UID = "0020000D"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
MODALITIES_IN_STUDY = "00080061"
PATIENT_BIRTH_DATE = "00100030"
SOP_INSTANCE_UID = "00080018"
ROWS = "00280010"


def register_blueprints(app: Flask) -> Flask:
    """Until wiring.py registers them."""
    for blueprint in (dicomweb.bp, reconciliation.bp):
        if blueprint.name not in app.blueprints:
            app.register_blueprint(blueprint)
    return app


@pytest.fixture(scope="module")
def app(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return register_blueprints(make_test_app(database_url, tmp_path_factory.mktemp("dicomweb")))


@pytest.fixture(autouse=True)
def no_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)


@pytest.fixture()
def stored(as_role: Any, demo: DemoSeed, db_session: Session) -> Iterator[dict[str, Any]]:
    """An order for a new patient at the demo centre and its three-slice study sent by STOW-RS."""
    order = demo_order(db_session, demo, mrn=MRN, accession_number=ACCESSION)
    db_session.commit()
    datasets = small_ct_study(patient_id=MRN, accession_number=ACCESSION)
    body, content_type = multipart_body([part10(ds) for ds in datasets])
    response = as_role("imaging_staff").post("/dicomweb/studies", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    yield {"order": order, "datasets": datasets, "response": response.get_json(),
           "study_uid": datasets[0].StudyInstanceUID, "series_uid": datasets[0].SeriesInstanceUID}


def other_centre_staff(client: FlaskClient, db_session: Session) -> ApiClient:
    centre = make_centre(db_session)
    token, _ = issue_token(db_session, centre.user, 3600)
    db_session.commit()
    return ApiClient(client, token)


def test_stow_stores_through_ingest_and_matches_the_order(stored: dict[str, Any], db_session: Session) -> None:
    body = stored["response"]
    referenced = body[REFERENCED_SOP_SEQUENCE]["Value"]
    assert [item[REFERENCED_SOP_INSTANCE_UID]["Value"][0] for item in referenced] == [
        ds.SOPInstanceUID for ds in stored["datasets"]
    ]
    assert all("/dicomweb/studies/" in item[RETRIEVE_URL]["Value"][0] for item in referenced)
    assert FAILED_SOP_SEQUENCE not in body
    study = db_session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == stored["study_uid"]))
    assert study is not None and study.referral_id == stored["order"].referral.id
    audit = db_session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "C", AuditEvent.entity_id == str(study.id)))
    assert audit == 1


def test_stow_is_idempotent_and_reports_partial_failure(stored: dict[str, Any], as_role: Any, db_session: Session) -> None:
    parts = [part10(ds) for ds in stored["datasets"]] + [b"this is not DICOM" * 10]
    body, content_type = multipart_body(parts)
    response = as_role("imaging_staff").post("/dicomweb/studies", data=body, content_type=content_type)
    assert response.status_code == 202
    assert response.mimetype == "application/dicom+json"
    answer = response.get_json()
    assert len(answer[REFERENCED_SOP_SEQUENCE]["Value"]) == 3
    [failed] = answer[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [CANNOT_UNDERSTAND]
    count = db_session.scalar(select(func.count()).select_from(ImagingInstance))
    assert count == 3


def test_stow_refusals(as_role: Any, demo: DemoSeed) -> None:
    staff = as_role("imaging_staff")
    garbage, content_type = multipart_body([b"\x00" * 300, b"DICM"])
    none_stored = staff.post("/dicomweb/studies", data=garbage, content_type=content_type)
    assert none_stored.status_code == 409
    assert len(none_stored.get_json()[FAILED_SOP_SEQUENCE]["Value"]) == 2
    ds = small_ct_study(patient_id="X", accession_number="Y", n_slices=1)[0]
    body, content_type = multipart_body([part10(ds)])
    wrong_study = staff.post(f"/dicomweb/studies/{generate_uid()}", data=body, content_type=content_type)
    assert wrong_study.status_code == 409
    assert wrong_study.get_json()[FAILED_SOP_SEQUENCE]["Value"][0][FAILURE_REASON]["Value"] == [DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert staff.post("/dicomweb/studies", data=body, content_type="application/dicom").status_code == 415
    no_boundary = staff.post("/dicomweb/studies", data=body, content_type='multipart/related; type="application/dicom"')
    assert no_boundary.status_code == 400
    assert no_boundary.mimetype == "application/problem+json"
    truncated = staff.post("/dicomweb/studies", data=body[:-40], content_type=content_type)
    assert truncated.status_code == 400
    assert as_role("clinician").post("/dicomweb/studies", data=body, content_type=content_type).status_code == 403


def test_multipart_parser_handles_preamble_empty_headers_and_binary_boundaries() -> None:
    boundary = "b0undary"
    payload = b"\r\n--b0undar" + bytes(range(256))  # looks like the boundary but is not
    body = (b"preamble text\r\n--b0undary\r\n\r\n" + payload + b"\r\n--b0undary  \r\nContent-Type: application/dicom\r\n\r\n"
            + b"second" + b"\r\n--b0undary--\r\nepilogue")
    parts = parse_multipart_related(body, f'multipart/related; type="application/dicom"; boundary="{boundary}"')
    assert [bytes(p.content) for p in parts] == [payload, b"second"]
    assert parts[1].headers == {"content-type": "application/dicom"}


def test_qido_searches_by_level_and_key(stored: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    found = staff.get(f"/dicomweb/studies?PatientID={MRN}&includefield=PatientBirthDate")
    assert found.status_code == 200 and found.mimetype == "application/dicom+json"
    [study] = found.get_json()
    assert study[STUDY_INSTANCE_UID]["Value"] == [stored["study_uid"]]
    assert study[NUMBER_OF_STUDY_RELATED_INSTANCES]["Value"] == [3]
    assert study[MODALITIES_IN_STUDY]["Value"] == ["CT"]
    assert study[PATIENT_BIRTH_DATE]["Value"] == ["19680412"]
    assert len(staff.get(f"/dicomweb/studies?AccessionNumber={ACCESSION}&StudyDate=20260301-20260331").get_json()) == 1
    assert staff.get(f"/dicomweb/studies?00080050={ACCESSION}&StudyDate=-20260101").get_json() == []
    assert len(staff.get("/dicomweb/studies?PatientID=DW-*&ModalitiesInStudy=CT").get_json()) == 1
    assert staff.get("/dicomweb/studies?PatientID=DW-*&limit=1&offset=1").get_json() == []
    series = staff.get(f"/dicomweb/studies/{stored['study_uid']}/series?Modality=CT").get_json()
    assert len(series) == 1
    instances = staff.get(
        f"/dicomweb/studies/{stored['study_uid']}/series/{stored['series_uid']}/instances?includefield=Rows"
    ).get_json()
    assert [i[SOP_INSTANCE_UID]["Value"][0] for i in instances] == [ds.SOPInstanceUID for ds in stored["datasets"]]
    assert instances[0][ROWS]["Value"] == [32]
    assert staff.get("/dicomweb/studies?colour=blue").status_code == 400
    assert staff.get("/dicomweb/studies?StudyDate=2026").status_code == 400
    ignored = staff.get("/dicomweb/studies?PatientSex=F")
    assert ignored.status_code == 200 and "PatientSex" in ignored.headers["Warning"]


def test_qido_is_limited_to_the_centre_and_compartment(stored: dict[str, Any], as_role: Any, client: FlaskClient,
                                                        db_session: Session) -> None:
    assert as_role("pharmacist").get("/dicomweb/studies").get_json() == []
    assert as_role("patient2").get("/dicomweb/studies").get_json() == []
    assert other_centre_staff(client, db_session).get("/dicomweb/studies").get_json() == []
    assert len(as_role("radiologist").get(f"/dicomweb/studies?PatientID={MRN}").get_json()) == 1
    assert len(as_role("clinician").get("/dicomweb/studies").get_json()) == 1  # the referring clinician
    assert len(as_role("admin").get(f"/dicomweb/studies?PatientID={MRN}").get_json()) == 1
    assert client.get("/dicomweb/studies").status_code == 401


def test_wado_retrieves_instances_series_and_study(stored: dict[str, Any], as_role: Any, db_session: Session) -> None:
    staff = as_role("imaging_staff")
    ds0 = stored["datasets"][0]
    base = f"/dicomweb/studies/{stored['study_uid']}"
    one = staff.get(f"{base}/series/{stored['series_uid']}/instances/{ds0.SOPInstanceUID}",
                    headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert one.status_code == 200
    [part] = parse_multipart_related(one.get_data(), one.headers["Content-Type"])
    assert pydicom.dcmread(BytesIO(bytes(part.content))).SOPInstanceUID == ds0.SOPInstanceUID
    whole = staff.get(base)
    parts = parse_multipart_related(whole.get_data(), whole.headers["Content-Type"])
    assert sorted(pydicom.dcmread(BytesIO(bytes(p.content))).SOPInstanceUID for p in parts) == sorted(
        ds.SOPInstanceUID for ds in stored["datasets"])
    assert staff.get(base, headers={"Accept": "application/json"}).status_code == 406
    assert staff.get(base, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'}).status_code == 406
    metadata = staff.get(f"{base}/metadata").get_json()
    assert len(metadata) == 3 and "InlineBinary" not in metadata[0]["7FE00010"]  # a BulkDataURI instead
    assert staff.get(f"/dicomweb/studies/{generate_uid()}").status_code == 404
    reads = db_session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == "R", AuditEvent.description.like("WADO-RS%")))
    assert reads == 3


def test_wado_renders_png_and_jpeg_with_windows(stored: dict[str, Any], as_role: Any) -> None:
    staff = as_role("imaging_staff")
    ds0 = stored["datasets"][0]
    url = f"/dicomweb/studies/{stored['study_uid']}/series/{stored['series_uid']}/instances/{ds0.SOPInstanceUID}"
    png = staff.get(f"{url}/frames/1/rendered", headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.mimetype == "image/png"
    image = Image.open(BytesIO(png.get_data()))
    assert image.size == (32, 32) and image.mode == "L"
    jpeg = staff.get(f"{url}/rendered", headers={"Accept": "image/jpeg"})
    assert jpeg.mimetype == "image/jpeg" and jpeg.get_data()[:2] == b"\xff\xd8"
    narrow = Image.open(BytesIO(staff.get(f"{url}/rendered?window=-2000,10", headers={"Accept": "image/png"}).get_data()))
    assert int(np.asarray(narrow).min()) == 255  # every pixel is above a window centred at -2000 HU
    assert staff.get(f"{url}/rendered?window=abc").status_code == 400
    assert staff.get(f"{url}/frames/2/rendered").status_code == 404
    assert staff.get(f"{url}/rendered", headers={"Accept": "image/gif"}).status_code == 406


def test_wado_is_refused_outside_the_compartment(stored: dict[str, Any], as_role: Any, client: FlaskClient,
                                                  db_session: Session) -> None:
    url = f"/dicomweb/studies/{stored['study_uid']}"
    for caller in (as_role("pharmacist"), as_role("patient2"), other_centre_staff(client, db_session)):
        response = caller.get(url)
        assert response.status_code == 403
        assert response.mimetype == "application/problem+json"
    denied = db_session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.outcome == 4))
    assert denied >= 3


def test_stow_of_cut_off_images_fails_them_and_keeps_nothing(as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    whole, cut, compressed_cut = small_ct_study(patient_id="CUT-W", accession_number="CUTW", n_slices=3)
    cut.PixelData = cut.PixelData[:-200]
    compressed_cut.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
    compressed_cut.NumberOfFrames = 2  # one fragment for two frames
    body, content_type = multipart_body([part10(whole), part10(cut), part10(compressed_cut)])

    response = as_role("imaging_staff").post("/dicomweb/studies", data=body, content_type=content_type)

    assert response.status_code == 202
    answer = response.get_json()
    assert [item[REFERENCED_SOP_INSTANCE_UID]["Value"][0] for item in answer[REFERENCED_SOP_SEQUENCE]["Value"]] == [
        whole.SOPInstanceUID
    ]
    failed = {item[REFERENCED_SOP_INSTANCE_UID]["Value"][0]: item[FAILURE_REASON]["Value"][0]
              for item in answer[FAILED_SOP_SEQUENCE]["Value"]}
    assert failed == {cut.SOPInstanceUID: DATASET_DOES_NOT_MATCH_SOP_CLASS,
                      compressed_cut.SOPInstanceUID: DATASET_DOES_NOT_MATCH_SOP_CLASS}
    kept = db_session.scalars(select(ImagingInstance.sop_instance_uid).where(
        ImagingInstance.sop_instance_uid.in_([whole.SOPInstanceUID, cut.SOPInstanceUID, compressed_cut.SOPInstanceUID])
    )).all()
    assert kept == [whole.SOPInstanceUID]


def test_stow_applies_the_unknown_sop_class_policy(app: Flask, as_role: Any, demo: DemoSeed, db_session: Session) -> None:
    ds = small_ct_study(patient_id="PRIV-W", accession_number="PRIVW", n_slices=1)[0]
    ds.SOPClassUID = "1.2.826.0.1.3680043.8.498.99.1"
    body, content_type = multipart_body([part10(ds)])

    refused = as_role("imaging_staff").post("/dicomweb/studies", data=body, content_type=content_type)
    assert refused.status_code == 409
    assert refused.get_json()[FAILED_SOP_SEQUENCE]["Value"][0][FAILURE_REASON]["Value"] == [SOP_CLASS_NOT_SUPPORTED]

    app.config["DICOM_ACCEPT_UNKNOWN_SOP_CLASSES"] = True
    try:
        accepted = as_role("imaging_staff").post("/dicomweb/studies", data=body, content_type=content_type)
    finally:
        app.config["DICOM_ACCEPT_UNKNOWN_SOP_CLASSES"] = False
    assert accepted.status_code == 200, accepted.get_data(as_text=True)


def test_stow_of_a_corrected_instance_is_accepted_with_a_warning(stored: dict[str, Any], as_role: Any) -> None:
    """PS3.18 10.5.3: a stored instance that was coerced carries a WarningReason and the response is
    202, so a STOW-RS sender learns that its corrected re-send became a new version."""
    corrected = copy.deepcopy(stored["datasets"][0])
    corrected.PatientName = "Corrected^Name"
    body, content_type = multipart_body([part10(corrected), part10(stored["datasets"][1])])
    response = as_role("imaging_staff").post("/dicomweb/studies", data=body, content_type=content_type)
    assert response.status_code == 202, response.get_data(as_text=True)
    first, unchanged = response.get_json()[REFERENCED_SOP_SEQUENCE]["Value"]
    assert first[WARNING_REASON]["Value"] == [COERCION_OF_DATA_ELEMENTS]
    assert WARNING_REASON not in unchanged
    assert FAILED_SOP_SEQUENCE not in response.get_json()
