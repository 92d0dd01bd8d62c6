"""The reconciliation queue: unmatched studies of the centre with what their headers said, and
matching one by hand to an open referral (API and page)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from hospital.auth import issue_token
from hospital.seed import DEMO_PASSWORD, DemoSeed
from imaging_orders.archive.ingest import store_instance
from imaging_orders.archive.models import ImagingStudy
from imaging_orders.models import AppointmentStatus
from referrals.models import ReferralStatus
from tests.conftest import ApiClient, make_test_app
from tests.imaging_orders.dicom_payloads import demo_order, small_ct_study
from tests.imaging_orders.factories import make_centre, make_order
from tests.imaging_orders.test_dicomweb import register_blueprints


@pytest.fixture(scope="module")
def app(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return register_blueprints(make_test_app(database_url, tmp_path_factory.mktemp("reconciliation")))


@pytest.fixture(autouse=True)
def no_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hospital.jobs.dispatch", lambda app, ids: None)


def store_study(app: Flask, **kwargs: Any) -> int:
    results = [store_instance(app, ds, transfer_syntax_uid=None, calling_ae="MODALITY")
               for ds in small_ct_study(n_slices=2, **kwargs)]
    return results[0].study_id


def test_queue_shows_headers_and_warnings_and_reconcile_matches(app: Flask, as_role: Any, demo: DemoSeed,
                                                                db_session: Session) -> None:
    order = demo_order(db_session, demo, mrn="REC-0001", accession_number="RECACC1")
    db_session.commit()
    study_id = store_study(app, patient_id="REC-0001", accession_number="TYPO-ACC")
    staff = as_role("imaging_staff")

    [entry] = staff.get("/api/reconciliation/studies").get_json()
    assert entry["id"] == study_id
    assert entry["headers"]["accession_number"] == "TYPO-ACC"
    assert entry["headers"]["patient_id"] == "REC-0001"
    assert entry["instances"] == 2 and entry["modalities"] == ["CT"]
    assert any("no referral has this AccessionNumber" in w for w in entry["warnings"])
    assert [c["referral_id"] for c in entry["candidates"]] == [order.referral.id]

    matched = staff.post(f"/api/reconciliation/studies/{study_id}", json={"referral_id": order.referral.id})
    assert matched.status_code == 200, matched.get_data(as_text=True)
    assert matched.get_json()["patient_id"] == order.patient.id
    db_session.expire_all()
    study = db_session.get(ImagingStudy, study_id)
    assert study is not None and study.referral_id == order.referral.id
    assert order.appointment is not None
    assert db_session.get(type(order.appointment), order.appointment.id).status is AppointmentStatus.ARRIVED
    assert staff.get("/api/reconciliation/studies").get_json() == []


def test_reconcile_refusals(app: Flask, as_role: Any, client: FlaskClient, demo: DemoSeed, db_session: Session) -> None:
    order = demo_order(db_session, demo, mrn="REC-0002", accession_number="RECACC2")
    closed = demo_order(db_session, demo, mrn="REC-0003", accession_number="RECACC3", status=ReferralStatus.COMPLETED)
    other = make_centre(db_session)
    other_order = make_order(db_session, other, mrn="REC-0004", accession_number="RECACC4")
    token, _ = issue_token(db_session, other.user, 3600)
    db_session.commit()
    study_id = store_study(app, patient_id="SOMEONE-ELSE", accession_number="")
    elsewhere_id = store_study(app, patient_id="NOT-REC-0004", accession_number="RECACC4")
    staff = as_role("imaging_staff")

    def reconcile(caller: Any, study: int, referral: int) -> int:
        return int(caller.post(f"/api/reconciliation/studies/{study}", json={"referral_id": referral}).status_code)

    assert reconcile(staff, study_id, order.referral.id) == 409  # the patient differs
    assert reconcile(staff, study_id, closed.referral.id) == 409
    assert reconcile(staff, study_id, other_order.referral.id) == 403  # another centre's referral
    assert reconcile(staff, elsewhere_id, order.referral.id) == 403  # another centre's study
    assert reconcile(staff, 999_999, order.referral.id) == 404
    assert staff.post(f"/api/reconciliation/studies/{study_id}", json={}).status_code == 400
    assert as_role("clinician").get("/api/reconciliation/studies").status_code == 403
    ids = [e["id"] for e in staff.get("/api/reconciliation/studies").get_json()]
    assert study_id in ids and elsewhere_id not in ids
    other_ids = [e["id"] for e in ApiClient(client, token).get("/api/reconciliation/studies").get_json()]
    assert elsewhere_id in other_ids


def test_page_lists_and_matches_with_csrf(app: Flask, client: FlaskClient, demo: DemoSeed, db_session: Session) -> None:
    order = demo_order(db_session, demo, mrn="REC-0005", accession_number="RECACC5")
    db_session.commit()
    study_id = store_study(app, patient_id="REC-0005", accession_number="")
    login_page = client.get("/login").get_data(as_text=True)
    token = login_page.split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/login", data={"username": "imaging_staff", "password": DEMO_PASSWORD, "csrf_token": token})
    page = client.get("/reconciliation")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f'id="study-{study_id}"' in html and "AccessionNumber is missing" in html
    assert client.post("/reconciliation", data={"study_id": study_id, "referral_id": order.referral.id}).status_code == 403
    token = html.split('name="csrf_token" value="')[1].split('"')[0]  # the session's token after signing in
    done = client.post("/reconciliation", data={"study_id": study_id, "referral_id": order.referral.id, "csrf_token": token},
                       follow_redirects=True)
    assert done.status_code == 200 and f"Study {study_id} matched" in done.get_data(as_text=True)
    db_session.expire_all()
    study = db_session.get(ImagingStudy, study_id)
    assert study is not None and study.referral_id == order.referral.id
