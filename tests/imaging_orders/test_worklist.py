"""Modality Worklist matching: station, modality, date ranges, wildcards, return keys."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy.orm import Session

from imaging_orders.models import AppointmentStatus
from imaging_orders.worklist import WorklistQueryError, find_worklist_items, study_instance_uid_for
from referrals.models import ReferralStatus
from referrals.public import referral_summary
from tests.imaging_orders.factories import Centre, Order, make_centre, make_order

DAY1 = datetime(2031, 3, 10, 9, 0, tzinfo=UTC)
DAY2 = datetime(2031, 3, 11, 14, 30, tzinfo=UTC)
DAY3 = datetime(2031, 3, 12, 8, 0, tzinfo=UTC)


def query(*, station: str = "", modality: str = "", date: str = "", **top: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    step = Dataset()
    step.ScheduledStationAETitle = station
    step.Modality = modality
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def accessions(session: Session, q: Dataset) -> set[str]:
    return {str(item.AccessionNumber) for item in find_worklist_items(session, q)}


@pytest.fixture()
def booked(db_session: Session) -> dict[str, Order]:
    ct: Centre = make_centre(db_session, station_ae_title="WLCT1", modality="CT")
    mr: Centre = make_centre(db_session, station_ae_title="WLMR1", modality="MR")
    return {
        "doe": make_order(db_session, ct, family_name="Doe", given_name="John", mrn="WL-001", accession_number="WLA1", start=DAY1),
        "dobbs": make_order(db_session, ct, family_name="Dobbs", given_name="Jane", mrn="WL-002", accession_number="WLA2", start=DAY2),
        "smith": make_order(db_session, mr, family_name="Smith", given_name="Ann", mrn="WL-003", accession_number="WLA3", start=DAY3),
        "arrived": make_order(
            db_session, ct, family_name="Arrived", given_name="Al", mrn="WL-004", accession_number="WLA4", start=DAY2,
            appointment_status=AppointmentStatus.ARRIVED, status=ReferralStatus.IN_PROGRESS,
        ),
        "cancelled": make_order(
            db_session, ct, family_name="Gone", given_name="Gil", mrn="WL-005", accession_number="WLA5", start=DAY2,
            appointment_status=AppointmentStatus.CANCELLED,
        ),
        "unbooked": make_order(db_session, ct, family_name="Later", given_name="Lou", mrn="WL-006", accession_number="WLA6", book=False),
    }


def test_station_and_modality(db_session: Session, booked: dict[str, Order]) -> None:
    assert accessions(db_session, query(station="WLCT1")) == {"WLA1", "WLA2", "WLA4"}
    assert accessions(db_session, query(modality="MR")) == {"WLA3"}
    assert accessions(db_session, query(station="WLCT*", modality="CT")) == {"WLA1", "WLA2", "WLA4"}
    assert accessions(db_session, query(station="WLMR1", modality="CT")) == set()


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("20310310", {"WLA1"}),
        ("20310310-20310311", {"WLA1", "WLA2", "WLA4"}),
        ("-20310310", {"WLA1"}),
        ("20310311-", {"WLA2", "WLA3", "WLA4"}),
        ("20310313", set()),
    ],
)
def test_date_matching(db_session: Session, booked: dict[str, Order], date: str, expected: set[str]) -> None:
    found = accessions(db_session, query(date=date)) & {f"WLA{i}" for i in range(1, 7)}
    assert found == expected


@pytest.mark.parametrize("bad", ["2031-03-10x", "20311399", "20310312-20310310", "-", "yesterday"])
def test_bad_dates_are_query_errors(db_session: Session, booked: dict[str, Order], bad: str) -> None:
    with pytest.raises(WorklistQueryError):
        list(find_worklist_items(db_session, query(date=bad)))


def test_patient_name_wildcards_and_ids(db_session: Session, booked: dict[str, Order]) -> None:
    assert accessions(db_session, query(station="WLCT1", PatientName="DO*")) == {"WLA1", "WLA2"}
    assert accessions(db_session, query(station="WLCT1", PatientName="doe^john")) == {"WLA1"}
    assert accessions(db_session, query(station="WLCT1", PatientName="DOE^JOHN^^^")) == {"WLA1"}
    assert accessions(db_session, query(station="WLCT1", PatientName="D?BBS*")) == {"WLA2"}
    assert accessions(db_session, query(PatientID="WL-003")) == {"WLA3"}
    assert accessions(db_session, query(AccessionNumber="WLA2")) == {"WLA2"}
    assert accessions(db_session, query(AccessionNumber="WLA%")) == set()  # SQL wildcards are literal


def test_return_keys_are_those_asked(db_session: Session, booked: dict[str, Order]) -> None:
    q = query(station="WLCT1", date="20310310")
    q.PatientBirthDate = ""
    q.PatientSex = ""
    q.ReferringPhysicianName = ""
    q.RequestedProcedureDescription = ""
    q.RequestedProcedureID = ""
    q.StudyInstanceUID = ""
    q.AdmissionID = ""  # asked for but not held here: returned empty
    q.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription = ""
    q.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID = ""
    q.ScheduledProcedureStepSequence[0].ScheduledStationName = ""
    q.ScheduledProcedureStepSequence[0].ScheduledProcedureStepLocation = ""

    items = list(find_worklist_items(db_session, q))

    assert len(items) == 1
    item = items[0]
    order = booked["doe"]
    assert item.SpecificCharacterSet == "ISO_IR 192"
    assert str(item.PatientName) == "Doe^John"
    assert item.PatientID == "WL-001"
    assert item.PatientBirthDate == "19680412"
    assert item.PatientSex == "F"
    assert str(item.ReferringPhysicianName) == "Lovelace^Ada"
    assert item.RequestedProcedureDescription == "CT chest without contrast"
    assert item.RequestedProcedureID == f"RP{order.referral.id}"
    assert item.StudyInstanceUID == study_instance_uid_for(referral_summary(db_session, order.referral.id))
    assert "AdmissionID" in item and not item.AdmissionID
    assert "PatientWeight" not in item  # not asked, not returned
    step = item.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT"
    assert step.ScheduledStationAETitle == "WLCT1"
    assert step.ScheduledProcedureStepStartDate == "20310310"
    assert step.ScheduledProcedureStepStartTime == "090000"
    assert step.ScheduledProcedureStepDescription == "CT chest without contrast"
    assert order.appointment is not None
    assert step.ScheduledProcedureStepID == f"SPS{order.appointment.id}"
    assert step.ScheduledProcedureStepLocation == "Room 1"
    assert step.ScheduledStationName.startswith("CT scanner")


def test_study_uid_is_stable(db_session: Session, booked: dict[str, Order]) -> None:
    q = query(AccessionNumber="WLA1", StudyInstanceUID="")
    first = [i.StudyInstanceUID for i in find_worklist_items(db_session, q)]
    second = [i.StudyInstanceUID for i in find_worklist_items(db_session, q)]
    other = [i.StudyInstanceUID for i in find_worklist_items(db_session, query(AccessionNumber="WLA2", StudyInstanceUID=""))]
    assert first == second and len(first) == 1
    assert first != other
    assert len(first[0]) <= 64


def test_dates_and_times_are_on_the_centres_own_calendar(db_session: Session) -> None:
    """Half past midnight in Berlin on 24 November is 23:30 UTC on the 23rd: a Berlin modality
    asking for the 24th gets it, at 003000 local, with the offset when it asks for one."""
    berlin = make_centre(db_session, station_ae_title="WLBER1", timezone="Europe/Berlin")
    sydney = make_centre(db_session, station_ae_title="WLSYD1", timezone="Australia/Sydney")
    make_order(db_session, berlin, mrn="TZ-1", accession_number="TZB1", start=datetime(2031, 11, 23, 23, 30, tzinfo=UTC))
    # 10:00 in Sydney (UTC+11 in summer) on the 24th is 23:00 UTC on the 23rd as well.
    make_order(db_session, sydney, mrn="TZ-2", accession_number="TZS1", start=datetime(2031, 11, 23, 23, 0, tzinfo=UTC))

    assert accessions(db_session, query(date="20311124")) == {"TZB1", "TZS1"}
    assert accessions(db_session, query(date="20311123")) == set()
    assert accessions(db_session, query(station="WLBER1", date="20311120-20311124")) == {"TZB1"}
    assert accessions(db_session, query(date="-20311123")) == set()

    q = query(station="WLBER1", date="20311124")
    q.TimezoneOffsetFromUTC = ""
    (item,) = find_worklist_items(db_session, q)
    step = item.ScheduledProcedureStepSequence[0]
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20311124", "003000")
    assert item.TimezoneOffsetFromUTC == "+0100"
    (sydney_item,) = find_worklist_items(db_session, query(station="WLSYD1", date="20311124"))
    assert sydney_item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "100000"
    assert "TimezoneOffsetFromUTC" not in sydney_item  # only the keys the modality asked for


def test_step_status_and_code_sequences_are_dicom_values(db_session: Session, booked: dict[str, Order]) -> None:
    statuses: dict[str, str] = {}
    for name, date in (("doe", "20310310"), ("arrived", "20310311")):
        q = query(station="WLCT1", date=date, AccessionNumber=booked[name].referral.accession_number or "")
        q.RequestedProcedureCodeSequence = Sequence()
        q.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus = ""
        q.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = Sequence()
        [item] = find_worklist_items(db_session, q)
        step = item.ScheduledProcedureStepSequence[0]
        statuses[name] = step.ScheduledProcedureStepStatus
        for sequence in (item.RequestedProcedureCodeSequence, step.ScheduledProtocolCodeSequence):
            [code] = sequence  # one item, with the three attributes of a code (PS3.3 8.8)
            assert code.CodeValue == "CT-CHEST" and code.CodingSchemeDesignator == "99CLHOSP"
            assert code.CodeMeaning == "CT chest without contrast"
    assert statuses == {"doe": "SCHEDULED", "arrived": "ARRIVED"}
