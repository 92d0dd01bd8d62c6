"""STOW-RS into the research database: a contributor's DICOMweb client (dicomweb-client, a PACS's
forwarder) stores one study at `POST /api/research/dicomweb/studies`, the same upload as the page and
`POST /api/research/contributions` (`research.uploads.contribute_upload`): checked whole,
de-identified on arrival, the originals never written.

What STOW-RS itself has no field for travels beside it:

- the consent reference (where the institution recorded the patient's consent), in the request
  header `Research-Consent-Reference` (or the query parameter `consent_reference`);
- the labels, optionally, as one `application/json` part of the multipart body (the same JSON
  list the upload API takes); every other part is `application/dicom`.

The answer is a PS3.18 store response in DICOM JSON, naming the instances as the sender sent them:
each kept one in ReferencedSOPSequence (no RetrieveURL: the research store is not served back),
each image kept out of research (burned-in text, not an image) in FailedSOPSequence with
0x0110 (processing failure); 200 when all were kept, 202 when some were kept out. An upload that
cannot be taken at all (no consent reference, a file that is not DICOM, two studies, a label on no
image of it, sent before) is refused whole with an HTTP problem that says why, and nothing is kept.
"""

from __future__ import annotations

import json
import logging
from io import BytesIO
from typing import Any

import pydicom
from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from werkzeug.http import parse_options_header

from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.dicom_status import PROCESSING_FAILURE
from hospital.errors import InvalidInput, UnsupportedMediaType
from hospital.models import Role
from hospital.multipart import BodyPart, parse_multipart_related
from research.storage import research_dir, research_secret
from research.uploads import UploadedFile, contribute_upload, instance_outcomes

logger = logging.getLogger(__name__)

bp = Blueprint("research_dicomweb", __name__, url_prefix="/api/research/dicomweb")

CONSENT_HEADER = "Research-Consent-Reference"
DICOM_JSON = "application/dicom+json"


@bp.post("/studies")
@require_roles(Role.CONTRIBUTOR)
def stow_contribution() -> ResponseReturnValue:
    parts = parse_multipart_related(request.get_data(cache=False), request.headers.get("Content-Type", ""))
    files, labels = _files_and_labels(parts)
    consent = request.headers.get(CONSENT_HEADER) or request.args.get("consent_reference", "")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    session = request_session()
    contribution = contribute_upload(session, current_user(), files, labels, consent_reference=consent,
                                     research_dir=research_dir(app), secret=research_secret(app))
    outcomes = instance_outcomes(session, contribution.id)
    response = Dataset()
    kept, kept_out = [], []
    for sop_class_uid, sop_instance_uid in (_uids(f.data) for f in files):
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        if outcomes.get(sop_instance_uid) is None:
            kept.append(item)
        else:
            item.FailureReason = PROCESSING_FAILURE
            kept_out.append(item)
    if kept:
        response.ReferencedSOPSequence = DicomSequence(kept)
    if kept_out:
        response.FailedSOPSequence = DicomSequence(kept_out)
    logger.info("research STOW-RS by user %s: contribution %s, %d kept, %d kept out", current_user().id,
                contribution.id, len(kept), len(kept_out))
    answer = Response(json.dumps(response.to_json_dict()), status=202 if kept_out else 200, mimetype=DICOM_JSON)
    answer.headers["Content-Location"] = f"/api/research/contributions?id={contribution.id}"
    return answer


def _files_and_labels(parts: list[BodyPart]) -> tuple[list[UploadedFile], Any]:
    if not parts:
        raise InvalidInput("the multipart body has no parts")
    files: list[UploadedFile] = []
    labels: Any = []
    seen_labels = False
    for number, part in enumerate(parts, 1):
        mimetype, _params = parse_options_header(part.headers.get("content-type", "application/dicom"))
        if mimetype.lower() == "application/dicom":
            files.append(UploadedFile(f"part {number}", bytes(part.content)))
        elif mimetype.lower() == "application/json":
            if seen_labels:
                raise InvalidInput("send the labels as one application/json part, not several")
            try:
                labels = json.loads(bytes(part.content))
            except (UnicodeDecodeError, ValueError) as exc:
                raise InvalidInput(f"part {number}: the labels are not valid JSON ({exc})") from exc
            seen_labels = True
        else:
            raise UnsupportedMediaType(f"part {number} is {mimetype!r}: send application/dicom parts and at most "
                                       "one application/json part with the labels")
    return files, labels


def _uids(data: bytes) -> tuple[str, str]:
    """The SOP class and instance UIDs of a file as its sender wrote them (it was read whole before)."""
    header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
    return str(header.get("SOPClassUID", "")), str(header.get("SOPInstanceUID", ""))
