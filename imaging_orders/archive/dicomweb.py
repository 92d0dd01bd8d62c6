"""DICOMweb (PS3.18) for the image index: STOW-RS to store, QIDO-RS to search, WADO-RS to
retrieve instances, metadata and rendered frames.

STOW-RS stores every part through `imaging_orders.archive.ingest.store_instance`, so a web upload gets the
same durability, idempotency and order matching as a C-STORE. The multipart body is parsed here
(it is bounded by MAX_CONTENT_LENGTH, which Werkzeug enforces while reading). Searches go through
`imaging_orders.archive.query_retrieve` restricted by `imaging_orders.archive.reconciliation.visible_studies`;
retrievals check `ensure_patient_record_access` and the centre rule. Every access is audited.
Errors become RFC 9457 problem documents (`hospital.errors_http`).

Instances are returned as stored: each part's Content-Type names its transfer syntax, and a
request for a different transfer syntax is answered 406 (no transcoding).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from flask import Blueprint, Response, current_app, json, request, url_for
from flask.typing import ResponseReturnValue
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.http import parse_options_header

from hospital.access import ensure_patient_record_access
from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.dicom_status import (
    COERCION_OF_DATA_ELEMENTS,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    PROCESSING_FAILURE,
    SOP_CLASS_NOT_SUPPORTED,
)
from hospital.errors import InvalidInput, NotAcceptable, NotFound, UnprocessableEntity, UnsupportedMediaType
from hospital.models import Role, User
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
from imaging_orders.archive.reconciliation import ensure_study_visible, visible_studies

logger = logging.getLogger(__name__)

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
STOW_ROLES = (Role.IMAGING_STAFF, Role.ADMIN)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_MAX_BOUNDARY = 70  # RFC 2046
_CHUNK = 1 << 20
# Extra attributes `includefield=all` adds, per level, read from a stored header.
_ALL_FIELDS = {
    "study": ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID", "InstitutionName"),
    "series": ("SeriesDate", "SeriesTime", "PerformedProcedureStepStartDate", "ProtocolName"),
    "instance": ("Rows", "Columns", "BitsAllocated", "NumberOfFrames", "PhotometricInterpretation", "ImageType"),
}


# ---------------------------------------------------------------------------------------------
# STOW-RS
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BodyPart:
    headers: dict[str, str]
    content: memoryview


def parse_multipart_related(body: bytes, content_type: str) -> list[BodyPart]:
    """Split a `multipart/related; type="application/dicom"` body into its parts (RFC 2046/2387).

    The parts are views into `body`, so the body is held once however many parts it has.
    """
    mimetype, params = parse_options_header(content_type or "")
    if mimetype.lower() != "multipart/related":
        raise UnsupportedMediaType(f'STOW-RS takes multipart/related; type="application/dicom", not {mimetype!r}')
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(f"only application/dicom parts are accepted, not {part_type!r}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        raise InvalidInput("the multipart Content-Type needs a boundary of 1 to 70 characters")
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    position = body.find(delimiter)
    if position < 0 or (position > 0 and body[position - 2 : position] != b"\r\n"):
        raise InvalidInput("the body does not contain the multipart boundary")
    parts: list[BodyPart] = []
    position += len(delimiter)
    while True:
        if body[position : position + 2] == b"--":
            return parts  # close delimiter; the epilogue is ignored
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise InvalidInput("malformed multipart boundary line")
        headers_end = body.find(b"\r\n\r\n", line_end)
        if headers_end < 0:
            raise InvalidInput(f"multipart part {len(parts) + 1} has no end of headers")
        headers = _part_headers(body[line_end + 2 : headers_end])
        start = headers_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidInput(f"multipart part {len(parts) + 1} is not terminated by the boundary")
        parts.append(BodyPart(headers, view[start:end]))
        position = end + 2 + len(delimiter)


def _part_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


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
            calling_ae=f"STOW-RS:{user.id}",
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
    if result.superseded:
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
        response.RetrieveURL = _study_url(path_study_uid or next(iter(study_uids)))
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
    return url_for("dicomweb.retrieve_instance", study_uid=outcome.study_instance_uid, series_uid=row[0],
                   instance_uid=outcome.sop_instance_uid, _external=True)


# ---------------------------------------------------------------------------------------------
# QIDO-RS
# ---------------------------------------------------------------------------------------------


@dataclass
class _SearchRequest:
    criteria: StudyCriteria
    limit: int
    offset: int
    include: list[str]
    include_all: bool
    ignored: list[str]


def _search_request(level: str) -> _SearchRequest:
    criteria = StudyCriteria()
    limit, offset, include, include_all, ignored = DEFAULT_LIMIT, 0, [], False, []
    for name, values in request.args.lists():
        if name == "limit":
            limit = _non_negative_int(name, values[-1])
            limit = min(limit, MAX_LIMIT) if limit else DEFAULT_LIMIT
        elif name == "offset":
            offset = _non_negative_int(name, values[-1])
        elif name == "includefield":
            for value in values:
                for field in value.split(","):
                    if field.strip() == "all":
                        include_all = True
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
    if include_all:
        include.extend(_ALL_FIELDS[level])
    return _SearchRequest(criteria, limit, offset, include, include_all, ignored)


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
    studies = search_studies(session, search.criteria, visible_studies(user), limit=search.limit, offset=search.offset)
    counts = study_counts(session, [s.id for s in studies])
    storage_dir = _storage_dir()
    results = []
    for study in studies:
        ds = study_attributes(study, counts.get(study.id, StudyCounts(0, 0, ())))
        ds.RetrieveURL = _study_url(study.study_instance_uid)
        if search.include:
            rep = representative_instance(session, study_id=study.id)
            add_from_file(ds, stored_path(storage_dir, rep) if rep else None, search.include)
        results.append(ds)
    return _search_response(session, user, "studies", results, search)


@bp.get("/studies/<study_uid>/series")
@require_roles()
def search_for_series(study_uid: str) -> ResponseReturnValue:
    user, session = current_user(), request_session()
    search = _search_request("series")
    search.criteria.study_uids = [study_uid]
    found = search_series(session, search.criteria, visible_studies(user), limit=search.limit, offset=search.offset)
    counts = series_instance_counts(session, [s.id for s in found])
    storage_dir = _storage_dir()
    results = []
    for series in found:
        ds = series_attributes(series, counts.get(series.id, 0))
        ds.RetrieveURL = _series_url(study_uid, series.series_instance_uid)
        if search.include:
            rep = representative_instance(session, series_id=series.id)
            add_from_file(ds, stored_path(storage_dir, rep) if rep else None, search.include)
        results.append(ds)
    return _search_response(session, user, "series", results, search)


@bp.get("/studies/<study_uid>/instances")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances")
@require_roles()
def search_for_instances(study_uid: str, series_uid: str | None = None) -> ResponseReturnValue:
    user, session = current_user(), request_session()
    search = _search_request("instance")
    search.criteria.study_uids = [study_uid]
    if series_uid is not None:
        search.criteria.series_uids = [series_uid]
    found = search_instances(session, search.criteria, visible_studies(user), limit=search.limit, offset=search.offset)
    storage_dir = _storage_dir()
    results = []
    for instance in found:
        ds = instance_attributes(instance)
        ds.RetrieveURL = _instance_url(instance)
        if search.include:
            add_from_file(ds, stored_path(storage_dir, instance), search.include)
        results.append(ds)
    return _search_response(session, user, "instances", results, search)


def _search_response(session: Session, user: User, what: str, results: list[Dataset], search: _SearchRequest) -> Response:
    record_access(session, user, "E", "ImagingStudy", None, description=f"QIDO-RS {what} ({len(results)})")
    response = Response(json.dumps([ds.to_json_dict() for ds in results]), status=200, mimetype=DICOM_JSON)
    if search.ignored:
        # PS3.18 8.3.4.4: unsupported matching keys are ignored and the client is told.
        response.headers["Warning"] = f'299 {request.host} "Matching is not supported on: {", ".join(search.ignored)[:200]}"'
    return response


# ---------------------------------------------------------------------------------------------
# WADO-RS
# ---------------------------------------------------------------------------------------------


def _instances_to_retrieve(
    session: Session, user: User, study_uid: str, series_uid: str | None = None, instance_uid: str | None = None
) -> tuple[ImagingStudy, list[ImagingInstance]]:
    study = session.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid))
    if study is None:
        raise NotFound(f"study {study_uid[:64]} does not exist")
    ensure_patient_record_access(session, user, study.patient_id, "ImagingStudy", study.id)
    ensure_study_visible(session, user, study)
    statement = (
        select(ImagingInstance)
        .join(ImagingSeries, ImagingInstance.series_id == ImagingSeries.id)
        .where(ImagingSeries.study_id == study.id)
        .order_by(ImagingSeries.number, ImagingSeries.id, ImagingInstance.number, ImagingInstance.id)
    )
    if series_uid is not None:
        statement = statement.where(ImagingSeries.series_instance_uid == series_uid)
    if instance_uid is not None:
        statement = statement.where(ImagingInstance.sop_instance_uid == instance_uid)
    instances = list(session.scalars(statement))
    if not instances:
        raise NotFound("no such series or instance in this study")
    return study, instances


@bp.get("/studies/<study_uid>")
@bp.get("/studies/<study_uid>/series/<series_uid>")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances/<instance_uid>")
@require_roles()
def retrieve_instance(study_uid: str, series_uid: str | None = None, instance_uid: str | None = None) -> ResponseReturnValue:
    user, session = current_user(), request_session()
    study, instances = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    _check_dicom_accept(request.headers.get("Accept", ""), {i.transfer_syntax_uid for i in instances})
    storage_dir = _storage_dir()
    files = [(stored_path(storage_dir, i), i.transfer_syntax_uid) for i in instances]
    missing = [path.name for path, _ in files if not path.is_file()]
    if missing:
        logger.error("WADO-RS: %d indexed files missing, e.g. %s", len(missing), missing[0])
        raise StorageUnavailable("some images of this request are not readable now", PROCESSING_FAILURE)
    record_access(session, user, "R", "ImagingStudy", study.id, patient_id=study.patient_id,
                  description=f"WADO-RS {len(files)} instances")
    boundary = secrets.token_hex(16)
    response = Response(_multipart_stream(files, boundary), status=200, direct_passthrough=True)
    response.headers["Content-Type"] = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return response


def _check_dicom_accept(accept: str, stored_syntaxes: set[str]) -> None:
    """406 unless the Accept header admits application/dicom parts in the stored syntaxes."""
    if not accept.strip():
        return
    for media_range in accept.split(","):
        mimetype, params = parse_options_header(media_range)
        mimetype = mimetype.lower()
        if mimetype in ("*/*", "multipart/*"):
            return
        if mimetype == "multipart/related" and params.get("type", "application/dicom").lower() == "application/dicom":
            syntax = params.get("transfer-syntax", "*")
            if syntax == "*" or stored_syntaxes == {syntax}:
                return
    raise NotAcceptable(
        'instances are served as multipart/related; type="application/dicom" in their stored transfer syntax '
        f"({', '.join(sorted(stored_syntaxes))}); use transfer-syntax=*"
    )


def _multipart_stream(files: list[tuple[Path, str]], boundary: str) -> Iterator[bytes]:
    for path, syntax in files:
        yield (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={syntax}\r\n"
               f"Content-Length: {path.stat().st_size}\r\n\r\n").encode("ascii")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


@bp.get("/studies/<study_uid>/metadata")
@bp.get("/studies/<study_uid>/series/<series_uid>/metadata")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances/<instance_uid>/metadata")
@require_roles()
def retrieve_metadata(study_uid: str, series_uid: str | None = None, instance_uid: str | None = None) -> ResponseReturnValue:
    user, session = current_user(), request_session()
    study, instances = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    storage_dir = _storage_dir()
    documents = []
    for instance in instances:
        try:
            header = pydicom.dcmread(stored_path(storage_dir, instance), stop_before_pixels=True)
        except OSError as exc:
            raise StorageUnavailable("an image of this request is not readable now", PROCESSING_FAILURE) from exc
        document = header.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _e, i=instance: _instance_url(i))
        if instance.sop_class_uid and "00080016" not in document:
            document["00080016"] = {"vr": "UI", "Value": [instance.sop_class_uid]}
        documents.append(document)
    record_access(session, user, "R", "ImagingStudy", study.id, patient_id=study.patient_id,
                  description=f"WADO-RS metadata {len(documents)} instances")
    return Response(json.dumps(documents), status=200, mimetype=DICOM_JSON)


@bp.get("/studies/<study_uid>/series/<series_uid>/instances/<instance_uid>/rendered")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances/<instance_uid>/frames/<int:frame>/rendered")
@require_roles()
def retrieve_rendered(study_uid: str, series_uid: str, instance_uid: str, frame: int = 1) -> ResponseReturnValue:
    user, session = current_user(), request_session()
    mimetype = request.accept_mimetypes.best_match(["image/jpeg", "image/png"]) if request.headers.get("Accept") else "image/jpeg"
    if mimetype is None:
        raise NotAcceptable("rendered images are image/jpeg or image/png")
    window = _window_parameter(request.args.get("window"))
    quality = _quality_parameter(request.args.get("quality"))
    study, instances = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    path = stored_path(_storage_dir(), instances[0])
    try:
        ds = pydicom.dcmread(path)
    except OSError as exc:
        raise StorageUnavailable("the image is not readable now", PROCESSING_FAILURE) from exc
    image = render_frame(ds, frame, window)
    record_access(session, user, "R", "ImagingStudy", study.id, patient_id=study.patient_id,
                  description=f"WADO-RS rendered frame {frame}")
    buffer = BytesIO()
    if mimetype == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buffer, format="JPEG", quality=quality)
    return Response(buffer.getvalue(), status=200, mimetype=mimetype)


def _window_parameter(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    pieces = value.split(",")
    try:
        center, width = float(pieces[0]), float(pieces[1])
    except (ValueError, IndexError) as exc:
        raise InvalidInput(f"window is 'center,width[,function]', got {value[:40]!r}") from exc
    if width <= 0:
        raise InvalidInput("window width must be positive")
    return center, width


def _quality_parameter(value: str | None) -> int:
    if not value:
        return 90
    try:
        quality = int(value)
    except ValueError as exc:
        raise InvalidInput(f"quality is 1..100, got {value[:20]!r}") from exc
    if not 1 <= quality <= 100:
        raise InvalidInput(f"quality is 1..100, got {quality}")
    return quality


def render_frame(ds: Dataset, frame: int, window: tuple[float, float] | None) -> Image.Image:
    """One frame as an 8-bit image: modality LUT, then the requested, stored or full-range window."""
    if "PixelData" not in ds:
        raise UnprocessableEntity("this instance has no pixel data to render")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise NotFound(f"frame {frame} does not exist; the instance has {frames}")
    try:
        pixels = ds.pixel_array
    except (ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError) as exc:
        raise UnprocessableEntity(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc
    if frames > 1:
        pixels = pixels[frame - 1]
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    center, width = window or _stored_window(ds) or _full_range(values)
    low = center - width / 2
    scaled = np.clip((values - low) / width * 255.0, 0, 255)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        scaled = 255.0 - scaled
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def _stored_window(ds: Dataset) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError):
        return None
    return (c, w) if w > 0 else None


def _full_range(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0)


# ---------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------


def _storage_dir() -> Path:
    return Path(current_app.config["DICOM_STORAGE_DIR"])


def _study_url(study_uid: str) -> str:
    return url_for("dicomweb.retrieve_instance", study_uid=study_uid, _external=True)


def _series_url(study_uid: str, series_uid: str) -> str:
    return url_for("dicomweb.retrieve_instance", study_uid=study_uid, series_uid=series_uid, _external=True)


def _instance_url(instance: ImagingInstance) -> str:
    return url_for(
        "dicomweb.retrieve_instance", study_uid=instance.series.study.study_instance_uid,
        series_uid=instance.series.series_instance_uid, instance_uid=instance.sop_instance_uid, _external=True,
    )


def _dicom_json(ds: Dataset, status: int) -> Response:
    return Response(json.dumps(ds.to_json_dict()), status=status, mimetype=DICOM_JSON)

