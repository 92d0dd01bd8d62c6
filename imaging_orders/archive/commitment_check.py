"""Which instances of a Storage Commitment request the archive keeps whole
(`imaging_orders.archive.storage_commitment` records the request and reports the answer).

An instance is committed only if the index holds it in a study the calling AE may see (the rule of
query/retrieve, `studies_visible_to_ae`), under the SOP Class the request names, and the file of its
current version has the size and SHA-256 recorded when it was received. Otherwise it is failed
with its FailureReason (PS3.3 C.14.1.1): 0112 no such object instance (also another centre's
instance, so a peer cannot tell it from one never received), 0119 class / instance conflict, 0110
processing failure (the file is missing or no longer what was received).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.db import get_db
from hospital.dicom_status import CLASS_INSTANCE_CONFLICT, NO_SUCH_SOP_INSTANCE, PROCESSING_FAILURE
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy
from imaging_orders.archive.query_retrieve import studies_visible_to_ae

logger = logging.getLogger(__name__)

_QUERY_CHUNK = 500


@dataclass(frozen=True)
class _Held:
    sop_class_uid: str
    path: str
    size_bytes: int
    sha256: str


def check_instances(
    app: Flask, sops: list[tuple[str, str]], calling_ae: str,
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, int]]]:
    """Committed (class, instance, the SHA-256 found) and failed (class, instance, FailureReason)."""
    storage_dir = Path(app.config["DICOM_STORAGE_DIR"])
    visible = studies_visible_to_ae(app, calling_ae)
    held: dict[str, _Held] = {}
    with app.app_context(), get_db(app).transaction() as session:
        for chunk in chunks(list(dict.fromkeys(i for _, i in sops)), _QUERY_CHUNK):
            statement = (
                select(ImagingInstance.sop_instance_uid, ImagingInstance.sop_class_uid, ImagingInstance.path,
                       ImagingInstance.size_bytes, ImagingInstance.sha256)
                .join(ImagingSeries, ImagingInstance.series_id == ImagingSeries.id)
                .join(ImagingStudy, ImagingSeries.study_id == ImagingStudy.id)
                .where(ImagingInstance.sop_instance_uid.in_(chunk))
            )
            if visible is not None:
                statement = statement.where(visible)
            for uid, sop_class, path, size, sha256 in session.execute(statement):
                held[uid] = _Held(sop_class, path, size, sha256)
    committed: list[tuple[str, str, str]] = []
    failed: list[tuple[str, str, int]] = []
    whole: dict[str, bool] = {}
    for sop_class, uid in sops:
        found = held.get(uid)
        if found is None:
            failed.append((sop_class, uid, NO_SUCH_SOP_INSTANCE))
        elif found.sop_class_uid != sop_class:
            failed.append((sop_class, uid, CLASS_INSTANCE_CONFLICT))
        elif not whole.setdefault(uid, _file_is_whole(storage_dir / found.path, found, uid)):
            failed.append((sop_class, uid, PROCESSING_FAILURE))
        else:
            committed.append((sop_class, uid, found.sha256))
    return committed, failed


def _file_is_whole(path: Path, held: _Held, uid: str) -> bool:
    """Whether the stored file is the one received: its size, then its SHA-256."""
    try:
        whole = path.stat().st_size == held.size_bytes
        if whole:
            with path.open("rb") as stream:
                whole = hashlib.file_digest(stream, "sha256").hexdigest() == held.sha256
    except OSError as exc:
        logger.error("stored file of instance %s unreadable: %s", uid, exc.strerror or type(exc).__name__)
        return False
    if not whole:
        # The index promised this instance is kept; its file says otherwise. Someone must look.
        logger.error("stored file of instance %s does not match the size and SHA-256 recorded at receipt", uid)
    return whole


def unchanged_since_checked(
    session: Session, committed: list[tuple[str, str, str]], failed: list[tuple[str, str, int]],
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, int]]]:
    """An instance re-sent as a new version while its file was being hashed is not committed on
    the strength of the old file: failed (0110), so the requester asks again later."""
    current: dict[str, str] = {}
    for chunk in chunks(list(dict.fromkeys(i for _, i, _ in committed)), _QUERY_CHUNK):
        rows = session.execute(
            select(ImagingInstance.sop_instance_uid, ImagingInstance.sha256).where(ImagingInstance.sop_instance_uid.in_(chunk))
        )
        current.update({uid: sha256 for uid, sha256 in rows})
    still = [c for c in committed if current.get(c[1]) == c[2]]
    changed = [(c, i, PROCESSING_FAILURE) for c, i, sha in committed if current.get(i) != sha]
    return still, failed + changed


def chunks(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]
