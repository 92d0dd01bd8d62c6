"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered images and thumbnails
of the studies, series and instances of the image index, everything a web viewer loads.

Each request loads its study with `_instances_to_retrieve`: the patient-record check
(`ensure_patient_record_access`) and the centre rule (`ensure_study_visible`), both audited when
they refuse; each answer is audited as a read of the study. The encodings (transfer syntaxes, media
types, frames, bulk data) are worked out in `imaging_orders.archive.dicomweb_media`; rendering in
`imaging_orders.archive.rendering`. Errors become RFC 9457 problem documents (`hospital.errors_http`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path

import pydicom
from flask import Blueprint, Response, current_app, json, request, url_for
from flask.typing import ResponseReturnValue
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.access import ensure_patient_record_access
from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.dicom_status import PROCESSING_FAILURE
from hospital.errors import Gone, NotFound, PayloadTooLarge
from hospital.models import User
from imaging_orders.archive.dicomweb_media import (
    DICOM,
    PIXEL_KEYWORDS,
    BulkDataUrl,
    bulk_element,
    choose_frame_encoding,
    choose_instance_syntax,
    dataset_in_syntax,
    frames_of,
    metadata_json,
    number_of_frames,
    parse_frame_list,
    read_header,
)
from imaging_orders.archive.ingest import StorageUnavailable
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, InstanceRejection
from imaging_orders.archive.query_retrieve import stored_path
from imaging_orders.archive.reconciliation import ensure_study_visible
from imaging_orders.archive.rendering import (
    THUMBNAIL_SIZE,
    encode_image,
    fit_to_viewport,
    quality_parameter,
    render_frame,
    rendered_media_type,
    viewport_parameter,
    window_parameter,
)

logger = logging.getLogger(__name__)

bp = Blueprint("wado_rs", __name__, url_prefix="/dicomweb")

DICOM_JSON = "application/dicom+json"
_CHUNK = 1 << 20
# A study or series rendered is one image per frame; past this the caller asks per series or instance.
MAX_RENDERED_FRAMES = 500

_INSTANCE = "/studies/<study_uid>/series/<series_uid>/instances/<instance_uid>"


def _instances_to_retrieve(
    session: Session, user: User, study_uid: str, series_uid: str | None = None, instance_uid: str | None = None
) -> tuple[ImagingStudy, list[ImagingInstance]]:
    """The study (access checked, refusals audited) and its instances in the path, in order."""
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
    found = list(session.scalars(statement))
    if not found:
        raise NotFound("no such series or instance in this study")
    instances = [i for i in found if i.rejection_id is None]
    if not instances:
        raise _withdrawn(session, found[0])
    return study, instances


def _withdrawn(session: Session, instance: ImagingInstance) -> Gone:
    """410 for what a rejection note withdrew (IHE IOCM), saying which note and when."""
    rejection = session.get(InstanceRejection, instance.rejection_id)
    assert rejection is not None  # foreign key
    return Gone(
        f"withdrawn by a rejection note ({rejection.code_value}, {rejection.coding_scheme}, "
        f"\"{rejection.code_meaning}\") on {rejection.rejected_at:%Y-%m-%d %H:%M} UTC"
    )


def _audit_read(session: Session, user: User, study: ImagingStudy, description: str) -> None:
    record_access(session, user, "R", "ImagingStudy", study.id, patient_id=study.patient_id, description=description)


def _read(path: Path, *, pixels: bool = True) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except OSError as exc:
        logger.error("WADO-RS: stored file %s not readable: %s", path.name, exc)
        raise StorageUnavailable("an image of this request is not readable now", PROCESSING_FAILURE) from exc


# ---------------------------------------------------------------------------------------------
# Instances
# ---------------------------------------------------------------------------------------------


@bp.get("/studies/<study_uid>")
@bp.get("/studies/<study_uid>/series/<series_uid>")
@bp.get(_INSTANCE)
@require_roles()
def retrieve_instance(study_uid: str, series_uid: str | None = None, instance_uid: str | None = None) -> ResponseReturnValue:
    """Part 10 instances; explicit VR little endian unless the Accept asks otherwise (PS3.18 8.7.3.5.2)."""
    user, session = current_user(), request_session()
    study, instances = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    target = choose_instance_syntax(request.headers.get("Accept", ""), {i.transfer_syntax_uid for i in instances})
    storage_dir = _storage_dir()
    files = [(stored_path(storage_dir, i), i.transfer_syntax_uid) for i in instances]
    missing = [path.name for path, _ in files if not path.is_file()]
    if missing:
        logger.error("WADO-RS: %d indexed files missing, e.g. %s", len(missing), missing[0])
        raise StorageUnavailable("some images of this request are not readable now", PROCESSING_FAILURE)
    _audit_read(session, user, study, f"WADO-RS {len(files)} instances")
    boundary = secrets.token_hex(16)
    return _multipart(_instance_parts(files, target, boundary), DICOM, boundary)


def _instance_parts(files: list[tuple[Path, str]], target: str | None, boundary: str) -> Iterator[bytes]:
    for path, stored in files:
        if target is None or target == stored:
            yield _part_header(boundary, f"{DICOM}; transfer-syntax={stored}", path.stat().st_size)
            with path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk
        else:
            try:
                ds = dataset_in_syntax(pydicom.dcmread(path), target)
                buffer = BytesIO()
                pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            except Exception:
                # The status line is sent: ending without the close delimiter tells the client
                # the message is incomplete (can_transcode was checked for every stored syntax).
                logger.exception("WADO-RS: %s could not be sent in %s; response cut short", path.name, target)
                return
            yield _part_header(boundary, f"{DICOM}; transfer-syntax={target}", buffer.tell())
            yield buffer.getvalue()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _part_header(boundary: str, content_type: str, length: int) -> bytes:
    return f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n".encode("ascii")


def _multipart(parts: Iterable[bytes], part_type: str, boundary: str) -> Response:
    response = Response(parts, status=200, direct_passthrough=True)
    response.headers["Content-Type"] = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return response


def _multipart_of(bodies: list[bytes], content_type: str) -> Response:
    boundary = secrets.token_hex(16)
    chunks = [piece for body in bodies for piece in (_part_header(boundary, content_type, len(body)), body, b"\r\n")]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return _multipart(chunks, content_type.split(";")[0], boundary)


# ---------------------------------------------------------------------------------------------
# Metadata, frames, bulk data
# ---------------------------------------------------------------------------------------------


@bp.get("/studies/<study_uid>/metadata")
@bp.get("/studies/<study_uid>/series/<series_uid>/metadata")
@bp.get(f"{_INSTANCE}/metadata")
@require_roles()
def retrieve_metadata(study_uid: str, series_uid: str | None = None, instance_uid: str | None = None) -> ResponseReturnValue:
    """DICOM JSON of each instance; pixel data and other large binary values as BulkDataURIs."""
    user, session = current_user(), request_session()
    study, instances = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    storage_dir = _storage_dir()
    documents = []
    for instance in instances:
        try:
            header, pixels = read_header(stored_path(storage_dir, instance))
        except OSError as exc:
            raise StorageUnavailable("an image of this request is not readable now", PROCESSING_FAILURE) from exc
        document = metadata_json(header, pixels, _bulk_url_of(instance_url(instance)))
        if instance.sop_class_uid and "00080016" not in document:
            document["00080016"] = {"vr": "UI", "Value": [instance.sop_class_uid]}
        documents.append(document)
    _audit_read(session, user, study, f"WADO-RS metadata {len(documents)} instances")
    return Response(json.dumps(documents), status=200, mimetype=DICOM_JSON)


def _bulk_url_of(base: str) -> BulkDataUrl:
    def bulk_url(path: str) -> str:
        return f"{base}/bulkdata/{path}"

    return bulk_url


@bp.get(f"{_INSTANCE}/frames/<frame_list>")
@require_roles()
def retrieve_frames(study_uid: str, series_uid: str, instance_uid: str, frame_list: str) -> ResponseReturnValue:
    """Frames by 1-based number, uncompressed unless a compressed media type is asked (PS3.18 10.4.1.1.5)."""
    numbers = parse_frame_list(frame_list)
    user, session = current_user(), request_session()
    study, [instance] = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    ds = _read(stored_path(_storage_dir(), instance))
    encoding = choose_frame_encoding(request.headers.get("Accept", ""), str(ds.file_meta.TransferSyntaxUID))
    frames = frames_of(ds, numbers, encoding)
    _audit_read(session, user, study, f"WADO-RS frames {frame_list[:60]} of 1 instance")
    return _multipart_of(frames, encoding.content_type)


@bp.get(f"{_INSTANCE}/bulkdata/<path:element_path>")
@require_roles()
def retrieve_bulkdata(study_uid: str, series_uid: str, instance_uid: str, element_path: str) -> ResponseReturnValue:
    """A value the metadata names by BulkDataURI. Pixel data is negotiated like frames: one part
    when uncompressed, one part per frame when compressed."""
    user, session = current_user(), request_session()
    study, [instance] = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    ds = _read(stored_path(_storage_dir(), instance))
    element = bulk_element(ds, element_path)
    if element.tag == 0x7FE00010 and element_path.strip("/").upper() == "7FE00010":
        encoding = choose_frame_encoding(request.headers.get("Accept", ""), str(ds.file_meta.TransferSyntaxUID))
        frames = frames_of(ds, list(range(1, number_of_frames(ds) + 1)), encoding)
        bodies = [b"".join(frames)] if encoding.native else frames
    else:
        # Other bulk data is sent as read: little endian, as every stored syntax we answer in.
        encoding = choose_frame_encoding(request.headers.get("Accept", ""), "1.2.840.10008.1.2.1")
        bodies = [bytes(element.value)]
    _audit_read(session, user, study, f"WADO-RS bulkdata {element_path[:60]} of 1 instance")
    return _multipart_of(bodies, encoding.content_type if element.tag in PIXEL_KEYWORDS else "application/octet-stream")


# ---------------------------------------------------------------------------------------------
# Rendered and thumbnails
# ---------------------------------------------------------------------------------------------


@bp.get("/studies/<study_uid>/rendered")
@bp.get("/studies/<study_uid>/series/<series_uid>/rendered")
@require_roles()
def retrieve_rendered_many(study_uid: str, series_uid: str | None = None) -> ResponseReturnValue:
    """Every frame of every instance of a study or series, rendered, one part each (PS3.18 10.4.1.1.3)."""
    media_type = rendered_media_type(request.headers.get("Accept", ""))
    window, quality = window_parameter(request.args.get("window")), quality_parameter(request.args.get("quality"))
    viewport = viewport_parameter(request.args.get("viewport"))
    user, session = current_user(), request_session()
    study, instances = _instances_to_retrieve(session, user, study_uid, series_uid)
    storage_dir = _storage_dir()
    images: list[bytes] = []
    for instance in instances:
        ds = _read(stored_path(storage_dir, instance))
        if "PixelData" not in ds:
            continue  # an SR or a KOS has nothing to render
        for frame in range(1, number_of_frames(ds) + 1):
            if len(images) >= MAX_RENDERED_FRAMES:
                raise PayloadTooLarge(f"more than {MAX_RENDERED_FRAMES} frames to render; ask per series or instance")
            image = fit_to_viewport(render_frame(ds, frame, window), viewport)
            images.append(encode_image(image, media_type, quality))
    if not images:
        raise NotFound("nothing here has pixel data to render")
    _audit_read(session, user, study, f"WADO-RS rendered {len(images)} frames")
    return _multipart_of(images, media_type)


@bp.get(f"{_INSTANCE}/rendered")
@bp.get(f"{_INSTANCE}/frames/<int:frame>/rendered")
@require_roles()
def retrieve_rendered(study_uid: str, series_uid: str, instance_uid: str, frame: int = 1) -> ResponseReturnValue:
    media_type = rendered_media_type(request.headers.get("Accept", ""))
    window, quality = window_parameter(request.args.get("window")), quality_parameter(request.args.get("quality"))
    viewport = viewport_parameter(request.args.get("viewport"))
    user, session = current_user(), request_session()
    study, instances = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    ds = _read(stored_path(_storage_dir(), instances[0]))
    image = fit_to_viewport(render_frame(ds, frame, window), viewport)
    _audit_read(session, user, study, f"WADO-RS rendered frame {frame}")
    return Response(encode_image(image, media_type, quality), status=200, mimetype=media_type)


@bp.get("/studies/<study_uid>/thumbnail")
@bp.get("/studies/<study_uid>/series/<series_uid>/thumbnail")
@bp.get(f"{_INSTANCE}/thumbnail")
@bp.get(f"{_INSTANCE}/frames/<int:frame>/thumbnail")
@require_roles()
def retrieve_thumbnail(study_uid: str, series_uid: str | None = None, instance_uid: str | None = None,
                       frame: int | None = None) -> ResponseReturnValue:
    """One representative image (PS3.18 10.4.1.1.4): the middle frame of the middle image of the
    first series with pixel data, or of the series, instance or frame in the path."""
    media_type = rendered_media_type(request.headers.get("Accept", ""))
    viewport = viewport_parameter(request.args.get("viewport"))
    user, session = current_user(), request_session()
    study, instances = _instances_to_retrieve(session, user, study_uid, series_uid, instance_uid)
    storage_dir = _storage_dir()
    by_series: dict[int, list[ImagingInstance]] = {}
    for instance in instances:
        by_series.setdefault(instance.series_id, []).append(instance)
    ds = None
    for candidates in by_series.values():
        candidate = _read(stored_path(storage_dir, candidates[len(candidates) // 2]))
        if "PixelData" in candidate:
            ds = candidate
            break
    if ds is None:
        raise NotFound("nothing here has pixel data for a thumbnail")
    number = frame if frame is not None else number_of_frames(ds) // 2 + 1
    image = render_frame(ds, number, None)
    image = fit_to_viewport(image, viewport) if viewport else fit_to_viewport(image, THUMBNAIL_SIZE, enlarge=False)
    _audit_read(session, user, study, "WADO-RS thumbnail")
    return Response(encode_image(image, media_type, 85), status=200, mimetype=media_type)


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------


def _storage_dir() -> Path:
    return Path(current_app.config["DICOM_STORAGE_DIR"])


def study_url(study_uid: str) -> str:
    return url_for("wado_rs.retrieve_instance", study_uid=study_uid, _external=True)


def series_url(study_uid: str, series_uid: str) -> str:
    return url_for("wado_rs.retrieve_instance", study_uid=study_uid, series_uid=series_uid, _external=True)


def instance_url(instance: ImagingInstance) -> str:
    return instance_url_of(instance.series.study.study_instance_uid, instance.series.series_instance_uid,
                           instance.sop_instance_uid)


def instance_url_of(study_uid: str, series_uid: str, instance_uid: str) -> str:
    return url_for("wado_rs.retrieve_instance", study_uid=study_uid, series_uid=series_uid,
                   instance_uid=instance_uid, _external=True)

