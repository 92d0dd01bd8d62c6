"""The reconciliation queue: studies that arrived but could not be matched to an order, shown to
the centre's staff with what their headers said and why matching failed, and matched by hand to an
open referral through `imaging_orders.archive.ingest.reconcile_study`.

An unmatched study has no patient and no centre yet (the images only name them). It is counted as
a centre's when its AccessionNumber is that of one of the centre's referrals, or when it names no
referral of any centre (then every centre's staff see it, as the node is shared); a study whose
accession number belongs to another centre's referral stays out of this centre's view.
`visible_studies` is the one place that rule lives; DICOMweb uses it too.

A study whose AccessionNumber names an order that already has its study (one accession, one
fulfilment) waits here too, with the first study offered as a merge target: `merge_study` moves
its series under the first study (the files rewritten to carry its StudyInstanceUID) without
completing the order again, so nothing is analysed or charged twice and no signed report reopens.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from flask import Blueprint, Flask, current_app, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select, true
from sqlalchemy.orm import Session

from hospital.access import UNMATCHED_READERS, patient_filter
from hospital.api import json_body, required
from hospital.audit import record_access, record_denied
from hospital.auth import current_user, require_roles
from hospital.clock import utcnow
from hospital.db import get_db, request_session
from hospital.errors import Conflict, Forbidden, NotFound
from hospital.i18n import gettext as _
from hospital.i18n import ngettext
from hospital.models import Patient, Role, User
from hospital.web import form_action
from imaging_orders.archive.ingest import MATCHABLE_REFERRAL_STATUSES, reconcile_study, write_file_durably
from imaging_orders.archive.models import (
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    InstanceRejection,
    StudyStatus,
)
from imaging_orders.archive.rejection import revert_rejection
from referrals.public import ORDERS, ReferralSummary, referral_summary, summary_from_row

logger = logging.getLogger(__name__)

bp = Blueprint("reconciliation", __name__, template_folder="templates")

RECONCILERS = (Role.IMAGING_STAFF, Role.ADMIN)
_QUEUE_LIMIT = 200
_WARNINGS_PER_STUDY = 20


def unmatched_in_centre(user: User) -> ColumnElement[bool]:
    """Unmatched studies that `user`'s centre may see (see the module docstring)."""
    if user.role is Role.ADMIN:
        return ImagingStudy.referral_id.is_(None)
    if user.role not in UNMATCHED_READERS or user.organization_id is None:
        return false()
    other_centre = exists(
        select(ORDERS.c.referral_id).where(
            ORDERS.c.accession_number == ImagingStudy.accession_number,
            ORDERS.c.performer_organization_id != user.organization_id,
        )
    )
    return and_(ImagingStudy.referral_id.is_(None), ImagingStudy.patient_id.is_(None), ~other_centre)


def awaiting_count(session: Session) -> int:
    """How many studies wait here, every centre's (the operator's figure, hospital/metrics.py)."""
    waiting = select(func.count()).select_from(ImagingStudy).where(
        ImagingStudy.referral_id.is_(None), ImagingStudy.status != StudyStatus.CANCELLED
    )
    return int(session.scalar(waiting) or 0)


def visible_studies(user: User) -> ColumnElement[bool]:
    """Studies `user` may find: matched ones in their patient compartment, unmatched ones of their centre."""
    if user.role is Role.ADMIN:
        return true()
    return or_(patient_filter(user, ImagingStudy.patient_id), unmatched_in_centre(user))


def ensure_study_visible(session: Session, user: User, study: ImagingStudy, action: str = "R") -> None:
    """Raise Forbidden (audited) unless `user` may see `study`."""
    if session.scalar(select(true()).where(ImagingStudy.id == study.id, visible_studies(user))):
        return
    record_denied(user, action, "ImagingStudy", study.id, "study outside the user's centre or compartment",
                  patient_id=study.patient_id)
    raise Forbidden(_("no access to this imaging study"))


@dataclass(frozen=True)
class Candidate:
    """An open referral an unmatched study may belong to, and its patient."""

    referral: ReferralSummary
    patient: Patient


@dataclass
class QueueEntry:
    study: ImagingStudy
    instances: int
    modalities: list[str]
    warnings: list[str]
    candidates: list[Candidate]
    merge_into: list[int]  # studies that already fulfil the order this study's accession names


def reconciliation_queue(session: Session, user: User) -> list[QueueEntry]:
    """Unmatched, not cancelled studies of the user's centre, newest first, with candidate referrals."""
    studies = list(
        session.scalars(
            select(ImagingStudy)
            .where(unmatched_in_centre(user), ImagingStudy.status != StudyStatus.CANCELLED)
            .order_by(ImagingStudy.received_at.desc(), ImagingStudy.id.desc())
            .limit(_QUEUE_LIMIT)
        )
    )
    entries = []
    for study in studies:
        instance_rows = session.execute(
            select(ImagingInstance.warnings, ImagingSeries.modality)
            .join(ImagingSeries, ImagingInstance.series_id == ImagingSeries.id)
            .where(ImagingSeries.study_id == study.id)
        ).all()
        warnings: dict[str, None] = {}
        for instance_warnings, _modality in instance_rows:
            for warning in instance_warnings or ():
                warnings.setdefault(str(warning), None)
        modalities = sorted({m for _w, m in instance_rows if m})
        entries.append(
            QueueEntry(study, len(instance_rows), modalities, list(warnings)[:_WARNINGS_PER_STUDY],
                       _candidates(session, user, study), _merge_targets(session, study))
        )
    return entries


def _candidates(session: Session, user: User, study: ImagingStudy) -> list[Candidate]:
    """Open referrals of the centre that this study plausibly belongs to: the same accession
    number or the same patient identifier as the headers."""
    hints = []
    if study.accession_number:
        hints.append(ORDERS.c.accession_number == study.accession_number)
    if study.dicom_patient_id:
        hints.append(func.trim(Patient.mrn) == study.dicom_patient_id.strip())
    if not hints:
        return []
    statement = (
        select(Patient, *ORDERS.c)
        .join(Patient, ORDERS.c.patient_id == Patient.id)
        .where(ORDERS.c.status.in_(list(MATCHABLE_REFERRAL_STATUSES)), or_(*hints))
        .order_by(ORDERS.c.referral_id.desc())
        .limit(10)
    )
    if user.role is not Role.ADMIN:
        statement = statement.where(ORDERS.c.performer_organization_id == user.organization_id)
    return [Candidate(summary_from_row(row), row[0]) for row in session.execute(statement)]


def _merge_targets(session: Session, study: ImagingStudy) -> list[int]:
    """The matched studies of the order(s) this study's AccessionNumber names."""
    if not study.accession_number:
        return []
    return list(session.scalars(
        select(ImagingStudy.id).join(ORDERS, ImagingStudy.referral_id == ORDERS.c.referral_id)
        .where(ORDERS.c.accession_number == study.accession_number, ImagingStudy.id != study.id,
               ImagingStudy.status != StudyStatus.CANCELLED)
        .order_by(ImagingStudy.id)
    ))


def merge_study(app: Flask, study_id: int, into_study_id: int) -> int:
    """Move an unmatched study's series under another study of the same patient; return how many
    instances moved.

    Each file is rewritten to carry the target's StudyInstanceUID and AccessionNumber (a viewer
    that retrieves the target must see one study), under the target's folder. It is one unit of
    work of its own, like a store: the new files are removed if it does not commit, the old ones
    only once it has. The target is not completed again: its `StudyCompleted`, analysis and charge
    stand as they are, and a signed report is not reopened.
    """
    storage_dir = Path(app.config["DICOM_STORAGE_DIR"])
    written: list[Path] = []
    replaced: list[Path] = []
    try:
        with get_db(app).transaction() as session:
            moved = _merge(session, study_id, into_study_id, storage_dir, written, replaced)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for path in replaced:
        path.unlink(missing_ok=True)
    logger.info("study %s merged into study %s (%d instances)", study_id, into_study_id, moved)
    return moved


def _merge(session: Session, study_id: int, into_study_id: int, storage_dir: Path,
           written: list[Path], replaced: list[Path]) -> int:
    if study_id == into_study_id:
        raise Conflict(_("a study cannot be merged into itself"))
    # Locked in id order, so two merges of the same pair cannot deadlock.
    locked = {s.id: s for s in session.scalars(
        select(ImagingStudy).where(ImagingStudy.id.in_([study_id, into_study_id]))
        .order_by(ImagingStudy.id).with_for_update()
    )}
    source, target = locked.get(study_id), locked.get(into_study_id)
    if source is None or target is None:
        raise NotFound(_("imaging study %(id)s does not exist", id=study_id if source is None else into_study_id))
    if source.referral_id is not None:
        raise Conflict(_("imaging study %(id)s is matched to referral %(referral)s; only an unmatched study is merged",
                         id=study_id, referral=source.referral_id))
    if source.status is StudyStatus.CANCELLED or target.status is StudyStatus.CANCELLED:
        raise Conflict(_("a cancelled study cannot be merged"))
    target_patient_id = target.patient.mrn if target.patient is not None else target.dicom_patient_id
    if not source.dicom_patient_id or (source.dicom_patient_id or "").strip() != (target_patient_id or "").strip():
        # The values themselves are PHI; the message only says that they differ.
        raise Conflict(_("imaging study %(id)s cannot be merged: its PatientID differs from study %(into)s's",
                         id=study_id, into=into_study_id))
    now = utcnow()
    moved = 0
    for series in session.scalars(select(ImagingSeries).where(ImagingSeries.study_id == source.id)).all():
        for instance in series.instances:
            _rewrite_into(storage_dir, instance, target, source, written, replaced)
            moved += 1
        series.study_id = target.id
    source.status = StudyStatus.CANCELLED
    source.merged_into_id = target.id
    if target.status is StudyStatus.REGISTERED:
        target.last_instance_at = now  # still arriving: completion waits for the merged series too
    session.flush()
    return moved


def _rewrite_into(storage_dir: Path, instance: ImagingInstance, target: ImagingStudy, source: ImagingStudy,
                  written: list[Path], replaced: list[Path]) -> None:
    old = storage_dir / instance.path
    ds = pydicom.dcmread(old)
    ds.StudyInstanceUID = target.study_instance_uid
    if target.accession_number:
        ds.AccessionNumber = target.accession_number
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    relative = f"{target.study_instance_uid}/{instance.series.series_instance_uid}/{instance.sop_instance_uid}.dcm"
    new = storage_dir / relative
    written.append(new)
    write_file_durably(new, data)
    if new != old:
        replaced.append(old)
    instance.path = relative
    instance.sha256 = hashlib.sha256(data).hexdigest()
    instance.size_bytes = len(data)
    instance.warnings = [*(instance.warnings or []), f"merged from study {source.study_instance_uid}"]


def merge_for_user(session: Session, user: User, study_id: int, into_study_id: int) -> int:
    """Check that the user may see both studies, merge, and audit it."""
    for checked in (study_id, into_study_id):
        study = session.get(ImagingStudy, checked)
        if study is None:
            raise NotFound(_("imaging study %(id)s does not exist", id=checked))
        ensure_study_visible(session, user, study, "U")
    moved = merge_study(current_app, study_id, into_study_id)
    target = session.get(ImagingStudy, into_study_id, populate_existing=True)
    record_access(
        session, user, "U", "ImagingStudy", into_study_id, patient_id=target.patient_id if target else None,
        description=f"merged study {study_id} into it ({moved} instances)",
    )
    return moved


def reconcile_for_user(session: Session, user: User, study_id: int, referral_id: int) -> ImagingStudy:
    """Check that both the study and the referral are the user's centre's, then reconcile."""
    study = session.get(ImagingStudy, study_id)
    if study is None:
        raise NotFound(_("imaging study %(id)s does not exist", id=study_id))
    ensure_study_visible(session, user, study, "U")
    referral = referral_summary(session, referral_id)
    if referral is None:
        raise NotFound(_("referral %(id)s does not exist", id=referral_id))
    if user.role is not Role.ADMIN and referral.performer_organization_id != user.organization_id:
        record_denied(user, "U", "Referral", referral_id, "referral of another centre")
        raise Forbidden(_("referral %(id)s is not one of your centre's", id=referral_id))
    reconciled = reconcile_study(session, study_id, referral_id)
    record_access(
        session, user, "U", "ImagingStudy", study_id, patient_id=reconciled.patient_id,
        description=f"reconciled to referral {referral_id}",
    )
    return reconciled


def entry_json(entry: QueueEntry) -> dict[str, Any]:
    study = entry.study
    return {
        "id": study.id,
        "study_instance_uid": study.study_instance_uid,
        "status": study.status.value,
        "received_at": study.received_at.isoformat(),
        "headers": {
            "accession_number": study.accession_number,
            "patient_id": study.dicom_patient_id,
            "patient_name": study.dicom_patient_name,
            "description": study.description,
            "started": study.started.isoformat() if study.started else None,
        },
        "instances": entry.instances,
        "modalities": entry.modalities,
        "warnings": entry.warnings,
        "merge_into": entry.merge_into,
        "candidates": [
            {
                "referral_id": c.referral.referral_id, "accession_number": c.referral.accession_number,
                "status": c.referral.status.value,
                "patient": {"id": c.patient.id, "mrn": c.patient.mrn, "name": c.patient.display_name},
                "procedure": c.referral.procedure_description,
            }
            for c in entry.candidates
        ],
    }


@bp.get("/api/reconciliation/studies")
@require_roles(*RECONCILERS)
def queue_api() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    entries = reconciliation_queue(session, user)
    record_access(session, user, "E", "ImagingStudy", None, description=f"reconciliation queue ({len(entries)})")
    return jsonify([entry_json(e) for e in entries])


@bp.post("/api/reconciliation/studies/<int:study_id>")
@require_roles(*RECONCILERS)
def reconcile_api(study_id: int) -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    study = reconcile_for_user(session, current_user(), study_id, required(data, "referral_id", int))
    return jsonify(
        id=study.id, study_instance_uid=study.study_instance_uid, referral_id=study.referral_id,
        patient_id=study.patient_id, status=study.status.value, fhir=f"ImagingStudy/{study.id}",
    )


@bp.post("/api/reconciliation/studies/<int:study_id>/merge")
@require_roles(*RECONCILERS)
def merge_api(study_id: int) -> ResponseReturnValue:
    data = json_body()
    into_study_id = required(data, "into_study_id", int)
    moved = merge_for_user(request_session(), current_user(), study_id, into_study_id)
    return jsonify(id=study_id, merged_into=into_study_id, instances=moved, status=StudyStatus.CANCELLED.value)


def study_rejections(session: Session, user: User, study_id: int) -> list[dict[str, Any]]:
    """The rejection notes (IHE IOCM) received for a study the user may see, oldest first, each
    with the instances it withdrew; the read is audited."""
    study = session.get(ImagingStudy, study_id)
    if study is None:
        raise NotFound(_("imaging study %(id)s does not exist", id=study_id))
    ensure_study_visible(session, user, study)
    rejections = session.scalars(
        select(InstanceRejection).where(InstanceRejection.study_id == study_id).order_by(InstanceRejection.id)
    ).all()
    withdrawn: dict[int, list[str]] = {}
    for rejection_id, uid in session.execute(
        select(ImagingInstance.rejection_id, ImagingInstance.sop_instance_uid)
        .where(ImagingInstance.rejection_id.in_([r.id for r in rejections])).order_by(ImagingInstance.id)
    ):
        withdrawn.setdefault(rejection_id, []).append(uid)
    record_access(session, user, "R", "ImagingStudy", study.id, patient_id=study.patient_id,
                  description=f"rejection notes ({len(rejections)})")
    return [
        {
            "id": r.id, "note_sop_instance_uid": r.kos_sop_instance_uid,
            "code": {"value": r.code_value, "scheme": r.coding_scheme, "meaning": r.code_meaning},
            "rejected_by": r.rejected_by, "rejected_at": r.rejected_at.isoformat(),
            "instances": withdrawn.get(r.id, []),
            "reverted_at": r.reverted_at.isoformat() if r.reverted_at else None, "reverted_by": r.reverted_by,
        }
        for r in rejections
    ]


def revert_rejection_for_user(session: Session, user: User, study_id: int, rejection_id: int) -> list[str]:
    """Revert a rejection of a study `user` may see (`rejection.revert_rejection`); the instances it
    withdrew are live again. Returns their SOP Instance UIDs."""
    study = session.get(ImagingStudy, study_id)
    rejection = session.get(InstanceRejection, rejection_id)
    if study is None or rejection is None or rejection.study_id != study_id:
        raise NotFound(_("imaging study %(id)s has no rejection %(rejection)s", id=study_id, rejection=rejection_id))
    ensure_study_visible(session, user, study, "U")
    return revert_rejection(session, rejection, study, user)


@bp.post("/api/imaging-studies/<int:study_id>/rejections/<int:rejection_id>/revert")
@require_roles(*RECONCILERS)
def revert_rejection_api(study_id: int, rejection_id: int) -> ResponseReturnValue:
    restored = revert_rejection_for_user(request_session(), current_user(), study_id, rejection_id)
    return jsonify(id=rejection_id, study_id=study_id, restored=restored)


@bp.get("/api/imaging-studies/<int:study_id>/rejections")
@require_roles(*RECONCILERS)
def rejections_api(study_id: int) -> ResponseReturnValue:
    return jsonify(study_rejections(request_session(), current_user(), study_id))


@bp.route("/reconciliation", methods=["GET", "POST"])
@require_roles(*RECONCILERS)
def reconciliation_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    if request.method == "POST":
        study_id = request.form.get("study_id", type=int) or 0
        referral_id = request.form.get("referral_id", type=int) or 0
        into_study_id = request.form.get("into_study_id", type=int) or 0

        def match() -> str:
            if into_study_id:
                moved = merge_for_user(session, user, study_id, into_study_id)
                return ngettext("Study %(study)s merged into study %(into)s (%(num)d image).",
                                "Study %(study)s merged into study %(into)s (%(num)d images).", moved, study=study_id,
                                into=into_study_id)
            reconcile_for_user(session, user, study_id, referral_id)
            return _("Study %(study)s matched to referral %(referral)s.", study=study_id, referral=referral_id)

        form_action(session, match)
        return redirect(url_for("reconciliation.reconciliation_page"))
    entries = reconciliation_queue(session, user)
    record_access(session, user, "E", "ImagingStudy", None, description=f"reconciliation queue ({len(entries)})")
    page = render_template("imaging_orders/reconciliation.html", entries=entries)
    return page
