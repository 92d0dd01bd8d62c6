"""The study's instances page: imaging staff withdraw a wrong or bad series or instance with an
IHE IOCM reason, and revert a withdrawal made by mistake.

A withdrawal from the page is a rejection note like any other: the page builds the Key Object
Selection Document a workstation would send (titled with the chosen CID 7011 code, referencing
the instances) and stores it through `ingest.store_instance`, the same path as C-STORE and
STOW-RS, scoped to the studies the user may see; so the note is kept in the study, the withdrawal
is recorded and audited by `rejection.withdraw`, and query, retrieve and re-sends treat it the
same. Both actions ask first (a dialog, or a page of their own without scripts).
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.i18n import ngettext
from hospital.web import ask_first, form_action
from imaging_orders.archive.ingest import InstanceRejected, StorageUnavailable, store_instance
from imaging_orders.archive.models import ImagingInstance, ImagingSeries, ImagingStudy, InstanceRejection
from imaging_orders.archive.reconciliation import (
    RECONCILERS,
    ensure_study_visible,
    revert_rejection_for_user,
    visible_studies,
)
from imaging_orders.archive.rejection import KEY_OBJECT_SELECTION_DOCUMENT, REJECTION_NOTE_TITLES

logger = logging.getLogger(__name__)

bp = Blueprint("withdrawal", __name__, template_folder="templates")


def rejection_note_dataset(study: ImagingStudy, series_uid: str, instances: list[ImagingInstance], code: str) -> Dataset:
    """The Key Object Selection Document (IOCM rejection note) withdrawing `instances` of one series."""
    note = Dataset()
    note.SOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT
    note.SOPInstanceUID = generate_uid()
    note.StudyInstanceUID = study.study_instance_uid
    note.SeriesInstanceUID = generate_uid()
    note.Modality = "KO"
    note.SeriesNumber = 9999
    note.InstanceNumber = 1
    note.PatientID = study.dicom_patient_id or ""
    note.PatientName = study.dicom_patient_name or ""
    note.AccessionNumber = study.accession_number or ""
    note.ValueType = "CONTAINER"
    note.ContinuityOfContent = "SEPARATE"
    title = Dataset()
    title.CodeValue = code
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = REJECTION_NOTE_TITLES[code]
    note.ConceptNameCodeSequence = [title]
    references = []
    for instance in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = instance.sop_class_uid
        ref.ReferencedSOPInstanceUID = instance.sop_instance_uid
        references.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedSOPSequence = references
    evidence = Dataset()
    evidence.StudyInstanceUID = study.study_instance_uid
    evidence.ReferencedSeriesSequence = [series]
    note.CurrentRequestedProcedureEvidenceSequence = [evidence]
    return note


def _withdraw_from_page(study: ImagingStudy) -> str:
    """Read the form, ask first, store the note; the message to flash. `InvalidInput` for a bad form."""
    session = request_session()
    user = current_user()
    code = request.form.get("code", "")
    if code not in REJECTION_NOTE_TITLES:
        raise InvalidInput(_("choose a reason for the withdrawal"))
    series = session.get(ImagingSeries, request.form.get("series_id", type=int) or 0)
    if series is None or series.study_id != study.id:
        raise InvalidInput(_("that series is not in this study"))
    wanted = request.form.get("sop_instance_uid", "")
    query = select(ImagingInstance).where(ImagingInstance.series_id == series.id, ImagingInstance.rejection_id.is_(None))
    if wanted:
        query = query.where(ImagingInstance.sop_instance_uid == wanted)
    instances = list(session.scalars(query.order_by(ImagingInstance.number, ImagingInstance.id)))
    if not instances:
        raise InvalidInput(_("nothing left to withdraw there"))
    if wanted:
        what = _("instance %(number)s", number=instances[0].number or instances[0].sop_instance_uid)
    else:
        what = _("all %(num)d images", num=len(instances))
    number, reason = series.number or series.id, REJECTION_NOTE_TITLES[code]
    ask_first(_("Withdraw %(what)s of series %(series)s (%(reason)s)? They are no longer found or retrieved, and a "
                "re-send is refused until the withdrawal is reverted.", what=what, series=number, reason=reason),
              _("Yes, withdraw"))
    note = rejection_note_dataset(study, series.series_instance_uid, instances, code)
    try:
        store_instance(current_app._get_current_object(), note, transfer_syntax_uid=None,  # type: ignore[attr-defined]
                       calling_ae=f"WEB:{user.username}", rejection_scope=visible_studies(user))
    except (InstanceRejected, StorageUnavailable) as exc:
        raise InvalidInput(_("not withdrawn: %(reason)s", reason=exc.reason)) from exc
    return _("Withdrawn: %(what)s of series %(series)s (%(reason)s).", what=what, series=number, reason=reason)


@bp.route("/imaging-studies/<int:study_id>/instances", methods=["GET", "POST"])
@require_roles(*RECONCILERS)
def study_instances_page(study_id: int) -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    study = session.get(ImagingStudy, study_id)
    if study is None:
        raise NotFound(_("imaging study %(id)s does not exist", id=study_id))
    ensure_study_visible(session, user, study)
    if request.method == "POST":
        if request.form.get("action") == "revert":
            rejection_id = request.form.get("rejection_id", type=int) or 0

            def revert() -> str:
                ask_first(_("Revert this withdrawal? Its images are found and retrieved again."), _("Yes, revert"))
                restored = revert_rejection_for_user(session, user, study_id, rejection_id)
                return ngettext("Reverted: %(num)d image is available again.", "Reverted: %(num)d images are available again.",
                                len(restored))

            form_action(session, revert)
        else:
            try:
                flash(_withdraw_from_page(study))
            except InvalidInput as exc:
                flash(exc.message, "error")
        return redirect(url_for("withdrawal.study_instances_page", study_id=study_id))
    series = session.scalars(select(ImagingSeries).where(ImagingSeries.study_id == study_id)
                             .order_by(ImagingSeries.number, ImagingSeries.id)).all()
    live = {s.id: list(session.scalars(
        select(ImagingInstance).where(ImagingInstance.series_id == s.id, ImagingInstance.rejection_id.is_(None))
        .order_by(ImagingInstance.number, ImagingInstance.id))) for s in series}
    rejections = session.scalars(select(InstanceRejection).where(InstanceRejection.study_id == study_id)
                                 .order_by(InstanceRejection.id)).all()
    record_access(session, user, "R", "ImagingStudy", study.id, patient_id=study.patient_id,
                  description="study instances page")
    return render_template("imaging_orders/study_instances.html", study=study, series=series, live=live,
                           rejections=rejections, reasons=REJECTION_NOTE_TITLES)
