"""Study Root and Patient Root Query/Retrieve over the image index: who may find which patients,
studies, series and instances, the DICOM C-FIND / C-GET / C-MOVE handlers, and the search that
QIDO-RS shares.

Both information models share one code path: Patient Root adds the PATIENT level (the distinct
PatientID/PatientName pairs of the studies' headers, with their counts) above the same STUDY,
SERIES and IMAGE levels, where PatientID is one more matching key. dcmtk's tools use Patient Root
unless told `-S`.

The index (ImagingStudy -> ImagingSeries -> ImagingInstance) answers the matching keys the index
holds (PatientID, PatientName, AccessionNumber, StudyDate, the UIDs, Modality); any other return
key is read from the header of a representative stored file, so a viewer asking for Rows or
PatientBirthDate still gets what the images say. Retrieval reads the stored Part 10 files.

DICOM carries no user, so the node trusts its network peers by calling AE title, with least
privilege: `DICOM_QR_CALLING_AES` ("*" or a comma list) says who may query and retrieve at all;
then what a peer sees is `studies_visible_to_ae`, one clause used by C-FIND, C-GET and C-MOVE in
both information models. A peer listed in `DICOM_QR_TRUSTED_AES` (a PACS gateway) sees every
study; a peer whose AE title is a centre's own (`Organization.ae_title`) or the station AE title
of one of its active scanners (`Schedule.station_ae_title`) sees only that centre's studies
(`ImagingStudy.organization_id`; a study not yet matched to an order belongs to no centre); any
other peer sees nothing: its query answers Success with no matches and its retrieve sends nothing,
the same answer as for a study that does not exist, so no peer learns what it may not see. A
C-MOVE goes only to a destination named in `DICOM_MOVE_DESTINATIONS` ("AE=host:port,AE2=host:port"),
never to an address the request supplies.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pydicom
from flask import Flask
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.dicom_matching import InvalidMatchKey, date_range, person_name_clause, wildcard_pattern
from hospital.dicom_status import (
    ANSWERABLE,
    CANCEL,
    FIND,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    REFUSED_NOT_AUTHORIZED,
    RETRIEVE,
    UNABLE_TO_PROCESS,
    DicomFailure,
    failure_status,
    status_dataset,
)
from hospital.errors import InvalidInput
from hospital.models import Organization
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from imaging_orders.archive.rejection import LIVE_INSTANCES
from imaging_orders.models import Schedule
from imaging_orders.worklist import CHARACTER_SET

logger = logging.getLogger(__name__)

QR_FIND_CONTEXTS = (StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind)
QR_GET_CONTEXTS = (StudyRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelGet)
QR_MOVE_CONTEXTS = (StudyRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelMove)
PATIENT_ROOT_MODELS = frozenset({
    PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
})

LEVELS = ("STUDY", "SERIES", "IMAGE")
PATIENT_ROOT_LEVELS = ("PATIENT", *LEVELS)
DEFAULT_MAX_RESULTS = 10_000


class QueryError(InvalidInput, DicomFailure):
    """A query cannot be understood (bad level, bad date range, unknown attribute)."""

    dicom_status = IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS


# ---------------------------------------------------------------------------------------------
# Matching: one criteria object, built from a C-FIND identifier or from QIDO-RS parameters
# ---------------------------------------------------------------------------------------------


@dataclass
class StudyCriteria:
    """Matching keys over the index; an empty list means universal matching."""

    patient_ids: list[str] = field(default_factory=list)
    patient_names: list[str] = field(default_factory=list)
    accession_numbers: list[str] = field(default_factory=list)
    study_date: str | None = None
    study_uids: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    sop_instance_uids: list[str] = field(default_factory=list)
    series_numbers: list[str] = field(default_factory=list)
    instance_numbers: list[str] = field(default_factory=list)

    _KEYS = {
        "PatientID": "patient_ids",
        "PatientName": "patient_names",
        "AccessionNumber": "accession_numbers",
        "StudyInstanceUID": "study_uids",
        "ModalitiesInStudy": "modalities",
        "Modality": "modalities",
        "SeriesInstanceUID": "series_uids",
        "SOPInstanceUID": "sop_instance_uids",
        "SeriesNumber": "series_numbers",
        "InstanceNumber": "instance_numbers",
    }
    MATCHING_KEYWORDS = frozenset({*_KEYS, "StudyDate"})

    def set(self, keyword: str, values: list[str]) -> None:
        values = [v for v in values if v and v != "*"]
        if not values:
            return
        if keyword == "StudyDate":
            if len(values) > 1:
                raise QueryError("StudyDate takes one date or one range")
            self.study_date = values[0]
            return
        if keyword == "PatientName":
            # "DOE^JOHN^^^" and "DOE^JOHN" are the same name.
            values = [v.rstrip("^ ") or "*" for v in values]
        getattr(self, self._KEYS[keyword]).extend(values)


def criteria_from_identifier(identifier: Dataset) -> StudyCriteria:
    """Matching keys of a C-FIND / C-GET / C-MOVE identifier."""
    criteria = StudyCriteria()
    for keyword in StudyCriteria.MATCHING_KEYWORDS:
        if keyword in identifier:
            criteria.set(keyword, _element_values(identifier[keyword].value))
    return criteria


def _element_values(raw: Any) -> list[str]:
    if raw is None:
        return []
    values = list(raw) if isinstance(raw, MultiValue | list) else [raw]
    return [str(v).strip("\x00 ") for v in values]


def keyword_of(name: str) -> str | None:
    """`PatientID` or `00100020` -> the keyword, or None when neither names a known attribute."""
    if tag_for_keyword(name) is not None:
        return name
    if len(name) == 8:
        try:
            return keyword_for_tag(int(name, 16)) or None
        except ValueError:
            return None
    return None


def search_studies(
    session: Session,
    criteria: StudyCriteria,
    visible: ColumnElement[bool] | None = None,
    *,
    limit: int = DEFAULT_MAX_RESULTS,
    offset: int = 0,
) -> list[ImagingStudy]:
    statement = _study_statement(criteria, visible).order_by(ImagingStudy.id)
    return list(session.scalars(statement.offset(offset).limit(limit)))


@dataclass(frozen=True)
class PatientMatch:
    """One patient as the images name them (PatientID and PatientName of the studies' headers)."""

    patient_id: str
    patient_name: str
    study_ids: tuple[int, ...]


def search_patients(
    session: Session,
    criteria: StudyCriteria,
    visible: ColumnElement[bool] | None = None,
    *,
    limit: int = DEFAULT_MAX_RESULTS,
) -> list[PatientMatch]:
    """The distinct (PatientID, PatientName) of the matching studies, with their study ids."""
    studies = _study_statement(criteria, visible).with_only_columns(
        ImagingStudy.id, ImagingStudy.dicom_patient_id, ImagingStudy.dicom_patient_name
    ).order_by(ImagingStudy.dicom_patient_id, ImagingStudy.dicom_patient_name, ImagingStudy.id)
    grouped: dict[tuple[str, str], list[int]] = {}
    for study_id, patient_id, patient_name in session.execute(studies):
        key = (patient_id or "", patient_name or "")
        if key not in grouped and len(grouped) >= limit:
            break
        grouped.setdefault(key, []).append(study_id)
    return [PatientMatch(pid, name, tuple(ids)) for (pid, name), ids in grouped.items()]


def search_series(
    session: Session,
    criteria: StudyCriteria,
    visible: ColumnElement[bool] | None = None,
    *,
    limit: int = DEFAULT_MAX_RESULTS,
    offset: int = 0,
) -> list[ImagingSeries]:
    studies = _study_statement(criteria, visible, with_series_keys=False).with_only_columns(ImagingStudy.id)
    statement = select(ImagingSeries).where(ImagingSeries.study_id.in_(studies))
    # A series whose every instance a rejection note withdrew is gone too.
    statement = statement.where(ImagingSeries.id.in_(select(ImagingInstance.series_id).where(LIVE_INSTANCES)))
    statement = _series_filters(statement, criteria)
    statement = statement.order_by(ImagingSeries.study_id, ImagingSeries.number, ImagingSeries.id)
    return list(session.scalars(statement.offset(offset).limit(limit)))


def search_instances(
    session: Session,
    criteria: StudyCriteria,
    visible: ColumnElement[bool] | None = None,
    *,
    limit: int = DEFAULT_MAX_RESULTS,
    offset: int = 0,
) -> list[ImagingInstance]:
    studies = _study_statement(criteria, visible, with_series_keys=False).with_only_columns(ImagingStudy.id)
    series = _series_filters(select(ImagingSeries.id).where(ImagingSeries.study_id.in_(studies)), criteria)
    statement = select(ImagingInstance).where(ImagingInstance.series_id.in_(series), LIVE_INSTANCES)
    if criteria.sop_instance_uids:
        statement = statement.where(ImagingInstance.sop_instance_uid.in_(_split_uids(criteria.sop_instance_uids)))
    if criteria.instance_numbers:
        statement = statement.where(ImagingInstance.number.in_(_integers(criteria.instance_numbers, "InstanceNumber")))
    statement = statement.order_by(ImagingInstance.series_id, ImagingInstance.number, ImagingInstance.id)
    return list(session.scalars(statement.offset(offset).limit(limit)))


def _study_statement(
    criteria: StudyCriteria, visible: ColumnElement[bool] | None, *, with_series_keys: bool = True
) -> Select[Any]:
    statement = select(ImagingStudy)
    if visible is not None:
        statement = statement.where(visible)
    statement = _match(statement, ImagingStudy.dicom_patient_id, criteria.patient_ids)
    if criteria.patient_names and "*" not in criteria.patient_names:
        # By component group: "Wang^Xiaoming", "王^小明" and "Wang*=王*" all find "Wang^Xiaoming=王^小明".
        statement = statement.where(or_(*(person_name_clause(ImagingStudy.dicom_patient_name, name)
                                          for name in criteria.patient_names)))
    statement = _match(statement, ImagingStudy.accession_number, criteria.accession_numbers)
    if criteria.study_uids:
        statement = statement.where(ImagingStudy.study_instance_uid.in_(_split_uids(criteria.study_uids)))
    if criteria.study_date:
        statement = statement.where(_date_clause(criteria.study_date))
    if criteria.modalities:
        # ModalitiesInStudy matches a study having any series of one of the modalities.
        statement = statement.where(
            ImagingStudy.id.in_(
                select(ImagingSeries.study_id).where(func.upper(ImagingSeries.modality).in_([m.upper() for m in criteria.modalities]))
            )
        )
    if with_series_keys and criteria.series_uids:
        statement = statement.where(
            ImagingStudy.id.in_(
                select(ImagingSeries.study_id).where(ImagingSeries.series_instance_uid.in_(_split_uids(criteria.series_uids)))
            )
        )
    return statement


def _series_filters(statement: Select[Any], criteria: StudyCriteria) -> Select[Any]:
    if criteria.series_uids:
        statement = statement.where(ImagingSeries.series_instance_uid.in_(_split_uids(criteria.series_uids)))
    if criteria.modalities:
        statement = statement.where(func.upper(ImagingSeries.modality).in_([m.upper() for m in criteria.modalities]))
    if criteria.series_numbers:
        statement = statement.where(ImagingSeries.number.in_(_integers(criteria.series_numbers, "SeriesNumber")))
    return statement


def _match(statement: Select[Any], column: ColumnElement[Any], values: list[str]) -> Select[Any]:
    if not values or "*" in values:
        return statement
    # lower() on both sides rather than ILIKE: exact values and prefixes then use lower(column)'s index.
    return statement.where(or_(*(func.lower(column).like(wildcard_pattern(v).lower(), escape="\\") for v in values)))


def _split_uids(values: Iterable[str]) -> list[str]:
    # UID list matching: backslash-separated in DIMSE, comma-separated in QIDO-RS.
    return [uid.strip() for value in values for uid in value.replace(",", "\\").split("\\") if uid.strip()]


def _integers(values: list[str], keyword: str) -> list[int]:
    try:
        return [int(v) for value in values for v in value.replace(",", "\\").split("\\") if v.strip()]
    except ValueError as exc:
        raise QueryError(f"{keyword} must be an integer, got {values!r}") from exc


def _date_clause(value: str) -> ColumnElement[bool]:
    try:
        first, last = date_range(value)
    except InvalidMatchKey as exc:
        raise QueryError(f"StudyDate: {exc.message}") from exc
    conditions = []
    if first is not None:
        conditions.append(ImagingStudy.started >= datetime.combine(first, time.min, tzinfo=UTC))
    if last is not None:
        conditions.append(ImagingStudy.started < datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC))
    return and_(*conditions)


# ---------------------------------------------------------------------------------------------
# Attributes of a match
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyCounts:
    series: int
    instances: int
    modalities: tuple[str, ...]


def study_counts(session: Session, study_ids: Sequence[int]) -> dict[int, StudyCounts]:
    """Series and instance counts and modalities of several studies, in three queries."""
    if not study_ids:
        return {}
    n_series = dict(
        session.execute(
            select(ImagingSeries.study_id, func.count(ImagingSeries.id))
            .where(ImagingSeries.study_id.in_(study_ids),
                   ImagingSeries.id.in_(select(ImagingInstance.series_id).where(LIVE_INSTANCES)))
            .group_by(ImagingSeries.study_id)
        ).all()
    )
    n_instances = dict(
        session.execute(
            select(ImagingSeries.study_id, func.count(ImagingInstance.id))
            .join(ImagingInstance, ImagingInstance.series_id == ImagingSeries.id)
            .where(ImagingSeries.study_id.in_(study_ids), LIVE_INSTANCES)
            .group_by(ImagingSeries.study_id)
        ).all()
    )
    modalities: dict[int, set[str]] = {}
    for study_id, modality in session.execute(
        select(ImagingSeries.study_id, ImagingSeries.modality).where(
            ImagingSeries.study_id.in_(study_ids),
            ImagingSeries.id.in_(select(ImagingInstance.series_id).where(LIVE_INSTANCES)),
        ).distinct()
    ):
        if modality:
            modalities.setdefault(study_id, set()).add(modality)
    counts = {
        study_id: StudyCounts(
            int(n_series.get(study_id, 0)), int(n_instances.get(study_id, 0)), tuple(sorted(modalities.get(study_id, ())))
        )
        for study_id in study_ids
    }
    return counts


def series_instance_counts(session: Session, series_ids: Sequence[int]) -> dict[int, int]:
    if not series_ids:
        return {}
    return dict(
        session.execute(
            select(ImagingInstance.series_id, func.count(ImagingInstance.id))
            .where(ImagingInstance.series_id.in_(series_ids), LIVE_INSTANCES)
            .group_by(ImagingInstance.series_id)
        ).all()
    )


def study_attributes(study: ImagingStudy, counts: StudyCounts | None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = CHARACTER_SET
    started = study.started
    ds.StudyDate = started.strftime("%Y%m%d") if started else ""
    ds.StudyTime = started.strftime("%H%M%S") if started else ""
    ds.AccessionNumber = study.accession_number or ""
    ds.PatientName = study.dicom_patient_name or ""
    ds.PatientID = study.dicom_patient_id or ""
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDescription = study.description or ""
    ds.InstanceAvailability = "ONLINE"
    if counts is not None:
        ds.ModalitiesInStudy = list(counts.modalities)
        ds.NumberOfStudyRelatedSeries = counts.series
        ds.NumberOfStudyRelatedInstances = counts.instances
    return ds


def patient_attributes(patient: PatientMatch, counts: Mapping[int, StudyCounts]) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.PatientID = patient.patient_id
    ds.PatientName = patient.patient_name
    ds.NumberOfPatientRelatedStudies = len(patient.study_ids)
    ds.NumberOfPatientRelatedSeries = sum(counts[i].series for i in patient.study_ids if i in counts)
    ds.NumberOfPatientRelatedInstances = sum(counts[i].instances for i in patient.study_ids if i in counts)
    return ds


def series_attributes(series: ImagingSeries, n_instances: int | None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.StudyInstanceUID = series.study.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.Modality = series.modality or ""
    ds.SeriesNumber = series.number if series.number is not None else ""
    ds.SeriesDescription = series.description or ""
    ds.BodyPartExamined = series.body_part or ""
    ds.InstanceAvailability = "ONLINE"
    if n_instances is not None:
        ds.NumberOfSeriesRelatedInstances = n_instances
    return ds


def instance_attributes(instance: ImagingInstance) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.StudyInstanceUID = instance.series.study.study_instance_uid
    ds.SeriesInstanceUID = instance.series.series_instance_uid
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    ds.InstanceNumber = instance.number if instance.number is not None else ""
    ds.AvailableTransferSyntaxUID = instance.transfer_syntax_uid
    ds.InstanceAvailability = "ONLINE"
    return ds


def representative_instance(session: Session, *, study_id: int | None = None, series_id: int | None = None) -> ImagingInstance | None:
    statement = select(ImagingInstance).where(LIVE_INSTANCES).order_by(ImagingInstance.number, ImagingInstance.id).limit(1)
    if series_id is not None:
        statement = statement.where(ImagingInstance.series_id == series_id)
    else:
        statement = statement.where(
            ImagingInstance.series_id.in_(select(ImagingSeries.id).where(ImagingSeries.study_id == study_id))
        )
    return session.scalar(statement)


def add_from_file(ds: Dataset, path: Path | None, keywords: Iterable[str]) -> None:
    """Copy `keywords` missing from `ds` out of the stored file's header (empty when absent)."""
    missing = [k for k in keywords if k and k not in ds and tag_for_keyword(k) is not None]
    if not missing:
        return
    header: Dataset | None = None
    if path is not None:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=missing)
        except (OSError, ValueError, TypeError, AttributeError, EOFError, KeyError) as exc:
            logger.warning("could not read header of %s: %s", path.name, type(exc).__name__)
    for keyword in missing:
        if header is not None and keyword in header:
            ds.add(header[keyword])
        else:
            tag = tag_for_keyword(keyword)
            vr = dictionary_VR(tag)
            ds.add(DataElement(tag, vr, DicomSequence() if vr == "SQ" else None))


def stored_path(storage_dir: Path, instance: ImagingInstance) -> Path:
    return storage_dir / instance.path


# ---------------------------------------------------------------------------------------------
# DIMSE handlers
# ---------------------------------------------------------------------------------------------


def parse_move_destinations(text: str | Mapping[str, Any] | None) -> dict[str, tuple[str, int]]:
    """`"AE=host:port,AE2=host:port"` (or a mapping) -> {AE: (host, port)}."""
    if not text:
        return {}
    if isinstance(text, Mapping):
        return {str(ae).strip(): (str(addr[0]), int(addr[1])) for ae, addr in text.items()}
    destinations: dict[str, tuple[str, int]] = {}
    for entry in str(text).split(","):
        if not entry.strip():
            continue
        ae, _, address = entry.partition("=")
        host, _, port = address.strip().rpartition(":")
        if not ae.strip() or not host or not port.isdigit():
            raise ValueError(f"DICOM_MOVE_DESTINATIONS entry {entry!r} is not AE=host:port")
        destinations[ae.strip()] = (host, int(port))
    return destinations


def _ae_titles(text: object) -> set[str]:
    return {a.strip() for a in str(text or "").split(",") if a.strip()}


def calling_ae_allowed(app: Flask, calling_ae: str) -> bool:
    allowed = str(app.config.get("DICOM_QR_CALLING_AES", "*") or "*")
    if allowed.strip() == "*":
        return True
    return calling_ae.strip() in _ae_titles(allowed)


def studies_visible_to_ae(app: Flask, calling_ae: str) -> ColumnElement[bool] | None:
    """The studies a calling AE may find and retrieve (see the module docstring): None for a
    trusted AE (every study), else those of the centres the AE title belongs to (none for an AE
    title no centre has). AE titles are matched exactly: DICOM compares them as they are."""
    calling_ae = calling_ae.strip()
    if calling_ae in _ae_titles(app.config.get("DICOM_QR_TRUSTED_AES")):
        return None
    centres = select(Organization.id).where(Organization.ae_title == calling_ae).union(
        select(Schedule.organization_id).where(Schedule.station_ae_title == calling_ae, Schedule.active.is_(True))
    )
    return ImagingStudy.organization_id.in_(centres)


def handle_qr_find(event: Event, app: Flask) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """Study Root C-FIND at STUDY, SERIES or IMAGE level, Patient Root also at PATIENT level:
    pending per match, then success."""
    calling_ae = _calling_ae(event)
    if not calling_ae_allowed(app, calling_ae):
        logger.warning("C-FIND from %s refused: not in DICOM_QR_CALLING_AES", calling_ae)
        yield status_dataset(REFUSED_NOT_AUTHORIZED, "calling AE not allowed to query"), None
        return
    try:
        identifier = event.identifier
        level = _level(identifier, _patient_root(event))
        criteria = criteria_from_identifier(identifier)
        limit = int(app.config.get("DICOM_QR_MAX_RESULTS", DEFAULT_MAX_RESULTS))
        visible = studies_visible_to_ae(app, calling_ae)
        with app.app_context(), get_db(app).transaction() as session:
            responses = _find_responses(session, app, identifier, level, criteria, limit, visible)
    except ANSWERABLE as exc:
        logger.warning("C-FIND from %s failed: %s: %s", calling_ae, type(exc).__name__, exc)
        yield failure_status(exc, FIND), None
        return
    logger.info("C-FIND %s level from %s: %d matches", level, calling_ae, len(responses))
    for response in responses:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, response


def _find_responses(
    session: Session, app: Flask, identifier: Dataset, level: str, criteria: StudyCriteria, limit: int,
    visible: ColumnElement[bool] | None,
) -> list[Dataset]:
    storage_dir = Path(app.config["DICOM_STORAGE_DIR"])
    requested = [elem.keyword for elem in identifier if elem.keyword and elem.keyword != "QueryRetrieveLevel"]
    found: list[tuple[Dataset, ImagingInstance | None]] = []
    if level == "PATIENT":
        patients = search_patients(session, criteria, visible, limit=limit)
        counts = study_counts(session, [i for p in patients for i in p.study_ids])
        needs_file = any(k not in _PATIENT_KEYS for k in requested)
        for patient in patients:
            rep = representative_instance(session, study_id=patient.study_ids[0]) if needs_file else None
            found.append((patient_attributes(patient, counts), rep))
    elif level == "STUDY":
        studies = search_studies(session, criteria, visible, limit=limit)
        counts = study_counts(session, [s.id for s in studies])
        needs_file = any(k not in _STUDY_KEYS for k in requested)
        for study in studies:
            rep = representative_instance(session, study_id=study.id) if needs_file else None
            found.append((study_attributes(study, counts.get(study.id, StudyCounts(0, 0, ()))), rep))
    elif level == "SERIES":
        series_list = search_series(session, criteria, visible, limit=limit)
        n_instances = series_instance_counts(session, [s.id for s in series_list])
        needs_file = any(k not in _SERIES_KEYS for k in requested)
        for series in series_list:
            rep = representative_instance(session, series_id=series.id) if needs_file else None
            found.append((series_attributes(series, n_instances.get(series.id, 0)), rep))
    else:
        for instance in search_instances(session, criteria, visible, limit=limit):
            found.append((instance_attributes(instance), instance))
    responses = []
    for attributes, rep in found:
        add_from_file(attributes, stored_path(storage_dir, rep) if rep else None, requested)
        responses.append(_only_requested(attributes, identifier, level, app))
    return responses


_PATIENT_KEYS = frozenset(
    {"SpecificCharacterSet", "PatientID", "PatientName", "NumberOfPatientRelatedStudies",
     "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances", "RetrieveAETitle"}
)
_STUDY_KEYS = frozenset(
    {"SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "PatientName", "PatientID",
     "StudyInstanceUID", "StudyDescription", "InstanceAvailability", "ModalitiesInStudy",
     "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "RetrieveAETitle"}
)
_SERIES_KEYS = frozenset(
    {"SpecificCharacterSet", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
     "SeriesDescription", "BodyPartExamined", "InstanceAvailability", "NumberOfSeriesRelatedInstances",
     "RetrieveAETitle"}
)


def _only_requested(attributes: Dataset, identifier: Dataset, level: str, app: Flask) -> Dataset:
    response = Dataset()
    response.SpecificCharacterSet = CHARACTER_SET
    response.QueryRetrieveLevel = level
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        if keyword == "RetrieveAETitle":
            response.RetrieveAETitle = app.config["DICOM_AE_TITLE"]
        elif keyword in attributes:
            response.add(attributes[keyword])
        else:
            response.add(DataElement(elem.tag, elem.VR, DicomSequence() if elem.VR == "SQ" else None))
    return response


def _level(identifier: Dataset, patient_root: bool) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    levels = PATIENT_ROOT_LEVELS if patient_root else LEVELS
    if level not in levels:
        raise QueryError(f"QueryRetrieveLevel must be one of {', '.join(levels)}, got {level[:16]!r}")
    return level


def _patient_root(event: Event) -> bool:
    """Whether the request is in the Patient Root information model (else Study Root)."""
    return str(event.request.AffectedSOPClassUID) in PATIENT_ROOT_MODELS


@dataclass(frozen=True)
class StoredFile:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


def _retrieve_instances(app: Flask, identifier: Dataset, calling_ae: str, patient_root: bool = False) -> list[StoredFile]:
    """The stored files matching a C-GET/C-MOVE identifier (unique keys down to its level) among
    the studies `calling_ae` may see."""
    level = _level(identifier, patient_root)
    criteria = criteria_from_identifier(identifier)
    if level == "PATIENT":
        # The unique key of the level: one patient, named exactly (a wildcard would send everyone's).
        if len(criteria.patient_ids) != 1 or any(c in criteria.patient_ids[0] for c in "*?\\"):
            raise QueryError("a PATIENT level retrieve needs one PatientID, without wildcards")
        criteria = StudyCriteria(patient_ids=criteria.patient_ids)
    elif not (criteria.study_uids or criteria.series_uids or criteria.sop_instance_uids):
        raise QueryError("a retrieve needs a StudyInstanceUID, SeriesInstanceUID or SOPInstanceUID")
    if level == "STUDY":
        criteria.series_uids, criteria.sop_instance_uids = [], []
    elif level == "SERIES":
        criteria.sop_instance_uids = []
    storage_dir = Path(app.config["DICOM_STORAGE_DIR"])
    # A retrieve answers at most 65535 sub-operations (the counts are US).
    limit = min(int(app.config.get("DICOM_QR_MAX_RESULTS", DEFAULT_MAX_RESULTS)), 65535)
    visible = studies_visible_to_ae(app, calling_ae)
    with app.app_context(), get_db(app).transaction() as session:
        return [
            StoredFile(stored_path(storage_dir, i), i.sop_class_uid, i.transfer_syntax_uid)
            for i in search_instances(session, criteria, visible, limit=limit)
        ]


def _storage_contexts(files: list[StoredFile]) -> list[PresentationContext]:
    """Contexts for a C-MOVE's association to the destination: one per (SOP class, stored transfer
    syntax), and one per SOP class offering the uncompressed syntaxes.

    A context holding several syntaxes is accepted with one of them only, so every instance stored
    in another would fail; separate contexts let the peer accept each syntax it can read, and the
    uncompressed one lets an instance whose syntax it refused be sent decompressed
    (`_as_peer_accepts`). At most 128 contexts fit an association: the uncompressed ones come
    first, so every SOP class can be sent.
    """
    uncompressed: dict[str, None] = {}
    compressed: dict[tuple[str, str], None] = {}
    for stored in files:
        uncompressed.setdefault(stored.sop_class_uid, None)
        if stored.transfer_syntax_uid not in _UNCOMPRESSED:
            compressed.setdefault((stored.sop_class_uid, stored.transfer_syntax_uid), None)
    contexts = [build_context(sop_class, list(_UNCOMPRESSED[:2])) for sop_class in uncompressed]
    contexts += [build_context(sop_class, syntax) for sop_class, syntax in compressed]
    return contexts[:128]


# Sent as they are by pynetdicom over any accepted uncompressed context (it re-encodes between them).
_UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), "1.2.840.10008.1.2.2")


def _retrieve_datasets(
    event: Event, files: list[StoredFile], accepted: Callable[[], Sequence[PresentationContext]],
) -> Iterator[tuple[int, Dataset | None]]:
    """Each stored file as a pending sub-operation, in a syntax the peer accepted (`accepted`
    gives the storage association's accepted contexts once it exists)."""
    for stored in files:
        path = stored.path
        if event.is_cancelled:
            yield CANCEL, None
            return
        try:
            yield PENDING, _as_peer_accepts(pydicom.dcmread(path), stored, accepted())
        except (OSError, ValueError, TypeError, AttributeError, EOFError, RuntimeError, NotImplementedError) as exc:
            logger.error("stored file %s unreadable or not convertible for retrieve: %s", path.name, type(exc).__name__)
            # A failed sub-operation: pynetdicom counts it and lists the instance as failed.
            yield UNABLE_TO_PROCESS, _failed_identifier(path)


def _as_peer_accepts(ds: Dataset, stored: StoredFile, accepted: Sequence[PresentationContext]) -> Dataset:
    """`ds` as stored when the peer accepted its syntax for its SOP class, else decompressed to
    explicit VR little endian when the peer accepted an uncompressed syntax (pydicom's decoders:
    RLE natively, JPEG and JPEG 2000 through pylibjpeg or Pillow)."""
    syntaxes = {str(ts) for cx in accepted if cx.abstract_syntax == stored.sop_class_uid for ts in cx.transfer_syntax}
    if stored.transfer_syntax_uid in syntaxes or not pydicom.uid.UID(stored.transfer_syntax_uid).is_compressed:
        return ds
    if syntaxes & set(_UNCOMPRESSED):
        # A change of transfer syntax is the same instance (PS3.5 A.4): its UID stays.
        ds.decompress(generate_instance_uid=False)
        logger.info("sent %s decompressed: the peer did not accept %s", stored.path.stem, stored.transfer_syntax_uid)
    return ds


def _failed_identifier(path: Path) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = path.stem
    return ds


def handle_qr_get(event: Event, app: Flask) -> Iterator[Any]:
    """Study or Patient Root C-GET: the number of sub-operations, then each instance over this association."""
    calling_ae = _calling_ae(event)
    if not calling_ae_allowed(app, calling_ae):
        logger.warning("C-GET from %s refused: not in DICOM_QR_CALLING_AES", calling_ae)
        yield status_dataset(REFUSED_NOT_AUTHORIZED, "calling AE not allowed to retrieve"), None
        return
    try:
        files = _retrieve_instances(app, event.identifier, calling_ae, _patient_root(event))
    except ANSWERABLE as exc:
        logger.warning("C-GET from %s failed: %s: %s", calling_ae, type(exc).__name__, exc)
        # pynetdicom wants a count before any status (as for C-MOVE below).
        yield 1
        yield failure_status(exc, RETRIEVE), None
        return
    logger.info("C-GET from %s: %d instances", calling_ae, len(files))
    yield len(files)
    # Over C-GET the instances go back over the requestor's own association and its contexts.
    yield from _retrieve_datasets(event, files, lambda: event.assoc.accepted_contexts)


def handle_qr_move(event: Event, app: Flask) -> Iterator[Any]:
    """Study or Patient Root C-MOVE to a configured destination AE only."""
    calling_ae = _calling_ae(event)
    destination = str(event.move_destination or "").strip()
    destinations = parse_move_destinations(app.config.get("DICOM_MOVE_DESTINATIONS"))
    if not calling_ae_allowed(app, calling_ae) or destination not in destinations:
        logger.warning("C-MOVE from %s to %r refused: unknown destination or caller", calling_ae, destination)
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    failure: Dataset | None = None
    files: list[StoredFile] = []
    try:
        files = _retrieve_instances(app, event.identifier, calling_ae, _patient_root(event))
    except ANSWERABLE as exc:
        logger.warning("C-MOVE from %s failed: %s: %s", calling_ae, type(exc).__name__, exc)
        failure = failure_status(exc, RETRIEVE)
    host, port = destinations[destination]
    contexts = _storage_contexts(files) or [build_context(Verification)]
    # pynetdicom makes the storage association itself; its accepted contexts are caught here.
    store_assoc: list[Any] = []
    handlers = [(evt.EVT_CONN_OPEN, _no_delay), (evt.EVT_ACCEPTED, lambda e: store_assoc.append(e.assoc))]
    # pynetdicom wants the destination first and a count before any status, so a failure is
    # reported as the one (failed) sub-operation.
    yield host, port, {"ae_title": destination, "contexts": contexts, "evt_handlers": handlers}
    if failure is not None:
        yield 1
        yield failure, None
        return
    logger.info("C-MOVE from %s to %s: %d instances", calling_ae, destination, len(files))
    yield len(files)
    yield from _retrieve_datasets(event, files, lambda: store_assoc[0].accepted_contexts if store_assoc else [])


def _no_delay(event: Event) -> None:
    # As on the node's own associations (dicom_server.disable_nagle): send each PDU at once.
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    except (AttributeError, OSError):
        pass


def _calling_ae(event: Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except AttributeError:
        return "?"
