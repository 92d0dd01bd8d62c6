"""One accession, one fulfilment: a second study carrying the AccessionNumber of an order that
already has its study is not matched automatically; it waits in reconciliation with a reason, may be
merged into the first study or attached to another order, and the order's completion
(`StudyCompleted`: analysis and the scan charge) is published at most once, even under races."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hospital.clock import utcnow
from hospital.db import get_db
from hospital.errors import Conflict
from imaging_orders.archive.ingest import complete_quiet_studies, reconcile_study
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, OrderFulfilment, StudyStatus
from imaging_orders.archive.reconciliation import merge_study
from referrals.models import ReferralStatus
from tests.imaging_orders.factories import make_centre, make_order
from tests.imaging_orders.test_ingest import (  # noqa: F401 - fixtures
    LATER,
    _run_threads,
    _study,
    ct_study,
    live_app,
    published,
    store_all,
)
from tests.imaging_orders.test_reconciliation import app  # noqa: F401 - the app with the reconciliation routes


def _accession(order: Any) -> str:
    return order.referral.accession_number or ""


def test_second_study_with_the_same_accession_waits_in_reconciliation(
    app: Flask, db_session: Session, published: list[dict[str, Any]], as_role: Any,
) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    first = ct_study(order.patient.mrn, _accession(order), slices=2, seed=1)
    second = ct_study(order.patient.mrn, _accession(order), slices=2, seed=2)

    store_all(app, first)
    results = store_all(app, second)

    first_study, second_study = _study(db_session, first), _study(db_session, second)
    assert first_study.referral_id == order.referral.id
    assert second_study.referral_id is None and second_study.patient_id is None
    assert any(f"already has study {first_study.id}" in w for w in results[0].warnings)

    complete_quiet_studies(app, now=utcnow() + LATER)
    assert published == [{"event": "imaging.study_completed", "study_id": first_study.id}]
    # Staff cannot attach it to the same order by hand either: the order is fulfilled.
    with pytest.raises(Conflict, match="already"):
        reconcile_study(db_session, second_study.id, order.referral.id)
    assert len(published) == 1


def test_second_study_can_be_attached_to_another_order_of_the_patient(
    app: Flask, db_session: Session, published: list[dict[str, Any]],
) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    other = make_order(db_session, centre)
    other.referral.patient_id = order.patient.id  # a second order of the same patient
    db_session.flush()
    first = ct_study(order.patient.mrn, _accession(order), slices=1, seed=3)
    second = ct_study(order.patient.mrn, _accession(order), slices=1, seed=4)
    store_all(app, first)
    complete_quiet_studies(app, now=utcnow() + LATER)
    store_all(app, second)
    complete_quiet_studies(app, now=utcnow() + 2 * LATER)
    second_study = _study(db_session, second)
    assert second_study.referral_id is None

    reconcile_study(db_session, second_study.id, other.referral.id)
    db_session.flush()
    assert [p["study_id"] for p in published] == [_study(db_session, first).id, second_study.id]
    db_session.refresh(other.referral)
    assert other.referral.status is ReferralStatus.COMPLETED


def test_merge_moves_the_series_under_the_first_study_without_a_second_completion(
    app: Flask, db_session: Session, published: list[dict[str, Any]], as_role: Any, demo: Any,
) -> None:
    from tests.imaging_orders.dicom_payloads import demo_order

    demo_order(db_session, demo, mrn="ONE-0001", accession_number="ONEACC1")
    db_session.commit()
    first = ct_study("ONE-0001", "ONEACC1", slices=2, seed=5)
    second = ct_study("ONE-0001", "ONEACC1", slices=2, seed=6)
    store_all(app, first)
    complete_quiet_studies(app, now=utcnow() + LATER)
    store_all(app, second)
    first_study, second_study = _study(db_session, first), _study(db_session, second)
    storage = Path(app.config["DICOM_STORAGE_DIR"])

    staff = as_role("imaging_staff")
    [entry] = staff.get("/api/reconciliation/studies").get_json()
    assert entry["id"] == second_study.id
    assert entry["merge_into"] == [first_study.id]
    assert any("already has study" in w for w in entry["warnings"])

    merged = staff.post(f"/api/reconciliation/studies/{second_study.id}/merge", json={"into_study_id": first_study.id})
    assert merged.status_code == 200, merged.get_data(as_text=True)
    db_session.expire_all()
    assert db_session.get(ImagingStudy, second_study.id).status is StudyStatus.CANCELLED
    assert db_session.get(ImagingStudy, second_study.id).merged_into_id == first_study.id
    series = db_session.scalars(select(ImagingSeries).where(ImagingSeries.study_id == first_study.id)).all()
    assert len(series) == 2
    for instance in db_session.scalars(select(ImagingInstance).join(ImagingSeries).where(
            ImagingSeries.study_id == first_study.id)):
        header = pydicom.dcmread(storage / instance.path)
        assert header.StudyInstanceUID == first_study.study_instance_uid
        assert instance.path.startswith(first_study.study_instance_uid + "/")
    assert not (storage / second_study.study_instance_uid).exists() or not any(
        (storage / second_study.study_instance_uid).rglob("*.dcm"))
    assert staff.get("/api/reconciliation/studies").get_json() == []
    # The first study keeps its one completion: nothing is analysed or charged again.
    assert published == [{"event": "imaging.study_completed", "study_id": first_study.id}]
    assert db_session.get(ImagingStudy, first_study.id).status is StudyStatus.AVAILABLE


def test_merge_refuses_another_patients_study(app: Flask, db_session: Session, published: list[dict[str, Any]]) -> None:
    centre = make_centre(db_session)
    order = make_order(db_session, centre)
    first = ct_study(order.patient.mrn, _accession(order), slices=1, seed=8)
    stranger = ct_study("SOMEONE-ELSE", _accession(order), slices=1, seed=9)
    store_all(app, first)
    store_all(app, stranger)
    with pytest.raises(Conflict, match="PatientID"):
        merge_study(app, _study(db_session, stranger).id, _study(db_session, first).id)


# ---------------------------------------------------------------------------------------------
# Races (real commits, several threads)
# ---------------------------------------------------------------------------------------------


def test_two_studies_arriving_at_once_match_one(live_app: Flask, published: list[dict[str, Any]]) -> None:
    with get_db(live_app).transaction() as session:
        order = make_order(session, make_centre(session))
    studies = [ct_study(order.patient.mrn, _accession(order), slices=1, seed=10 + n) for n in range(4)]

    assert _run_threads(4, lambda index: store_all(live_app, studies[index])) == []
    with get_db(live_app).session() as session:
        matched = session.scalar(select(func.count()).select_from(ImagingStudy).where(
            ImagingStudy.referral_id == order.referral.id))
        assert matched == 1


def test_two_completers_of_two_matched_studies_publish_once_per_order(
    live_app: Flask, published: list[dict[str, Any]],
) -> None:
    with get_db(live_app).transaction() as session:
        order = make_order(session, make_centre(session))
    studies = [ct_study(order.patient.mrn, _accession(order), slices=1, seed=20 + n) for n in range(2)]
    for datasets in studies:
        store_all(live_app, datasets)
    # Rows matched before this rule existed (or by any path that bypassed it): both on one order.
    with get_db(live_app).transaction() as session:
        session.execute(update(ImagingStudy).values(
            referral_id=order.referral.id, patient_id=order.patient.id))

    later = utcnow() + LATER
    assert _run_threads(4, lambda index: complete_quiet_studies(live_app, now=later)) == []
    assert len(published) == 1
    with get_db(live_app).session() as session:
        assert session.scalar(select(func.count()).select_from(OrderFulfilment)) == 1
        assert session.scalar(select(OrderFulfilment.study_id)) == published[0]["study_id"]
