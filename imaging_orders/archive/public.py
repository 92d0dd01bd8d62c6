"""The archive's public face: what later stages may use of it, and nothing else.

Reads come back as frozen summaries (never the archive's ORM rows), with file paths made absolute
under the storage directory the caller names. Writes go through the archive's own functions: a
stage that makes instances from a study (the AI's SR and key images) stores them with
`store_instance` and withdraws the ones it replaced with `withdraw_derived_instances`, so the archive
stays the only writer of its tables and files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from hospital.db import get_db
from imaging_orders.archive.events import StudyCompleted
from imaging_orders.archive.ingest import StoreResult, store_instance
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, StudyStatus
from imaging_orders.archive.retention import register as register_retention
from imaging_orders.archive.retention import storage_by_centre

logger = logging.getLogger(__name__)

__all__ = [
    "STUDY_CENTRES",
    "SeriesFiles",
    "StoreResult",
    "StoredInstance",
    "StudyCompleted",
    "StudyRef",
    "instance_paths",
    "register_retention",
    "storage_by_centre",
    "store_instance",
    "study_ref",
    "studies_of_referral",
    "study_series",
    "withdraw_derived_instances",
]


@dataclass(frozen=True)
class StudyRef:
    """Who a study belongs to and where it came from."""

    study_id: int
    study_instance_uid: str
    accession_number: str | None
    patient_id: int | None
    referral_id: int | None
    organization_id: int | None
    complete: bool
    received_at: datetime | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    number: int | None
    path: Path


@dataclass(frozen=True)
class SeriesFiles:
    series_instance_uid: str
    modality: str
    number: int | None
    body_part: str | None
    instances: tuple[StoredInstance, ...]


# The read model a later stage joins in SQL when it counts by centre (the AI's drift monitor): one
# row per study, the centre (organization) that performed it; null while the study is unmatched.
STUDY_CENTRES = select(
    ImagingStudy.id.label("study_id"),
    ImagingStudy.organization_id.label("organization_id"),
).subquery("study_centres")


def _ref(study: ImagingStudy) -> StudyRef:
    return StudyRef(
        study_id=study.id, study_instance_uid=study.study_instance_uid, accession_number=study.accession_number,
        patient_id=study.patient_id, referral_id=study.referral_id, organization_id=study.organization_id,
        complete=study.status is StudyStatus.AVAILABLE, received_at=study.received_at, completed_at=study.completed_at,
    )


def study_ref(session: Session, study_id: int) -> StudyRef | None:
    study = session.get(ImagingStudy, study_id)
    return None if study is None else _ref(study)


def studies_of_referral(session: Session, referral_id: int) -> tuple[StudyRef, ...]:
    """The studies matched to the referral (one normally; more only while staff reconcile), first
    received first; merged-away and cancelled studies are left out."""
    studies = session.scalars(
        select(ImagingStudy)
        .where(ImagingStudy.referral_id == referral_id, ImagingStudy.status != StudyStatus.CANCELLED)
        .order_by(ImagingStudy.received_at, ImagingStudy.id)
    ).all()
    return tuple(_ref(study) for study in studies)


def study_series(session: Session, study_id: int, storage_dir: Path) -> tuple[SeriesFiles, ...]:
    """The study's series with their stored instances, in series and instance order."""
    series = session.scalars(
        select(ImagingSeries).where(ImagingSeries.study_id == study_id)
        .options(selectinload(ImagingSeries.instances)).order_by(ImagingSeries.number, ImagingSeries.id)
    ).all()
    found = []
    for s in series:
        # What a rejection note withdrew (IHE IOCM) is not read; a series left empty is not listed.
        live = tuple(
            StoredInstance(i.sop_instance_uid, i.number, storage_dir / i.path) for i in s.instances
            if i.rejection_id is None
        )
        if live or not s.instances:
            found.append(SeriesFiles(series_instance_uid=s.series_instance_uid, modality=s.modality, number=s.number,
                                     body_part=s.body_part, instances=live))
    return tuple(found)


def instance_paths(session: Session, sop_instance_uids: Iterable[str], storage_dir: Path) -> dict[str, Path]:
    """Where each stored instance's file is; UIDs the archive does not hold are left out."""
    wanted = list(dict.fromkeys(sop_instance_uids))
    if not wanted:
        return {}
    rows = session.execute(
        select(ImagingInstance.sop_instance_uid, ImagingInstance.path).where(ImagingInstance.sop_instance_uid.in_(wanted))
    ).all()
    return {uid: storage_dir / path for uid, path in rows}


def withdraw_derived_instances(app: Flask, series_uids: Iterable[str], keep: set[str]) -> int:
    """Remove a stage's earlier derived instances from these series (rows first, then the files
    once the delete has committed), keeping `keep`; a series left empty goes too."""
    storage_dir = Path(app.config["DICOM_STORAGE_DIR"])
    uids = list(series_uids)
    with get_db(app).transaction() as session:
        stale = session.scalars(
            select(ImagingInstance).join(ImagingSeries)
            .where(ImagingSeries.series_instance_uid.in_(uids), ImagingInstance.sop_instance_uid.not_in(keep))
        ).all()
        paths = [storage_dir / instance.path for instance in stale]
        for instance in stale:
            session.delete(instance)
        session.flush()
        for series in session.scalars(select(ImagingSeries).where(ImagingSeries.series_instance_uid.in_(uids))):
            if not session.scalar(select(ImagingInstance.id).where(ImagingInstance.series_id == series.id).limit(1)):
                session.delete(series)
    for path in paths:
        path.unlink(missing_ok=True)
    if paths:
        logger.info("withdrew %d derived instance(s) from series %s", len(paths), uids)
    return len(paths)
