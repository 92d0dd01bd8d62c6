"""Imaging centre -> FHIR Schedule, Slot, Appointment and ImagingStudy, and their REST read/search."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from hospital.fhir.registry import validate_resource
from hospital.seed import DemoSeed
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, StudyStatus
from imaging_orders.fhir import appointment_to_fhir, imaging_study_to_fhir, schedule_to_fhir, slot_to_fhir
from imaging_orders.models import Appointment, AppointmentStatus, Schedule, Slot, SlotStatus
from referrals.fhir import ACCESSION_SYSTEM
from referrals.models import Referral, ReferralStatus

NOW = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def make_schedule() -> Schedule:
    return Schedule(id=4, organization_id=2, name="CT scanner 1", modality="CT", room="Room 1", station_ae_title="CT1", active=True)


def make_study(**overrides: object) -> ImagingStudy:
    instances = [
        ImagingInstance(id=n, sop_instance_uid=f"{STUDY_UID}.1.{n}", sop_class_uid=CT_IMAGE_STORAGE,
                        transfer_syntax_uid="1.2.840.10008.1.2.1", number=n, path=f"x/{n}.dcm", size_bytes=1, sha256="0" * 64)
        for n in (1, 2, 3)
    ]
    series = ImagingSeries(id=1, series_instance_uid=f"{STUDY_UID}.1", number=1, modality="CT",
                           description="Axial 1mm", body_part="CHEST", instances=instances)
    values: dict[str, object] = dict(
        id=21, study_instance_uid=STUDY_UID, accession_number="ACC0001", referral_id=12, patient_id=7,
        organization_id=2, status=StudyStatus.AVAILABLE, dicom_patient_id="MRN-7", dicom_patient_name="RIVERA^ALEX",
        description="CT chest", started=NOW, series=[series],
    )
    values.update(overrides)
    return ImagingStudy(**values)


def test_schedule_names_room_and_modality() -> None:
    resource = validate_resource(schedule_to_fhir(make_schedule()))

    assert resource["active"] is True
    assert resource["serviceType"][0]["coding"][0] == {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    assert resource["actor"][0] == {"type": "Location", "display": "Room 1 (CT)"}
    assert resource["actor"][1]["identifier"]["value"] == "CT1"


@pytest.mark.parametrize("status", list(SlotStatus))
def test_slot_maps_schedule_status_and_times(status: SlotStatus) -> None:
    slot = Slot(id=8, schedule_id=4, start=NOW, end=NOW + timedelta(minutes=30), status=status)

    resource = validate_resource(slot_to_fhir(slot))

    assert resource["schedule"] == {"reference": "Schedule/4"}
    assert resource["status"] == status.value
    assert resource["start"] == "2025-03-14T09:30:00Z"
    assert resource["end"] == "2025-03-14T10:00:00Z"


@pytest.mark.parametrize("status", list(AppointmentStatus))
def test_appointment_links_referral_slot_patient_and_room(status: AppointmentStatus) -> None:
    slot = Slot(id=8, schedule_id=4, start=NOW, end=NOW + timedelta(minutes=30), status=SlotStatus.BUSY, schedule=make_schedule())
    appointment = Appointment(
        id=30, slot_id=8, slot=slot, referral_id=12, patient_id=7, start=slot.start, end=slot.end, status=status,
        description="CT chest", booked_by_user_id=5, created_at=NOW,
    )

    resource = validate_resource(appointment_to_fhir(appointment))

    assert resource["status"] == status.value
    assert resource["basedOn"] == [{"reference": "ServiceRequest/12"}]
    assert resource["slot"] == [{"reference": "Slot/8"}]
    assert resource["description"] == "CT chest"
    patient, location = resource["participant"]
    assert patient["actor"] == {"reference": "Patient/7"}
    assert patient["status"] == "accepted"
    assert location["actor"]["display"] == "Room 1 (CT)"


def test_imaging_study_maps_uids_series_and_instances() -> None:
    resource = validate_resource(imaging_study_to_fhir(make_study()))

    assert resource["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}
    assert resource["identifier"][1]["system"] == ACCESSION_SYSTEM
    assert resource["identifier"][1]["type"]["coding"][0]["code"] == "ACSN"
    assert resource["status"] == "available"
    assert resource["subject"] == {"reference": "Patient/7"}
    assert resource["basedOn"] == [{"reference": "ServiceRequest/12"}]
    assert resource["started"] == "2025-03-14T09:30:00Z"
    assert resource["numberOfSeries"] == 1
    assert resource["numberOfInstances"] == 3
    series = resource["series"][0]
    assert series["uid"] == f"{STUDY_UID}.1"
    assert series["number"] == 1
    assert series["modality"] == {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    assert series["bodySite"] == {"display": "CHEST"}
    assert series["instance"][0] == {
        "uid": f"{STUDY_UID}.1.1",
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT_IMAGE_STORAGE}"},
        "number": 1,
    }


@pytest.mark.parametrize("status", list(StudyStatus))
def test_study_status_is_carried_over(status: StudyStatus) -> None:
    assert validate_resource(imaging_study_to_fhir(make_study(status=status)))["status"] == status.value


def test_unmatched_study_has_a_display_only_subject() -> None:
    study = make_study(patient_id=None, referral_id=None, accession_number=None, status=StudyStatus.REGISTERED, series=[])

    resource = validate_resource(imaging_study_to_fhir(study))

    assert "reference" not in resource["subject"]
    assert "MRN-7" in resource["subject"]["display"]
    assert "RIVERA^ALEX" in resource["subject"]["display"]
    assert "basedOn" not in resource
    assert resource["numberOfInstances"] == 0
    assert len(resource["identifier"]) == 1


# --- through the app -----------------------------------------------------------------------------


def insert_booked_study(db_session: Session, demo: DemoSeed) -> tuple[Referral, Appointment, ImagingStudy]:
    clinician = demo.users["clinician"]
    referral = Referral(
        patient_id=demo.patient.id, requester_id=clinician.practitioner_id, created_by_user_id=clinician.id,
        performer_organization_id=demo.imaging_centre.id, modality="CT", body_part="CHEST",
        procedure_description="CT chest", reason="Cough", status=ReferralStatus.IN_PROGRESS, accession_number="FHIRI01",
    )
    db_session.add(referral)
    db_session.flush()
    schedule = demo.extra["schedule"]
    slot = Slot(schedule_id=schedule.id, start=NOW, end=NOW + timedelta(minutes=30), status=SlotStatus.BUSY)
    db_session.add(slot)
    db_session.flush()
    appointment = Appointment(
        slot_id=slot.id, referral_id=referral.id, patient_id=demo.patient.id, start=slot.start, end=slot.end,
        description="CT chest", booked_by_user_id=demo.users["imaging_staff"].id,
    )
    study = make_study(id=None, referral_id=referral.id, patient_id=demo.patient.id, organization_id=demo.imaging_centre.id,
                       accession_number="FHIRI01", study_instance_uid="2.25.9001", series=[])
    db_session.add_all([appointment, study])
    db_session.flush()
    db_session.add(ImagingSeries(study_id=study.id, series_instance_uid="2.25.9001.1", number=1, modality="CT", body_part="CHEST",
                                 instances=[ImagingInstance(sop_instance_uid="2.25.9001.1.1", sop_class_uid=CT_IMAGE_STORAGE,
                                                            transfer_syntax_uid="1.2.840.10008.1.2.1", number=1,
                                                            path="a.dcm", size_bytes=10, sha256="0" * 64)]))
    db_session.commit()
    return referral, appointment, study


def bundle_ids(api, url: str) -> set[str]:
    response = api.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    bundle = validate_resource(response.get_json())
    return {entry["resource"]["id"] for entry in bundle.get("entry", [])}


def test_read_and_search_imaging_resources(as_role, demo, db_session) -> None:
    referral, appointment, study = insert_booked_study(db_session, demo)
    staff = as_role("imaging_staff")

    read = staff.get(f"/fhir/ImagingStudy/{study.id}")
    assert read.status_code == 200, read.get_data(as_text=True)
    assert validate_resource(read.get_json())["numberOfInstances"] == 1
    assert bundle_ids(staff, f"/fhir/ImagingStudy?patient={demo.patient.id}&status=available") == {str(study.id)}
    assert bundle_ids(staff, "/fhir/ImagingStudy?identifier=urn:dicom:uid|urn:oid:2.25.9001") == {str(study.id)}
    assert bundle_ids(staff, f"/fhir/ImagingStudy?identifier={ACCESSION_SYSTEM}|FHIRI01") == {str(study.id)}
    assert bundle_ids(staff, f"/fhir/ImagingStudy?based-on=ServiceRequest/{referral.id}") == {str(study.id)}

    assert bundle_ids(staff, f"/fhir/Appointment?patient=Patient/{demo.patient.id}&based-on={referral.id}") == {str(appointment.id)}
    assert bundle_ids(staff, f"/fhir/Appointment?patient={demo.patient.id}&status=cancelled") == set()

    schedule = demo.extra["schedule"]
    assert validate_resource(staff.get(f"/fhir/Schedule/{schedule.id}").get_json())["actor"][0]["display"] == "Room 1 (CT)"
    busy = bundle_ids(staff, f"/fhir/Slot?schedule=Schedule/{schedule.id}&status=busy&start=eq2025-03-14")
    assert busy == {str(appointment.slot_id)}
    assert bundle_ids(staff, f"/fhir/Slot?schedule={schedule.id}&start=ge2025-03-14T09:30:00Z&start=lt2025-03-14T09:31:00Z") == busy
    assert staff.get("/fhir/Slot?start=someday").status_code == 400


def test_patients_see_their_own_appointments_and_studies_only(as_role, demo, db_session) -> None:
    _, appointment, study = insert_booked_study(db_session, demo)

    assert as_role("patient").get(f"/fhir/Appointment/{appointment.id}").status_code == 200
    assert as_role("patient").get(f"/fhir/ImagingStudy/{study.id}").status_code == 200
    for url in (f"/fhir/Appointment/{appointment.id}", f"/fhir/ImagingStudy/{study.id}"):
        denied = as_role("patient2").get(url)
        assert denied.status_code == 403
        assert denied.get_json()["resourceType"] == "OperationOutcome"
    assert bundle_ids(as_role("patient2"), f"/fhir/ImagingStudy?patient={demo.patient.id}") == set()
