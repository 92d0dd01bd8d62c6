"""A withdrawn instance stays withdrawn (IHE IOCM, as dcm4chee-arc behaves): after a rejection note
withdrew it, a C-STORE or STOW-RS of the same SOP Instance UID, identical or changed, is refused
with 0xA771 and a reason, never answered Success and never brought back. An authorised user's
revert of the rejection brings the instances back; re-sends are then accepted again."""

from __future__ import annotations

import copy
from io import BytesIO
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, func, select

from hospital.db import get_db
from hospital.dicom_status import SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT
from hospital.models import AuditEvent, Role, User
from imaging_orders.archive.models import ImagingInstance, ImagingStudy, InstanceRejection
from imaging_orders.archive.reconciliation import revert_rejection_for_user
from tests.imaging_orders.dicom_payloads import part10, rejection_note, small_ct_study
from tests.imaging_orders.test_dicom_peers import NODE_AE, STATION_AE, Node, node, order  # noqa: F401 - fixtures
from tests.imaging_orders.test_dicomweb_client_live import ACCESSION, MRN, bearer, live_server  # noqa: F401 - fixtures
from tests.imaging_orders.test_rejection_notes import _find_and_get, _store

FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
SOP_INSTANCE_UID = "00080018"
REFERENCED_SOP_INSTANCE_UID = "00081155"


def _part10_dataset(ds: Dataset) -> Dataset:
    """`ds` with its file meta information, as dicomweb-client sends files."""
    return pydicom.dcmread(BytesIO(part10(ds)))


def test_c_store_of_a_withdrawn_instance_is_refused_until_the_rejection_is_reverted(
    node: Node, order: Any,  # noqa: F811
) -> None:
    datasets = small_ct_study(patient_id="PEER-0001", accession_number="PEERACC1", n_slices=3)
    assert all(s.Status == 0x0000 for s in _store(node, STATION_AE, datasets))
    study_uid = str(datasets[0].StudyInstanceUID)
    rejected = datasets[0]
    assert _store(node, STATION_AE, [rejection_note([rejected])])[0].Status == 0x0000
    changed = copy.deepcopy(rejected)
    changed.PatientComments = "re-sent with a change"

    identical_status, changed_status = _store(node, STATION_AE, [rejected, changed])

    for status in (identical_status, changed_status):
        assert status.Status == SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT
        assert "rejected (113001, DCM)" in str(status.ErrorComment)
    found, got = _find_and_get(node, study_uid)
    assert rejected.SOPInstanceUID not in found | got
    with get_db(node.app).session() as session:
        [instance] = session.scalars(select(ImagingInstance).where(
            ImagingInstance.sop_instance_uid == rejected.SOPInstanceUID)).all()
        assert instance.rejection_id is not None and instance.version == 1  # no new version was kept

    with node.app.app_context(), get_db(node.app).transaction() as session:
        staff = session.scalars(select(User).where(User.role == Role.IMAGING_STAFF)).first()
        assert staff is not None
        rejection = session.scalars(select(InstanceRejection)).one()
        restored = revert_rejection_for_user(session, staff, rejection.study_id, rejection.id)
    assert restored == [rejected.SOPInstanceUID]

    assert _store(node, STATION_AE, [rejected])[0].Status == 0x0000
    found, got = _find_and_get(node, study_uid)
    assert rejected.SOPInstanceUID in found and rejected.SOPInstanceUID in got
    with get_db(node.app).session() as session:
        rejection = session.scalars(select(InstanceRejection)).one()
        assert rejection.reverted_at is not None and rejection.reverted_by == f"user:{staff.username}"
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "U", AuditEvent.entity_type == "ImagingStudy",
            AuditEvent.description.like("%reverted%"))) == 1


def test_stow_of_a_withdrawn_instance_fails_with_the_reason_until_reverted(
    live_server: str, live_database: str,  # noqa: F811
) -> None:
    slices = [_part10_dataset(ds) for ds in small_ct_study(patient_id=MRN, accession_number=ACCESSION, n_slices=2)]
    staff_headers = bearer(live_server, "imaging_staff")
    client = DICOMwebClient(url=f"{live_server}/dicomweb", headers=staff_headers)
    client.store_instances(slices)
    rejected = slices[0]
    client.store_instances([_part10_dataset(rejection_note([rejected]))])

    with pytest.raises(requests.HTTPError) as refused:
        client.store_instances([rejected])

    assert refused.value.response.status_code == 409
    [failed] = refused.value.response.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [SUBSEQUENT_OCCURRENCE_OF_REJECTED_OBJECT]
    assert failed[REFERENCED_SOP_INSTANCE_UID]["Value"] == [rejected.SOPInstanceUID]
    study_uid = str(rejected.StudyInstanceUID)
    live = {i[SOP_INSTANCE_UID]["Value"][0] for i in client.search_for_instances(study_uid)}
    assert rejected.SOPInstanceUID not in live

    engine = create_engine(live_database)
    with engine.connect() as connection:
        study_id = connection.scalar(select(ImagingStudy.id).where(ImagingStudy.study_instance_uid == study_uid))
    engine.dispose()
    rejections_url = f"{live_server}/api/imaging-studies/{study_id}/rejections"
    [entry] = requests.get(rejections_url, headers=staff_headers, timeout=10).json()
    assert entry["instances"] == [rejected.SOPInstanceUID] and entry["reverted_at"] is None
    radiologist = requests.post(f"{rejections_url}/{entry['id']}/revert", headers=bearer(live_server, "radiologist"),
                                timeout=10)
    assert radiologist.status_code == 403
    reverted = requests.post(f"{rejections_url}/{entry['id']}/revert", headers=staff_headers, timeout=10)
    assert reverted.status_code == 200, reverted.text
    assert reverted.json()["restored"] == [rejected.SOPInstanceUID]
    again = requests.post(f"{rejections_url}/{entry['id']}/revert", headers=staff_headers, timeout=10)
    assert again.status_code == 409 and again.headers["Content-Type"].startswith("application/problem+json")

    client.store_instances([rejected])  # accepted again (a duplicate of the stored copy)
    live = {i[SOP_INSTANCE_UID]["Value"][0] for i in client.search_for_instances(study_uid)}
    assert rejected.SOPInstanceUID in live
