"""Studies uploaded to the research database by a `contributor` account (a practitioner or a
partner institution), with their labels.

An upload is checked whole before anything is kept: every file a DICOM instance of one study, the
study not uploaded before by the same institution, every label on an image of the upload and
inside it. Its images are de-identified on arrival (the same PS3.15 Basic profile as platform
studies, `research.deidentify`) and the originals are never written anywhere; the original UIDs go
to the `research_uid_map` table only. The institution attests that the patient's consent was
obtained and says where it is recorded (`consent_reference`); it may withdraw the upload, which
keeps it out of every later dataset version and marks the earlier ones that hold it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.models import Role, User
from research.deidentify import DeidentifiedInstance, NotDeidentifiable, deidentify_file
from research.models import Contribution, ContributionSource, ResearchInstance, ResearchUidMap, UidKind
from research.service import mark_versions_holding, record_research_uid

logger = logging.getLogger(__name__)

MAX_FILES = 5_000
MAX_LABELS = 1_000
MARK_UPLOAD_WITHDRAWN = "withdrawn by the contributor"
DECISIONS = ("accepted", "rejected")


@dataclass(frozen=True)
class UploadedFile:
    name: str  # as the sender called it, for messages
    data: bytes


@dataclass(frozen=True)
class _Image:
    file: UploadedFile
    dataset: pydicom.Dataset


def upload_seed(secret: str, organization_id: int, patient_id: str) -> str:
    """One secret seed per patient of one institution: that patient's uploads share research UIDs
    and a date shift, and no two patients (or institutions) share them."""
    return hmac.new(secret.encode(), f"research-upload:{organization_id}:{patient_id}".encode(),
                    hashlib.sha256).hexdigest()


def _read(files: Sequence[UploadedFile]) -> list[_Image]:
    if not files:
        raise InvalidInput(_("choose the study's DICOM files to upload"))
    if len(files) > MAX_FILES:
        raise InvalidInput(_("at most %(count)s files in one upload", count=MAX_FILES))
    images: list[_Image] = []
    for file in files:
        try:
            dataset = pydicom.dcmread(io.BytesIO(file.data))
        except (InvalidDicomError, EOFError, ValueError, TypeError, OSError) as exc:
            raise InvalidInput(_("%(name)s is not a DICOM file (%(reason)s)", name=file.name, reason=exc)) from exc
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not dataset.get(k)]
        if missing:
            raise InvalidInput(_("%(name)s has no %(what)s", name=file.name, what=", ".join(missing)))
        images.append(_Image(file, dataset))
    studies = sorted({str(i.dataset.StudyInstanceUID) for i in images})
    if len(studies) > 1:
        raise InvalidInput(_("one upload is one study; these files belong to %(count)s studies", count=len(studies)))
    seen: dict[str, str] = {}
    for image in images:
        uid = str(image.dataset.SOPInstanceUID)
        if uid in seen:
            raise InvalidInput(_("%(first)s and %(second)s are the same image (SOP Instance UID %(uid)s)",
                                 first=seen[uid], second=image.file.name, uid=uid))
        seen[uid] = image.file.name
    return images


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(_("label %(what)s must be a number, not %(value)s", what=what, value=repr(value)))
    return float(value)


def _labels(raw: Any, images: list[_Image], reviewer: str) -> list[dict[str, Any]]:
    """The upload's labels in the research database's form (docs/research-dataset.md)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput(_("labels must be a JSON list of findings"))
    if len(raw) > MAX_LABELS:
        raise InvalidInput(_("at most %(count)s labels in one upload", count=MAX_LABELS))
    by_uid = {str(i.dataset.SOPInstanceUID): i.dataset for i in images}
    decided_at = utcnow().isoformat()
    labels = []
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise InvalidInput(_("label %(number)s is not an object", number=number))
        uid = str(item.get("key_sop_instance_uid", ""))
        dataset = by_uid.get(uid)
        if dataset is None:
            raise InvalidInput(_("label %(number)s is on image %(uid)s, which is not in this upload",
                                 number=number, uid=uid or "-"))
        box = item.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise InvalidInput(_("label %(number)s needs a box [x0, y0, x1, y1] in pixels", number=number))
        x0, y0, x1, y1 = (_number(v, "box") for v in box)
        columns, rows = int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0))
        if not (0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows) or any(v != int(v) for v in (x0, y0, x1, y1)):
            raise InvalidInput(_("label %(number)s: the box %(box)s is not inside the %(columns)s x %(rows)s image",
                                 number=number, box=box, columns=columns, rows=rows))
        decision = item.get("decision", "accepted")
        if decision not in DECISIONS:
            raise InvalidInput(_("label %(number)s: decision must be accepted or rejected, not %(value)s",
                                 number=number, value=repr(decision)))
        diameter = item.get("diameter_mm")
        labels.append({
            "key_sop_instance_uid": uid, "slice_index": None, "box": [int(x0), int(y0), int(x1), int(y1)],
            "diameter_mm": round(_number(diameter, "diameter_mm"), 1) if diameter is not None else None,
            "source": "contributor", "decision": decision, "reviewer": reviewer, "decided_at": decided_at,
            "model_version": None,
        })
    return labels


def _deidentify(images: list[_Image], seed_of: dict[str, str]) -> list[DeidentifiedInstance]:
    out = []
    for image in images:
        # deidentify_file reads from a path or a file object; a name for its messages.
        source = io.BytesIO(image.file.data)
        source.name = image.file.name
        try:
            out.append(deidentify_file(source, seed_of[str(image.dataset.get("PatientID", ""))]))
        except NotDeidentifiable as exc:
            raise InvalidInput(str(exc)) from exc
    return out


def contribute_upload(
    session: Session, user: User, files: Sequence[UploadedFile], labels: Any, *, consent_reference: str,
    research_dir: Path, secret: str,
) -> Contribution:
    """Check, de-identify and keep one uploaded study with its labels (see the module docstring)."""
    if user.role is not Role.CONTRIBUTOR or user.organization_id is None:
        raise Forbidden(_("only a research contributor account of an institution uploads studies"), for_people=True)
    reference = consent_reference.strip()
    if not reference:
        raise InvalidInput(_("say where the patient's consent to research use is recorded"))
    if len(reference) > 200:
        raise InvalidInput(_("the consent reference is longer than 200 characters"))
    images = _read(files)
    study_uid = str(images[0].dataset.StudyInstanceUID)
    if len(study_uid) > 64:
        raise InvalidInput(_("StudyInstanceUID %(uid)s is longer than 64 characters", uid=study_uid[:80]))
    earlier = session.scalar(select(Contribution).where(Contribution.organization_id == user.organization_id,
                                                        Contribution.source_study_uid == study_uid))
    if earlier is not None:
        raise Conflict(_("this study was uploaded before (contribution %(id)s)", id=earlier.id))
    kept_labels = _labels(labels, images, f"contributor-{user.id}")
    seeds = {pid: upload_seed(secret, user.organization_id, pid)
             for pid in {str(i.dataset.get("PatientID", "")) for i in images}}
    results = _deidentify(images, seeds)
    usable = [r for r in results if r.excluded_reason is None]
    if not usable:
        reasons = sorted({r.excluded_reason or "" for r in results})
        raise InvalidInput(_("no image of this upload can be used for research: %(reasons)s",
                             reasons="; ".join(reasons)))
    labelled = {label["key_sop_instance_uid"] for label in kept_labels}
    unusable_labelled = sorted(r.original_sop_uid for r in results if r.excluded_reason and r.original_sop_uid in labelled)
    if unusable_labelled:
        raise InvalidInput(_("a label is on an image kept out of research (%(reason)s)",
                             reason=next(r.excluded_reason for r in results if r.original_sop_uid == unusable_labelled[0])))

    now = utcnow()
    contribution = Contribution(
        source=ContributionSource.UPLOAD, organization_id=user.organization_id, contributor_user_id=user.id,
        source_study_uid=study_uid, consent_reference=reference, labels=kept_labels, contributed_at=now,
        deidentified_at=now,
    )
    session.add(contribution)
    session.flush()
    for result in results:
        record_research_uid(session, UidKind.STUDY, result.original_study_uid, result.study_uid)
        record_research_uid(session, UidKind.SERIES, result.original_series_uid, result.series_uid)
        record_research_uid(session, UidKind.INSTANCE, result.original_sop_uid, result.sop_uid)
        relative = f"{result.study_uid}/{result.series_uid}/{result.sop_uid}.dcm" if result.excluded_reason is None else ""
        session.add(ResearchInstance(
            contribution_id=contribution.id, sop_instance_uid=result.sop_uid, series_instance_uid=result.series_uid,
            study_instance_uid=result.study_uid, instance_number=result.instance_number, path=relative,
            sha256=result.sha256, excluded_reason=result.excluded_reason,
        ))
    session.flush()  # a duplicate research UID fails here, before any file is written
    for result in usable:
        target = research_dir / result.study_uid / result.series_uid / f"{result.sop_uid}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result.data)
    record_access(session, user, "C", "ResearchContribution", contribution.id,
                  description=f"research upload: {len(usable)} images kept, {len(results) - len(usable)} kept out, "
                              f"{len(kept_labels)} labels; consent {reference}")
    logger.info("research: upload %s by user %s: %d images kept, %d kept out, %d labels", contribution.id, user.id,
                len(usable), len(results) - len(usable), len(kept_labels))
    return contribution


def contributions_of(session: Session, user: User) -> list[Contribution]:
    """A contributor's own uploads, newest first."""
    return list(session.scalars(select(Contribution).where(Contribution.contributor_user_id == user.id)
                                .order_by(Contribution.id.desc())))


def instance_counts(session: Session, contribution_id: int) -> tuple[int, list[str]]:
    """How many of the upload's images are usable, and why the others were kept out."""
    rows = session.scalars(select(ResearchInstance).where(ResearchInstance.contribution_id == contribution_id)).all()
    return sum(r.excluded_reason is None for r in rows), sorted({r.excluded_reason for r in rows if r.excluded_reason})


def instance_outcomes(session: Session, contribution_id: int) -> dict[str, str | None]:
    """Each image of an upload by the SOP Instance UID its sender gave it: None when it was kept,
    de-identified, else why it was kept out. For answering the sender only: it reads the UID map."""
    rows = session.execute(
        select(ResearchUidMap.original_uid, ResearchInstance.excluded_reason)
        .join(ResearchUidMap, (ResearchUidMap.research_uid == ResearchInstance.sop_instance_uid)
              & (ResearchUidMap.kind == UidKind.INSTANCE))
        .where(ResearchInstance.contribution_id == contribution_id)
    ).all()
    return {original: reason for original, reason in rows}


def withdraw_upload(session: Session, user: User, contribution_id: int) -> Contribution:
    """The contributor (or an administrator) takes an upload back: out of every later version,
    and the versions that hold it are marked so their later exports leave it out."""
    contribution = session.get(Contribution, contribution_id)
    if contribution is None or contribution.source is not ContributionSource.UPLOAD or not (
        user.role is Role.ADMIN or contribution.contributor_user_id == user.id
    ):
        raise NotFound(_("no upload %(id)s of yours", id=contribution_id), for_people=True)
    if contribution.withdrawn_at is None:
        contribution.withdrawn_at = utcnow()
        mark_versions_holding(session, {contribution.id}, MARK_UPLOAD_WITHDRAWN)
        record_access(session, user, "U", "ResearchContribution", contribution.id, description="research upload withdrawn")
    return contribution
