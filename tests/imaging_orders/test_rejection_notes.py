"""IHE IOCM rejection: a Key Object Selection Document titled with a rejection note (CID 7011)
received by C-STORE or STOW-RS withdraws the instances it references from C-FIND, C-GET, QIDO-RS
and WADO-RS; the withdrawal is kept (who, when, which note, the note itself) and audited; a note
naming instances the sender may not withdraw (another centre's, or unknown ones) is refused whole."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pydicom
from flask import Flask
from flask.testing import FlaskClient
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    CTImageStorage,
    KeyObjectSelectionDocumentStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.dicom_status import REFUSED_NOT_AUTHORIZED
from hospital.models import AuditEvent
from imaging_orders.archive.dicomweb import parse_multipart_related
from imaging_orders.archive.models import ImagingInstance, InstanceRejection
from tests.imaging_orders.dicom_payloads import (
    REJECTED_FOR_PATIENT_SAFETY,
    multipart_body,
    part10,
    rejection_note,
    small_ct_study,
)
from tests.imaging_orders.factories import make_centre
from tests.imaging_orders.test_dicom_peers import NODE_AE, STATION_AE, Node, node, order  # noqa: F401 - fixtures
from tests.imaging_orders.test_dicomweb import app, no_jobs, other_centre_staff, stored  # noqa: F401 - fixtures

FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
SOP_INSTANCE_UID = "00080018"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"


# ---------------------------------------------------------------------------------------------
# DIMSE: C-STORE of the note, then C-FIND and C-GET
# ---------------------------------------------------------------------------------------------


def _peer(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    for context in (CTImageStorage, KeyObjectSelectionDocumentStorage, StudyRootQueryRetrieveInformationModelFind,
                    StudyRootQueryRetrieveInformationModelGet):
        ae.add_requested_context(context)
    return ae


def _store(node: Node, ae_title: str, datasets: list[Dataset]) -> list[Dataset]:
    assoc = _peer(ae_title).associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def _find_and_get(node: Node, study_uid: str) -> tuple[set[str], set[str]]:
    """(SOP Instance UIDs C-FIND IMAGE level answers, those C-GET of the study delivers), as the station."""
    got: set[str] = set()

    def on_store(event: Event) -> int:
        got.add(str(event.dataset.SOPInstanceUID))
        return 0x0000

    roles = [build_role(CTImageStorage, scp_role=True), build_role(KeyObjectSelectionDocumentStorage, scp_role=True)]
    assoc = _peer(STATION_AE).associate("127.0.0.1", node.port, ae_title=NODE_AE, ext_neg=roles,
                                        evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    found: set[str] = set()
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SOPInstanceUID = ""
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status.Status == 0xFF00:
                found.add(str(identifier.SOPInstanceUID))
        retrieve = Dataset()
        retrieve.QueryRetrieveLevel = "STUDY"
        retrieve.StudyInstanceUID = study_uid
        for status, _ in assoc.send_c_get(retrieve, StudyRootQueryRetrieveInformationModelGet):
            assert status.Status in (0xFF00, 0x0000), hex(status.Status)
    finally:
        assoc.release()
    return found, got


def test_c_store_rejection_note_withdraws_instances_from_find_and_get(node: Node, order: Any) -> None:  # noqa: F811
    datasets = small_ct_study(patient_id="PEER-0001", accession_number="PEERACC1", n_slices=3)
    assert all(s.Status == 0x0000 for s in _store(node, STATION_AE, datasets))
    study_uid = str(datasets[0].StudyInstanceUID)
    rejected = datasets[0]
    note = rejection_note([rejected])

    [status] = _store(node, STATION_AE, [note])

    assert status.Status == 0x0000
    found, got = _find_and_get(node, study_uid)
    live = {str(ds.SOPInstanceUID) for ds in datasets[1:]} | {str(note.SOPInstanceUID)}
    assert found == live and got == live
    with get_db(node.app).session() as session:
        [rejection] = session.scalars(select(InstanceRejection)).all()
        assert (rejection.code_value, rejection.coding_scheme) == ("113001", "DCM")
        assert rejection.code_meaning == "Rejected for Quality Reasons"
        assert rejection.rejected_by == STATION_AE and rejection.kos_sop_instance_uid == note.SOPInstanceUID
        withdrawn = session.scalars(select(ImagingInstance.sop_instance_uid).where(
            ImagingInstance.rejection_id == rejection.id)).all()
        assert withdrawn == [rejected.SOPInstanceUID]
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "D", AuditEvent.entity_type == "ImagingStudy",
            AuditEvent.description.like("%113001%"))) == 1
    # Sent again (a retry): the same answer, nothing new.
    assert _store(node, STATION_AE, [note])[0].Status == 0x0000
    with get_db(node.app).session() as session:
        assert session.scalar(select(func.count()).select_from(InstanceRejection)) == 1


def test_c_store_rejection_note_for_another_centre_or_unknown_instances_is_refused(
    node: Node, order: Any,  # noqa: F811
) -> None:
    datasets = small_ct_study(patient_id="PEER-0001", accession_number="PEERACC1", n_slices=2)
    assert all(s.Status == 0x0000 for s in _store(node, STATION_AE, datasets))
    with get_db(node.app).transaction() as session:
        make_centre(session, station_ae_title="OTHERCT")
    foreign = rejection_note([datasets[0]])
    unknown_image = small_ct_study(patient_id="PEER-0001", accession_number="PEERACC1", n_slices=1,
                                   study_uid=str(datasets[0].StudyInstanceUID))[0]
    unknown = rejection_note([datasets[1], unknown_image])

    [by_other_centre] = _store(node, "OTHERCT", [foreign])
    [naming_unknown] = _store(node, STATION_AE, [unknown])

    for status in (by_other_centre, naming_unknown):
        assert status.Status == REFUSED_NOT_AUTHORIZED
        assert "not held here or not yours" in str(status.ErrorComment)
    found, got = _find_and_get(node, str(datasets[0].StudyInstanceUID))
    assert found == got == {str(ds.SOPInstanceUID) for ds in datasets}  # nothing withdrawn, no note kept
    with get_db(node.app).session() as session:
        assert session.scalar(select(func.count()).select_from(InstanceRejection)) == 0


# ---------------------------------------------------------------------------------------------
# DICOMweb: STOW-RS of the note, then QIDO-RS, WADO-RS and the rejections API
# ---------------------------------------------------------------------------------------------


def _stow(api: Any, note: Dataset) -> Any:
    body, content_type = multipart_body([part10(note)])
    return api.post("/dicomweb/studies", data=body, content_type=content_type)


def test_stow_rejection_note_withdraws_instances_from_qido_and_wado(
    stored: dict[str, Any], as_role: Any, db_session: Session, app: Flask,  # noqa: F811
) -> None:
    staff = as_role("imaging_staff")
    rejected = stored["datasets"][0]
    note = rejection_note([rejected], REJECTED_FOR_PATIENT_SAFETY)

    response = _stow(staff, note)

    assert response.status_code == 200, response.get_data(as_text=True)
    base = f"/dicomweb/studies/{stored['study_uid']}"
    instances = staff.get(f"{base}/instances").get_json()
    uids = {i[SOP_INSTANCE_UID]["Value"][0] for i in instances}
    assert uids == {str(ds.SOPInstanceUID) for ds in stored["datasets"][1:]} | {str(note.SOPInstanceUID)}
    [study] = staff.get(f"/dicomweb/studies?StudyInstanceUID={stored['study_uid']}").get_json()
    assert study[NUMBER_OF_STUDY_RELATED_INSTANCES]["Value"] == [3]
    gone = staff.get(f"{base}/series/{stored['series_uid']}/instances/{rejected.SOPInstanceUID}")
    assert gone.status_code == 410
    assert "Rejected for Patient Safety Reasons" in gone.get_json()["detail"]
    assert staff.get(f"{base}/series/{stored['series_uid']}/instances/{rejected.SOPInstanceUID}/metadata").status_code == 410
    series = staff.get(f"{base}/series/{stored['series_uid']}")
    parts = parse_multipart_related(series.get_data(), series.headers["Content-Type"])
    assert sorted(pydicom.dcmread(BytesIO(bytes(p.content))).SOPInstanceUID for p in parts) == sorted(
        ds.SOPInstanceUID for ds in stored["datasets"][1:])

    study_id = db_session.scalar(select(InstanceRejection.study_id))
    [entry] = staff.get(f"/api/imaging-studies/{study_id}/rejections").get_json()
    assert entry["code"] == {"value": "113037", "scheme": "DCM", "meaning": "Rejected for Patient Safety Reasons"}
    assert entry["instances"] == [rejected.SOPInstanceUID]
    assert entry["note_sop_instance_uid"] == note.SOPInstanceUID and entry["rejected_by"].startswith("STOW-RS:")


def test_stow_rejection_note_of_another_centre_or_unknown_instances_fails_and_changes_nothing(
    stored: dict[str, Any], as_role: Any, client: FlaskClient, db_session: Session,  # noqa: F811
) -> None:
    outsider = other_centre_staff(client, db_session)
    foreign = _stow(outsider, rejection_note([stored["datasets"][0]]))
    ghost = small_ct_study(patient_id="X", accession_number="Y", n_slices=1, study_uid=stored["study_uid"])[0]
    unknown = _stow(as_role("imaging_staff"), rejection_note([stored["datasets"][1], ghost]))

    for response in (foreign, unknown):
        assert response.status_code == 409, response.get_data(as_text=True)
        [failed] = response.get_json()[FAILED_SOP_SEQUENCE]["Value"]
        assert failed[FAILURE_REASON]["Value"] == [REFUSED_NOT_AUTHORIZED]
    assert db_session.scalar(select(func.count()).select_from(InstanceRejection)) == 0
    assert db_session.scalar(select(func.count()).select_from(ImagingInstance).where(
        ImagingInstance.rejection_id.is_not(None))) == 0
    instances = as_role("imaging_staff").get(f"/dicomweb/studies/{stored['study_uid']}/instances").get_json()
    assert len(instances) == 3
