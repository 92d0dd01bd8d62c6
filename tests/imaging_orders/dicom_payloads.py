"""DICOM payloads for the DICOMweb, Query/Retrieve and fuzz tests: small CT studies as Part 10
bytes, multipart/related bodies, and a demo-centre order to match them to."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.models import Practitioner, User
from hospital.seed import DemoSeed
from imaging_orders.models import Schedule
from synthetic.dicom_factory import ct_series_datasets
from tests.imaging_orders.factories import Centre, Order, make_order

STUDY_DATETIME = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)


def small_ct_study(
    *, patient_id: str, accession_number: str, n_slices: int = 3, size: int = 32, series: int = 1,
    patient_name: str = "Rivera^Alex", study_uid: str | None = None,
) -> list[Dataset]:
    """A synthetic CT study of `series` series, `n_slices` each, `size`x`size` pixels."""
    volume = np.linspace(-1000, 400, n_slices * size * size, dtype=np.float32).reshape(n_slices, size, size)
    study_uid = study_uid or generate_uid()
    datasets: list[Dataset] = []
    for number in range(1, series + 1):
        datasets += ct_series_datasets(
            volume, patient_id=patient_id, patient_name=patient_name, accession_number=accession_number,
            study_instance_uid=study_uid, series_number=number, study_datetime=STUDY_DATETIME.replace(tzinfo=None),
            patient_birth_date=datetime(1968, 4, 12).date(),
        )
    return datasets


def part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def multipart_body(parts: list[bytes], boundary: str = "DICOMwebBoundary42") -> tuple[bytes, str]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n" for part in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def demo_centre(session: Session, demo: DemoSeed) -> Centre:
    """The demo imaging centre as a factories.Centre, so `make_order` books on it."""
    staff: User = demo.users["imaging_staff"]
    requester = session.scalar(select(Practitioner).where(Practitioner.id == demo.users["clinician"].practitioner_id))
    schedule = session.scalar(select(Schedule).where(Schedule.organization_id == demo.imaging_centre.id))
    assert requester is not None and schedule is not None
    return Centre(demo.imaging_centre, requester, staff, schedule)


def demo_order(session: Session, demo: DemoSeed, **kwargs: Any) -> Order:
    return make_order(session, demo_centre(session, demo), **kwargs)


KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
# CID 7011 rejection notes (DCM): the KOS title that makes it an IOCM rejection note.
REJECTED_FOR_QUALITY = ("113001", "Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY = ("113037", "Rejected for Patient Safety Reasons")


def rejection_note(
    rejected: list[Dataset], title: tuple[str, str] = REJECTED_FOR_QUALITY, *, study_uid: str | None = None,
) -> Dataset:
    """A Key Object Selection Document whose title is a rejection note, referencing `rejected`
    (in CurrentRequestedProcedureEvidenceSequence, and as content items, as IOCM senders do)."""
    first = rejected[0]
    ds = Dataset()
    ds.SOPClassUID = KEY_OBJECT_SELECTION
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or first.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "KO"
    ds.SeriesNumber = 999
    ds.InstanceNumber = 1
    for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyDate", "StudyTime"):
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodeMeaning = title
    concept.CodingSchemeDesignator = "DCM"
    ds.ConceptNameCodeSequence = [concept]
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    by_series: dict[tuple[str, str], list[Dataset]] = {}
    for image in rejected:
        by_series.setdefault((str(image.StudyInstanceUID), str(image.SeriesInstanceUID)), []).append(image)
    by_study: dict[str, list[Dataset]] = {}
    content = []
    for (study, series_uid), images in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = []
        for image in images:
            ref = Dataset()
            ref.ReferencedSOPClassUID = image.SOPClassUID
            ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
            series.ReferencedSOPSequence.append(ref)
            item = Dataset()
            item.RelationshipType = "CONTAINS"
            item.ValueType = "IMAGE"
            item.ReferencedSOPSequence = [ref]
            content.append(item)
        by_study.setdefault(study, []).append(series)
    evidence = []
    for study, series_items in by_study.items():
        item = Dataset()
        item.StudyInstanceUID = study
        item.ReferencedSeriesSequence = series_items
        evidence.append(item)
    ds.CurrentRequestedProcedureEvidenceSequence = evidence
    ds.ContentSequence = content
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds
