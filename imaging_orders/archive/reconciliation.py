"""The reconciliation queue: studies that arrived but could not be matched to an order, shown to
the centre's staff with what their headers said and why matching failed, and matched by hand to an
open referral through `imaging_orders.archive.ingest.reconcile_study`.

An unmatched study has no patient and no centre yet (the images only name them). It is counted as
a centre's when its AccessionNumber is that of one of the centre's referrals, or when it names no
referral of any centre (then every centre's staff see it, as the node is shared); a study whose
accession number belongs to another centre's referral stays out of this centre's view.
`visible_studies` is the one place that rule lives; DICOMweb uses it too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select, true
from sqlalchemy.orm import Session

from hospital.access import UNMATCHED_READERS, patient_filter
from hospital.api import json_body, required
from hospital.audit import record_access, record_denied
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import Forbidden, NotFound
from hospital.models import Patient, Role, User
from hospital.web import form_action
from imaging_orders.archive.ingest import MATCHABLE_REFERRAL_STATUSES, reconcile_study
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, StudyStatus
from referrals.models import Referral

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
        select(Referral.id).where(
            Referral.accession_number == ImagingStudy.accession_number,
            Referral.performer_organization_id != user.organization_id,
        )
    )
    return and_(ImagingStudy.referral_id.is_(None), ImagingStudy.patient_id.is_(None), ~other_centre)


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
    raise Forbidden("no access to this imaging study")


@dataclass
class QueueEntry:
    study: ImagingStudy
    instances: int
    modalities: list[str]
    warnings: list[str]
    candidates: list[Referral]


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
            QueueEntry(study, len(instance_rows), modalities, list(warnings)[:_WARNINGS_PER_STUDY], _candidates(session, user, study))
        )
    return entries


def _candidates(session: Session, user: User, study: ImagingStudy) -> list[Referral]:
    """Open referrals of the centre that this study plausibly belongs to: the same accession
    number or the same patient identifier as the headers."""
    hints = []
    if study.accession_number:
        hints.append(Referral.accession_number == study.accession_number)
    if study.dicom_patient_id:
        hints.append(func.trim(Patient.mrn) == study.dicom_patient_id.strip())
    if not hints:
        return []
    statement = (
        select(Referral)
        .join(Patient, Referral.patient_id == Patient.id)
        .where(Referral.status.in_(list(MATCHABLE_REFERRAL_STATUSES)), or_(*hints))
        .order_by(Referral.id.desc())
        .limit(10)
    )
    if user.role is not Role.ADMIN:
        statement = statement.where(Referral.performer_organization_id == user.organization_id)
    return list(session.scalars(statement))


def reconcile_for_user(session: Session, user: User, study_id: int, referral_id: int) -> ImagingStudy:
    """Check that both the study and the referral are the user's centre's, then reconcile."""
    study = session.get(ImagingStudy, study_id)
    if study is None:
        raise NotFound(f"imaging study {study_id} does not exist")
    ensure_study_visible(session, user, study, "U")
    referral = session.get(Referral, referral_id)
    if referral is None:
        raise NotFound(f"referral {referral_id} does not exist")
    if user.role is not Role.ADMIN and referral.performer_organization_id != user.organization_id:
        record_denied(user, "U", "Referral", referral_id, "referral of another centre")
        raise Forbidden(f"referral {referral_id} is not one of your centre's")
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
        "candidates": [
            {
                "referral_id": r.id, "accession_number": r.accession_number, "status": r.status.value,
                "patient": {"id": r.patient.id, "mrn": r.patient.mrn, "name": r.patient.display_name},
                "procedure": r.procedure_description,
            }
            for r in entry.candidates
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


@bp.route("/reconciliation", methods=["GET", "POST"])
@require_roles(*RECONCILERS)
def reconciliation_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    if request.method == "POST":
        study_id = request.form.get("study_id", type=int) or 0
        referral_id = request.form.get("referral_id", type=int) or 0

        def match() -> str:
            reconcile_for_user(session, user, study_id, referral_id)
            return f"Study {study_id} matched to referral {referral_id}."

        form_action(session, match)
        return redirect(url_for("reconciliation.reconciliation_page"))
    entries = reconciliation_queue(session, user)
    record_access(session, user, "E", "ImagingStudy", None, description=f"reconciliation queue ({len(entries)})")
    page = render_template("imaging_orders/reconciliation.html", entries=entries)
    return page
