"""The archive's part of retention (`hospital.retention`): the `images` and `ai_outputs` classes,
and the storage each centre's studies take.

A study past its period loses its instances, not its record: the instances of its acquired series
(`images`) or of the series the platform derived from it (`ai_outputs`: the AI's SR and key
images), with every earlier version of each, go; the study row stays, since reports, orders and
charges refer to it. A study is past its period when its last instance arrived before the cutoff.
A study whose patient or Study Instance UID is on legal hold is skipped and listed as kept.
Rows are deleted in the caller's unit of work; the files only once it has committed, so a rolled-back
run leaves every file in place (a file left behind by a crash after the commit is unreferenced and
harmless).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from flask import Flask
from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.models import Organization
from hospital.retention import (
    DataClass,
    Holds,
    StorageUsage,
    register_retention_class,
    register_storage_usage,
)
from imaging_orders.archive.models import ImagingInstance, ImagingInstanceVersion, ImagingSeries, ImagingStudy

logger = logging.getLogger(__name__)

_UNLINK_KEY = "imaging_orders.archive.retention.unlink"


def expire_images(app: Flask, session: Session, cutoff: datetime, holds: Holds,
                  dry_run: bool) -> tuple[list[str], list[str], int]:
    return _expire(app, session, cutoff, holds, dry_run, derived=False)


def expire_ai_outputs(app: Flask, session: Session, cutoff: datetime, holds: Holds,
                      dry_run: bool) -> tuple[list[str], list[str], int]:
    return _expire(app, session, cutoff, holds, dry_run, derived=True)


def _expire(app: Flask, session: Session, cutoff: datetime, holds: Holds, dry_run: bool,
            *, derived: bool) -> tuple[list[str], list[str], int]:
    kind = "derived AI output" if derived else "image"
    storage_dir = Path(app.config["DICOM_STORAGE_DIR"])
    studies = session.scalars(
        select(ImagingStudy).where(ImagingStudy.last_instance_at < cutoff, ImagingStudy.id.in_(
            select(ImagingSeries.study_id).join(ImagingInstance).where(ImagingSeries.derived.is_(derived))))
        .order_by(ImagingStudy.id)
    ).all()
    deleted: list[str] = []
    kept: list[str] = []
    freed = 0
    for study in studies:
        label = f"study {study.study_instance_uid} ({study.id})"
        if holds.holds(study.patient_id, study.study_instance_uid):
            kept.append(label)
            continue
        series_ids = list(session.scalars(select(ImagingSeries.id).where(
            ImagingSeries.study_id == study.id, ImagingSeries.derived.is_(derived))))
        instances = session.execute(select(ImagingInstance.id, ImagingInstance.path, ImagingInstance.size_bytes)
                                    .where(ImagingInstance.series_id.in_(series_ids))).all()
        versions = session.execute(select(ImagingInstanceVersion.path, ImagingInstanceVersion.size_bytes).where(
            ImagingInstanceVersion.instance_id.in_([i.id for i in instances]))).all()
        size = sum(i.size_bytes for i in instances) + sum(v.size_bytes for v in versions)
        deleted.append(f"{label}: {len(instances)} {kind} instance(s), {size} bytes")
        freed += size
        if dry_run:
            continue
        instance_ids = [i.id for i in instances]
        session.execute(delete(ImagingInstanceVersion).where(ImagingInstanceVersion.instance_id.in_(instance_ids)))
        session.execute(delete(ImagingInstance).where(ImagingInstance.id.in_(instance_ids)))
        session.execute(delete(ImagingSeries).where(ImagingSeries.id.in_(series_ids)))
        session.info.setdefault(_UNLINK_KEY, []).extend(
            storage_dir / path for path in [i.path for i in instances] + [v.path for v in versions])
        record_access(session, None, "D", "ImagingStudy", study.id, patient_id=study.patient_id, source="retention",
                      description=f"retention: {len(instances)} {kind} instance(s) of study {study.study_instance_uid} "
                                  f"({size} bytes) removed, last received {study.last_instance_at.isoformat()}; "
                                  "the study record stays")
    if deleted and not dry_run:
        session.expire_all()  # the bulk deletes went round the identity map
    return deleted, kept, freed


@event.listens_for(Session, "after_commit")
def _unlink_after_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # only a savepoint: the unit of work has not committed yet
    for path in session.info.pop(_UNLINK_KEY, []):
        path.unlink(missing_ok=True)


@event.listens_for(Session, "after_rollback")
def _keep_files_after_rollback(session: Session) -> None:
    if session.get_nested_transaction() is None:
        session.info.pop(_UNLINK_KEY, None)


def storage_by_centre(session: Session) -> list[StorageUsage]:
    """Studies, instances and bytes (every kept version included) per receiving centre."""
    instance_bytes = (
        select(ImagingStudy.organization_id.label("org"), func.count(func.distinct(ImagingStudy.id)).label("studies"),
               func.count(ImagingInstance.id).label("instances"),
               func.coalesce(func.sum(ImagingInstance.size_bytes), 0).label("bytes"))
        .join(ImagingSeries, ImagingSeries.study_id == ImagingStudy.id)
        .join(ImagingInstance, ImagingInstance.series_id == ImagingSeries.id)
        .group_by(ImagingStudy.organization_id)
    )
    version_bytes = dict(session.execute(
        select(ImagingStudy.organization_id, func.coalesce(func.sum(ImagingInstanceVersion.size_bytes), 0))
        .join(ImagingSeries, ImagingSeries.study_id == ImagingStudy.id)
        .join(ImagingInstance, ImagingInstance.series_id == ImagingSeries.id)
        .join(ImagingInstanceVersion, ImagingInstanceVersion.instance_id == ImagingInstance.id)
        .group_by(ImagingStudy.organization_id)
    ).all())
    names = dict(session.execute(select(Organization.id, Organization.name)).all())
    usage = [
        StorageUsage(row.org, names.get(row.org, f"organisation {row.org}") if row.org is not None else "No centre (unmatched)",
                     int(row.studies), int(row.instances), int(row.bytes) + int(version_bytes.get(row.org, 0)))
        for row in session.execute(instance_bytes)
    ]
    return sorted(usage, key=lambda u: -u.size_bytes)


def register(app: Flask) -> None:
    register_retention_class(app, DataClass.IMAGES, expire_images)
    register_retention_class(app, DataClass.AI_OUTPUTS, expire_ai_outputs)
    register_storage_usage(app, storage_by_centre)
