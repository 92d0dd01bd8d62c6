"""A corrected re-send (same SOP Instance UID, different content) is kept as a new version: the
newest is current, the earlier file is kept, the sender is answered a warning (B000) that says so,
and a PatientID corrected to the order's lets the study be matched. Identical bytes stay idempotent."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from flask import Flask
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.dicom_status import COERCION_OF_DATA_ELEMENTS
from imaging_orders.archive.models import ImagingInstance, ImagingInstanceVersion
from tests.imaging_orders.factories import make_centre, make_order
from tests.imaging_orders.test_dicom_peers import NODE_AE, Node, node  # noqa: F401 - fixture
from tests.imaging_orders.test_ingest import _study, ct_study, published, store_all  # noqa: F401 - fixtures


def test_identical_resend_is_idempotent_and_a_corrected_one_is_a_new_version(
    app: Flask, db_session: Session, published: list[dict[str, Any]],
) -> None:
    order = make_order(db_session, make_centre(db_session))
    wrong = ct_study("TYPO-MRN", order.referral.accession_number or "", slices=2)
    first = store_all(app, wrong)
    assert _study(db_session, wrong).referral_id is None
    again = store_all(app, [copy.deepcopy(ds) for ds in wrong])
    assert all(r.duplicate and not r.superseded for r in again)

    corrected = [copy.deepcopy(ds) for ds in wrong]
    for ds in corrected:
        ds.PatientID = order.patient.mrn
    results = store_all(app, corrected)

    assert all(r.superseded and not r.duplicate for r in results)
    assert all(any("version 2" in w for w in r.warnings) for r in results)
    storage = Path(app.config["DICOM_STORAGE_DIR"])
    for old, new in zip(first, results, strict=True):
        assert new.instance_id == old.instance_id and new.sha256 != old.sha256
        assert (storage / old.path).exists() and (storage / new.path).exists()
        instance = db_session.get(ImagingInstance, new.instance_id)
        db_session.refresh(instance)
        assert instance.path == new.path and instance.sha256 == new.sha256
        [kept] = db_session.scalars(select(ImagingInstanceVersion).where(
            ImagingInstanceVersion.instance_id == new.instance_id)).all()
        assert kept.version == 1 and kept.sha256 == old.sha256 and kept.path == old.path
    # The corrected PatientID now agrees with the order: the study is matched.
    study = _study(db_session, wrong)
    assert study.referral_id == order.referral.id and study.patient_id == order.patient.id
    # Re-sending the corrected bytes again is idempotent.
    assert all(r.duplicate for r in store_all(app, [copy.deepcopy(ds) for ds in corrected]))


def test_c_store_of_a_corrected_instance_answers_a_warning(node: Node) -> None:  # noqa: F811
    [ds] = ct_study("MRN-V1", "ACC-V1", slices=1)
    scu = AE(ae_title="MODALITY")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0x0000  # identical: idempotent
        ds.PatientID = "MRN-V1-CORRECTED"
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == COERCION_OF_DATA_ELEMENTS
    assert "version 2" in str(status.ErrorComment)
    with get_db(node.app).session() as session:
        assert session.scalar(select(ImagingInstanceVersion.version)) == 1
