"""Worklist responses are made already encoded for the presentation context, so sending a day of
steps copies bytes instead of building, validating and encoding every element again; they still
decode (on the wire and in Python) to the values the modality expects, in every query syntax."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import pytest
from pydicom import filewriter
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode
from sqlalchemy.orm import Session

from imaging_orders.worklist import find_worklist_items
from tests.imaging_orders.factories import make_centre, make_order

DAY = datetime(2031, 5, 6, 9, 30, tzinfo=UTC)


def day_query() -> Dataset:
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "RequestedProcedureDescription",
                    "RequestedProcedureCodeSequence", "AdmissionID", "MedicalAlerts"):
        setattr(ds, keyword, "" if keyword != "RequestedProcedureCodeSequence" else Sequence())
    step = Dataset()
    step.ScheduledStationAETitle = "ENCCT1"
    step.ScheduledProcedureStepStartDate = "20310506"
    for keyword in ("ScheduledProcedureStepStartTime", "Modality", "ScheduledProcedureStepLocation",
                    "ScheduledProcedureStepDescription", "RequestedContrastAgent"):
        setattr(step, keyword, "")
    step.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


@pytest.fixture()
def booked(db_session: Session) -> None:
    centre = make_centre(db_session, station_ae_title="ENCCT1", room="Raum Ü1")
    make_order(db_session, centre, family_name="Müller", given_name="Jürgen", mrn="ENC-1", accession_number="ENCA1",
               start=DAY)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_responses_decode_alike_in_every_query_syntax(db_session: Session, booked: None, syntax: UID) -> None:
    encoding = (syntax.is_implicit_VR, syntax.is_little_endian)
    [item] = find_worklist_items(db_session, day_query(), encoding)

    wire = encode(item, *encoding)
    assert wire is not None
    received = decode(BytesIO(wire), *encoding)

    for ds in (item, received):  # as made, and as the modality reads it
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == "Müller^Jürgen"
        assert ds.PatientID == "ENC-1" and ds.AccessionNumber == "ENCA1"
        assert ds.StudyInstanceUID.startswith("2.25.")
        assert "AdmissionID" in ds and not ds.AdmissionID
        [code] = ds.RequestedProcedureCodeSequence
        assert code.CodingSchemeDesignator == "99CLHOSP" and code.CodeValue
        [step] = ds.ScheduledProcedureStepSequence
        assert step.ScheduledProcedureStepLocation == "Raum Ü1"
        assert step.ScheduledProcedureStepStartTime == "093000"
        assert step.Modality == "CT"
        assert "RequestedContrastAgent" in step and not step.RequestedContrastAgent
        [protocol] = step.ScheduledProtocolCodeSequence
        assert protocol.CodeValue == code.CodeValue
    assert len(wire) % 2 == 0


def test_sending_a_response_encodes_no_element_again(
    db_session: Session, booked: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoding = (True, True)
    [item] = find_worklist_items(db_session, day_query(), encoding)
    encoded: list[str] = []
    for vr, (writer, parameter) in list(filewriter.writers.items()):
        if vr == "SQ":
            continue  # a sequence is a container: its items' elements are what count

        def counting(*args: Any, _writer: Any = writer, _vr: str = str(vr), **kwargs: Any) -> Any:
            encoded.append(_vr)
            return _writer(*args, **kwargs)

        monkeypatch.setitem(filewriter.writers, vr, (counting, parameter))

    assert encode(item, *encoding) is not None
    # Only SpecificCharacterSet: pydicom reads it to choose the character set, which decodes it.
    assert encoded == ["CS"]
