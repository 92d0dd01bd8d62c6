"""DICOMweb (PS3.18) for the image index: STOW-RS to store, QIDO-RS to search. Retrieval (WADO-RS:
instances, metadata, frames, bulk data, rendered, thumbnails) is `imaging_orders.archive.wado`.

STOW-RS stores every part through `imaging_orders.archive.ingest.store_instance`, so a web upload gets the
same durability, idempotency and order matching as a C-STORE. The multipart body is parsed here
(it is bounded by MAX_CONTENT_LENGTH, which Werkzeug enforces while reading). Searches go through
`imaging_orders.archive.query_retrieve` restricted by `imaging_orders.archive.reconciliation.visible_studies`,
at /studies, /series and /instances, each level with its standard return attributes (PS3.18
10.6.3), `includefield`, and `offset`/`limit` (at most MAX_LIMIT a request, with a Warning when
capped or when more results remain). Every search is audited.
Errors become RFC 9457 problem documents (`hospital.errors_http`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from flask import Blueprint, Response, current_app, json, request
from flask.typing import ResponseReturnValue
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.http import parse_options_header

from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.dicom_status import (
    COERCION_OF_DATA_ELEMENTS,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    SOP_CLASS_NOT_SUPPORTED,
)
from hospital.errors import InvalidInput
from hospital.models import Role, User
from hospital.multipart import BodyPart, parse_multipart_related
from imaging_orders.archive.ingest import (
    InstanceRejected,
    StorageUnavailable,
    store_instance,
)
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from imaging_orders.archive.query_retrieve import (
    StudyCounts,
    StudyCriteria,
    add_from_file,
    instance_attributes,
    keyword_of,
    representative_instance,
    search_instances,
    search_series,
    search_studies,
    series_attributes,
    series_instance_counts,
    stored_path,
    study_attributes,
    study_counts,
)
from imaging_orders.archive.reconciliation import visible_studies
from imaging_orders.archive.wado import instance_url, instance_url_of, series_url, study_url

logger = logging.getLogger(__name__)

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
STOW_ROLES = (Role.IMAGING_STAFF, Role.ADMIN)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CHUNK = 1 << 20
# Return attributes read from a stored header, per level, beyond the index's own (PS3.18 Tables
# 10.6.3-3 to -5); across studies, series and instances also carry the study's (10.6.3.3).
_DEFAULT_FIELDS = {
    "study": ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID", "TimezoneOffsetFromUTC"),
    "series": ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
    "instance": ("Rows", "Columns", "BitsAllocated", "NumberOfFrames"),
}
# Extra attributes `includefield=all` adds, per level.
_ALL_FIELDS = {
    "study": ("InstitutionName", "StudyTime", "IssuerOfPatientID", "OtherPatientIDs"),
    "series": ("SeriesDate", "SeriesTime", "ProtocolName", "Laterality", "Manufacturer", "StationName"),
    "instance": ("PhotometricInterpretation", "ImageType", "ContentDate", "ContentTime", "SamplesPerPixel",
                 "BitsStored", "PixelSpacing", "SliceThickness", "ImagePositionPatient", "ImageOrientationPatient"),
}


# ---------------------------------------------------------------------------------------------
# STOW-RS
# ---------------------------------------------------------------------------------------------


@dataclass
class _PartOutcome:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    study_id: int | None = None
    failure_reason: int | None = None
    transient: bool = False
    # Stored, with a warning the sender must hear (a corrected re-send kept as a new version).
    warning_reason: int | None = None


@bp.post("/studies")
@bp.post("/studies/<study_uid>")
@require_roles(*STOW_ROLES)
def stow(study_uid: str | None = None) -> ResponseReturnValue:
    user = current_user()
    parts = parse_multipart_related(request.get_data(cache=False), request.headers.get("Content-Type", ""))
    if not parts:
        raise InvalidInput("the multipart body has no parts")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    outcomes = [_store_part(app, part, study_uid, user) for part in parts]
    stored = [o for o in outcomes if o.failure_reason is None]
    failed = [o for o in outcomes if o.failure_reason is not None]
    session = request_session()
    for study_id in sorted({o.study_id for o in stored if o.study_id is not None}):
        patient_id = session.scalar(select(ImagingStudy.patient_id).where(ImagingStudy.id == study_id))
        count = sum(1 for o in stored if o.study_id == study_id)
        record_access(session, user, "C", "ImagingStudy", study_id, patient_id=patient_id,
                      description=f"STOW-RS {count} instances")
    logger.info("STOW-RS by user %s: %d stored, %d failed", user.id, len(stored), len(failed))
    # PS3.18 10.5.3: 202 when some instances failed or were stored with a warning.
    if not failed and not any(o.warning_reason is not None for o in stored):
        status = 200
    elif stored:
        status = 202
    elif all(o.transient for o in failed):
        status = 503  # nothing kept, but a retry may work
    else:
        status = 409
    return _dicom_json(_stow_response(outcomes, study_uid), status)


def _store_part(app: Any, part: BodyPart, path_study_uid: str | None, user: User) -> _PartOutcome:
    peeked = _peek_uids(part.content)
    outcome = _PartOutcome(*peeked)
    mimetype, params = parse_options_header(part.headers.get("content-type", "application/dicom"))
    if mimetype.lower() != "application/dicom":
        outcome.failure_reason = SOP_CLASS_NOT_SUPPORTED
        return outcome
    if path_study_uid is not None and outcome.study_instance_uid not in (None, path_study_uid):
        outcome.failure_reason = DATASET_DOES_NOT_MATCH_SOP_CLASS
        return outcome
    try:
        result = store_instance(
            app, bytes(part.content), transfer_syntax_uid=params.get("transfer-syntax"),
            calling_ae=f"STOW-RS:{user.id}", rejection_scope=visible_studies(user),
        )
    except InstanceRejected as exc:
        logger.warning("STOW-RS part %s rejected: %s", outcome.sop_instance_uid or "?", exc.reason)
        outcome.failure_reason = exc.dicom_status
        return outcome
    except StorageUnavailable as exc:
        logger.error("STOW-RS part %s not kept: %s", outcome.sop_instance_uid or "?", exc.reason)
        outcome.failure_reason, outcome.transient = exc.dicom_status, True
        return outcome
    if path_study_uid is not None and outcome.study_instance_uid is None:
        # The peek could not read the UID but ingest could; ingest's answer is the truth.
        outcome.study_instance_uid = path_study_uid
    outcome.study_id = result.study_id
    outcome.sop_instance_uid = result.sop_instance_uid
    if result.superseded or result.character_set_problems:
        # A new version of a stored instance, or text the declared character set does not decode.
        outcome.warning_reason = COERCION_OF_DATA_ELEMENTS
    return outcome


def _peek_uids(content: memoryview) -> tuple[str, str, str | None]:
    """The SOP class, SOP instance and study UIDs of a part, as far as they can be read."""
    try:
        header = pydicom.dcmread(
            BytesIO(content), stop_before_pixels=True, force=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
        values = [str(header.get(k, "") or "").strip("\x00 ")[:64] for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")]
    except Exception:  # noqa: BLE001 - only labels the response; the bytes may be anything, ingest judges them
        return "", "", None
    return values[0], values[1], values[2] or None


def _stow_response(outcomes: list[_PartOutcome], path_study_uid: str | None) -> Dataset:
    response = Dataset()
    study_uids = {o.study_instance_uid for o in outcomes if o.failure_reason is None and o.study_instance_uid}
    if path_study_uid or len(study_uids) == 1:
        response.RetrieveURL = study_url(path_study_uid or next(iter(study_uids)))
    referenced, failed = [], []
    for outcome in outcomes:
        item = Dataset()
        item.ReferencedSOPClassUID = outcome.sop_class_uid
        item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
        if outcome.failure_reason is None:
            item.RetrieveURL = _instance_url_from_uids(outcome)
            if outcome.warning_reason is not None:
                item.WarningReason = outcome.warning_reason
            referenced.append(item)
        else:
            item.FailureReason = outcome.failure_reason
            failed.append(item)
    if referenced:
        response.ReferencedSOPSequence = DicomSequence(referenced)
    if failed:
        response.FailedSOPSequence = DicomSequence(failed)
    return response


def _instance_url_from_uids(outcome: _PartOutcome) -> str:
    session = request_session()
    row = session.execute(
        select(ImagingSeries.series_instance_uid)
        .join(ImagingInstance, ImagingInstance.series_id == ImagingSeries.id)
        .where(ImagingInstance.sop_instance_uid == outcome.sop_instance_uid)
    ).first()
    if row is None or not outcome.study_instance_uid:
        return ""
    return instance_url_of(outcome.study_instance_uid, row[0], outcome.sop_instance_uid)


# ---------------------------------------------------------------------------------------------
# QIDO-RS
# ---------------------------------------------------------------------------------------------


@dataclass
class _SearchRequest:
    criteria: StudyCriteria
    limit: int
    offset: int
    include: list[str]
    ignored: list[str]
    limit_capped: bool


def _search_request(level: str) -> _SearchRequest:
    criteria = StudyCriteria()
    limit, offset, include, ignored, capped = DEFAULT_LIMIT, 0, list(_DEFAULT_FIELDS[level]), [], False
    for name, values in request.args.lists():
        if name == "limit":
            limit = _non_negative_int(name, values[-1]) or DEFAULT_LIMIT
            capped = limit > MAX_LIMIT
            limit = min(limit, MAX_LIMIT)
        elif name == "offset":
            offset = _non_negative_int(name, values[-1])
        elif name == "includefield":
            for value in values:
                for field in value.split(","):
                    if field.strip() == "all":
                        include.extend(_ALL_FIELDS[level])
                    elif field.strip():
                        keyword = keyword_of(field.strip())
                        if keyword is None:
                            raise InvalidInput(f"includefield {field.strip()[:64]!r} is not a DICOM attribute")
                        include.append(keyword)
        elif name == "fuzzymatching":
            continue  # fuzzy matching is not offered; exact and wildcard matching apply
        else:
            keyword = keyword_of(name)
            if keyword is None:
                raise InvalidInput(f"query key {name[:64]!r} is not a DICOM attribute keyword or tag")
            if keyword in StudyCriteria.MATCHING_KEYWORDS:
                criteria.set(keyword, [v.strip() for v in values])
            else:
                ignored.append(keyword)
    return _SearchRequest(criteria, limit, offset, list(dict.fromkeys(include)), ignored, capped)


def _non_negative_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be a non-negative integer, got {value[:20]!r}") from exc
    if number < 0:
        raise InvalidInput(f"{name} must be a non-negative integer, got {number}")
    return number


@bp.get("/studies")
@require_roles()
def search_for_studies() -> ResponseReturnValue:
    user, session = current_user(), request_session()
    search = _search_request("study")
    studies = search_studies(session, search.criteria, visible_studies(user), limit=search.limit + 1, offset=search.offset)
    more, studies = len(studies) > search.limit, studies[: search.limit]
    counts = study_counts(session, [s.id for s in studies])
    storage_dir = _storage_dir()
    results = []
    for study in studies:
        ds = study_attributes(study, counts.get(study.id, StudyCounts(0, 0, ())))
        ds.RetrieveURL = study_url(study.study_instance_uid)
        rep = representative_instance(session, study_id=study.id)
        add_from_file(ds, stored_path(storage_dir, rep) if rep else None, search.include)
        results.append(ds)
    return _search_response(session, user, "studies", results, search, more)


@bp.get("/series")
@bp.get("/studies/<study_uid>/series")
@require_roles()
def search_for_series(study_uid: str | None = None) -> ResponseReturnValue:
    """Series of one study, or of every visible study; across studies each result also carries
    its study's attributes (PS3.18 10.6.3.3)."""
    user, session = current_user(), request_session()
    search = _search_request("series")
    if study_uid is not None:
        search.criteria.study_uids = [study_uid]
    else:
        search.include.extend(_DEFAULT_FIELDS["study"])
    found = search_series(session, search.criteria, visible_studies(user), limit=search.limit + 1, offset=search.offset)
    more, found = len(found) > search.limit, found[: search.limit]
    counts = series_instance_counts(session, [s.id for s in found])
    study_info = _study_info(session, {s.study for s in found}) if study_uid is None else {}
    storage_dir = _storage_dir()
    results = []
    for series in found:
        ds = copy.deepcopy(study_info.get(series.study_id, Dataset()))
        ds.update(series_attributes(series, counts.get(series.id, 0)))
        ds.RetrieveURL = series_url(series.study.study_instance_uid, series.series_instance_uid)
        rep = representative_instance(session, series_id=series.id)
        add_from_file(ds, stored_path(storage_dir, rep) if rep else None, search.include)
        results.append(ds)
    return _search_response(session, user, "series", results, search, more)


@bp.get("/instances")
@bp.get("/studies/<study_uid>/instances")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances")
@require_roles()
def search_for_instances(study_uid: str | None = None, series_uid: str | None = None) -> ResponseReturnValue:
    """Instances of a series, a study, or every visible study; above the series level each result
    also carries its series' (and across studies its study's) attributes (PS3.18 10.6.3.3)."""
    user, session = current_user(), request_session()
    search = _search_request("instance")
    if study_uid is not None:
        search.criteria.study_uids = [study_uid]
    else:
        search.include.extend(_DEFAULT_FIELDS["study"])
    if series_uid is not None:
        search.criteria.series_uids = [series_uid]
    else:
        search.include.extend(_DEFAULT_FIELDS["series"])
    found = search_instances(session, search.criteria, visible_studies(user), limit=search.limit + 1, offset=search.offset)
    more, found = len(found) > search.limit, found[: search.limit]
    study_info = _study_info(session, {i.series.study for i in found}) if study_uid is None else {}
    storage_dir = _storage_dir()
    results = []
    for instance in found:
        ds = copy.deepcopy(study_info.get(instance.series.study_id, Dataset()))
        if series_uid is None:
            ds.update(series_attributes(instance.series, None))
        ds.update(instance_attributes(instance))
        ds.RetrieveURL = instance_url(instance)
        add_from_file(ds, stored_path(storage_dir, instance), search.include)
        results.append(ds)
    return _search_response(session, user, "instances", results, search, more)


def _study_info(session: Session, studies: set[ImagingStudy]) -> dict[int, Dataset]:
    """The study attributes of `studies` (without RetrieveURL, which names the series' or instance's resource)."""
    counts = study_counts(session, [s.id for s in studies])
    return {s.id: study_attributes(s, counts.get(s.id)) for s in studies}


def _search_response(session: Session, user: User, what: str, results: list[Dataset], search: _SearchRequest,
                     more: bool) -> Response:
    record_access(session, user, "E", "ImagingStudy", None, description=f"QIDO-RS {what} ({len(results)})",
                  at_response=True)
    response = Response(json.dumps([ds.to_json_dict() for ds in results]), status=200, mimetype=DICOM_JSON)
    warnings = []
    if search.ignored:
        # PS3.18 8.3.4.4: unsupported matching keys are ignored and the client is told.
        warnings.append(f'299 {request.host} "Matching is not supported on: {", ".join(search.ignored)[:200]}"')
    if search.limit_capped:
        warnings.append(f'299 {request.host} "The limit is capped at {MAX_LIMIT} results per request"')
    if more:
        # PS3.18 8.3.4.5: the client learns there are more results to ask for with offset.
        warnings.append(f'299 {request.host} "There are more results: ask again with offset={search.offset + search.limit}"')
    if warnings:
        response.headers["Warning"] = ", ".join(warnings)
    return response


# ---------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------


def _storage_dir() -> Path:
    return Path(current_app.config["DICOM_STORAGE_DIR"])


def _dicom_json(ds: Dataset, status: int) -> Response:
    return Response(json.dumps(ds.to_json_dict()), status=status, mimetype=DICOM_JSON)
