"""AI API and pages: analysis progress, reports with their findings, review and sign-off, and
key images with the findings drawn over the slice."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.drift import CONFIDENCE_BINS, DRIFT_ALPHA, drift_report, histogram_bars
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    ModelVersion,
    ReportAddendum,
    ReportStatus,
    ReviewStatus,
)
from ai_services.overlay import WINDOW_CENTRE_RANGE, WINDOW_WIDTH_RANGE, WINDOWS, OverlayBox, render_overlay
from ai_services.reading import (
    PRIORITY_ORDER,
    add_addendum,
    prior_reports,
    prior_to_compare,
    reading_context,
    reading_list_in_clinical_order,
    sign_preview,
)
from ai_services.service import (
    Box,
    add_finding,
    analysis_status,
    failed_outputs,
    finding_json,
    get_report,
    list_reports,
    request_rerun,
    review_finding,
    sign_report,
)
from ai_services.wording import PRIORITY_WORDS, template_words, word_for
from hospital.api import json_body, optional_enum_arg, required
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import DomainError, InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.models import Role
from hospital.web import form_action, same_site_path
from imaging_orders.archive.public import instance_paths, study_ref

logger = logging.getLogger(__name__)

bp = Blueprint("ai_services", __name__, template_folder="templates")
bp.context_processor(template_words)


def job_json(job: AnalysisJob, outputs_error: str | None = None) -> dict[str, Any]:
    return {
        "id": job.id, "study_id": job.study_id, "status": job.status.value, "slices_done": job.slices_done,
        "slices_total": job.slices_total, "attempts": job.attempts, "error": job.error,
        "not_applicable_reason": job.not_applicable_reason, "summary": analysis_summary(job),
        "model_version": job.model_version.label if job.model_version else None,
        "outputs_error": outputs_error,
    }


def analysis_summary(job: AnalysisJob) -> str:
    """The job's state in words, as the worklist shows it (in its reader's language)."""
    done, total = job.slices_done, job.slices_total
    if job.status is AnalysisStatus.NOT_APPLICABLE:
        return _("AI not applicable: %(reason)s", reason=job.not_applicable_reason or "")
    if job.status is AnalysisStatus.RUNNING:
        return _("AI running %(done)s/%(total)s slices", done=done, total=total)
    if job.status is AnalysisStatus.COMPLETED:
        return _("AI completed %(done)s/%(total)s slices", done=done, total=total)
    if job.status is AnalysisStatus.FAILED and job.error:
        return _("AI failed: %(error)s", error=job.error)
    if job.status is AnalysisStatus.FAILED:
        return _("AI failed")
    return _("AI queued")


def report_json(report: DiagnosticReport) -> dict[str, Any]:
    return {
        "id": report.id, "study_id": report.study_id, "patient_id": report.patient_id,
        "referral_id": report.referral_id, "status": report.status.value, "conclusion": report.conclusion,
        "issued_at": report.issued_at.isoformat(), "signed_at": report.signed_at.isoformat() if report.signed_at else None,
        "findings": [finding_json(f) for f in report.findings], "fhir": f"DiagnosticReport/{report.id}",
        "addenda": [addendum_json(a) for a in report.addenda],
    }


def addendum_json(addendum: ReportAddendum) -> dict[str, Any]:
    return {"id": addendum.id, "report_id": addendum.report_id, "text": addendum.text,
            "author": addendum.author.username, "created_at": addendum.created_at.isoformat()}


def _box(data: Any) -> Box:
    if not (isinstance(data, list) and len(data) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in data)):
        raise InvalidInput("box must be a list of four integers [x0, y0, x1, y1]")
    return Box(*data)


def _decision(value: Any) -> ReviewStatus:
    try:
        decision = ReviewStatus(value)
    except ValueError as exc:
        raise InvalidInput(_("decision must be accepted, rejected or edited")) from exc
    return decision


def _decision_message(finding_id: int, decision: ReviewStatus) -> str:
    """What the page says once a finding is decided (whole sentences: word order differs by language)."""
    if decision is ReviewStatus.ACCEPTED:
        return _("Finding %(id)s accepted.", id=finding_id)
    if decision is ReviewStatus.REJECTED:
        return _("Finding %(id)s rejected.", id=finding_id)
    return _("Finding %(id)s edited.", id=finding_id)


@bp.get("/api/studies/<int:study_id>/analysis")
@require_roles()
def analysis(study_id: int) -> ResponseReturnValue:
    session = request_session()
    job = analysis_status(session, current_user(), study_id)
    return jsonify(job_json(job, failed_outputs(session, study_id)))


@bp.post("/studies/<int:study_id>/analysis/retry")
@require_roles(Role.RADIOLOGIST, Role.IMAGING_STAFF, Role.ADMIN)
def retry_analysis_page(study_id: int) -> ResponseReturnValue:
    """The worklist's "Retry analysis" button: the same re-run as the API, back to the page."""
    session = request_session()

    def retry() -> str:
        request_rerun(session, current_user(), study_id)
        return _("The AI analysis of study %(id)s will run again.", id=study_id)

    form_action(session, retry)
    return redirect(same_site_path(request.form.get("next")) or url_for("imaging_orders.worklist_page"))


@bp.post("/api/studies/<int:study_id>/analysis")
@require_roles(Role.RADIOLOGIST, Role.IMAGING_STAFF, Role.ADMIN)
def rerun(study_id: int) -> ResponseReturnValue:
    session = request_session()
    job = request_rerun(session, current_user(), study_id)
    payload = job_json(job)
    return jsonify(payload), 202


@bp.get("/api/reports")
@require_roles()
def reports() -> ResponseReturnValue:
    session = request_session()
    found = list_reports(session, current_user(), optional_enum_arg(ReportStatus, "status"))
    if referral_id := request.args.get("referral_id", type=int):
        found = [r for r in found if r.referral_id == referral_id]
    payload = [report_json(r) for r in found]
    return jsonify(payload)


@bp.get("/api/reports/<int:report_id>")
@require_roles()
def report(report_id: int) -> ResponseReturnValue:
    session = request_session()
    payload = report_json(get_report(session, current_user(), report_id))
    return jsonify(payload)


@bp.post("/api/reports/<int:report_id>/findings/<int:finding_id>/review")
@require_roles(Role.RADIOLOGIST)
def review(report_id: int, finding_id: int) -> ResponseReturnValue:
    data = json_body()
    decision = _decision(data.get("decision"))
    box = _box(data["box"]) if data.get("box") is not None else None
    session = request_session()
    finding = review_finding(session, current_user(), report_id, finding_id, decision, box, data.get("comment"))
    payload = finding_json(finding)
    return jsonify(payload)


@bp.post("/api/reports/<int:report_id>/findings")
@require_roles(Role.RADIOLOGIST)
def add(report_id: int) -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    finding = add_finding(
        session, current_user(), report_id, required(data, "slice_index", int), _box(data.get("box")), data.get("comment")
    )
    payload = finding_json(finding)
    return jsonify(payload), 201


@bp.post("/api/reports/<int:report_id>/sign")
@require_roles(Role.RADIOLOGIST)
def sign(report_id: int) -> ResponseReturnValue:
    data = request.get_json(silent=True) or {}
    session = request_session()
    signed = sign_report(session, current_user(), report_id, data.get("conclusion") if isinstance(data, dict) else None)
    payload = report_json(signed)
    return jsonify(payload)


@bp.post("/api/reports/<int:report_id>/addenda")
@require_roles(Role.RADIOLOGIST)
def amend(report_id: int) -> ResponseReturnValue:
    data = json_body()
    session = request_session()
    addendum = add_addendum(session, current_user(), report_id, required(data, "text", str))
    payload = addendum_json(addendum)
    return jsonify(payload), 201


@bp.post("/reports/<int:report_id>/addenda")
@require_roles(Role.RADIOLOGIST)
def amend_page(report_id: int) -> ResponseReturnValue:
    """The signed report page's "add an addendum" form."""
    session = request_session()

    def amend() -> str:
        addendum = add_addendum(session, current_user(), report_id, request.form.get("text", ""))
        return _("Addendum %(id)s added: the report is amended and the referring clinician is told.", id=addendum.id)

    form_action(session, amend)
    return redirect(url_for("ai_services.report_page", report_id=report_id, _anchor="addenda"))


@bp.get("/reports/<int:report_id>/findings/<int:finding_id>/image.png")
@require_roles()
def key_image(report_id: int, finding_id: int) -> ResponseReturnValue:
    session = request_session()
    found = get_report(session, current_user(), report_id, image_of_opened_report=True)
    finding = next((f for f in found.findings if f.id == finding_id), None)
    if finding is None:
        raise NotFound(f"finding {finding_id} is not on report {report_id}")
    storage_dir = current_app.config["DICOM_STORAGE_DIR"]
    path = instance_paths(session, [finding.sop_instance_uid], storage_dir).get(finding.sop_instance_uid)
    if path is None:
        raise NotFound("the key image is not stored here")
    preset = request.args.get("window", "lung")
    if preset not in WINDOWS:
        raise InvalidInput(f"window must be one of {sorted(WINDOWS)}")
    boxes = [
        OverlayBox(f.x0, f.y0, f.x1, f.y1, f"#{f.id} {f.diameter_mm:.0f} mm",
                   "#ff4d4d" if f.id == finding.id else "#ffcc00")
        for f in found.findings
        if f.slice_index == finding.slice_index and f.review_status is not ReviewStatus.REJECTED
    ]
    png = render_overlay(path, boxes, preset)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "private, no-store"})


@bp.get("/reports/<int:report_id>/slices/<int:index>.png")
@require_roles()
def slice_image(report_id: int, index: int) -> ResponseReturnValue:
    """Any slice of the analysed series, windowed, with the report's kept findings on it drawn."""
    session = request_session()
    found = get_report(session, current_user(), report_id, image_of_opened_report=True)
    uids = _slice_uids(session, found)
    if not uids:
        raise NotFound(f"report {report_id} has no analysed series")
    if not 0 <= index < len(uids):
        raise NotFound(f"slice {index} is not in 0..{len(uids) - 1}")
    preset = request.args.get("window", "lung")
    if preset not in WINDOWS:
        raise InvalidInput(f"window must be one of {sorted(WINDOWS)}")
    centre_width = _free_window(request.args)
    path = instance_paths(session, [uids[index]], current_app.config["DICOM_STORAGE_DIR"]).get(uids[index])
    if path is None:
        raise NotFound(f"slice {index} is not stored here")
    # boxes=0: the viewer draws the boxes itself (to drag them) over a bare slice.
    boxes = [] if request.args.get("boxes") == "0" else [
        OverlayBox(f.x0, f.y0, f.x1, f.y1, f"#{f.id} {f.diameter_mm:.0f} mm")
        for f in found.findings
        if f.slice_index == index and f.review_status is not ReviewStatus.REJECTED
    ]
    png = render_overlay(path, boxes, preset, centre_width)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "private, no-store"})


def _free_window(args: Any) -> tuple[float, float] | None:
    """`wc` and `ww` (HU): a free window from the viewer's window/level drag, else None (the preset)."""
    if args.get("wc") is None and args.get("ww") is None:
        return None
    try:
        centre, width = float(args.get("wc", "")), float(args.get("ww", ""))
    except ValueError as exc:
        raise InvalidInput("wc and ww (window centre and width, HU) must be numbers") from exc
    if not (WINDOW_CENTRE_RANGE[0] <= centre <= WINDOW_CENTRE_RANGE[1]
            and WINDOW_WIDTH_RANGE[0] <= width <= WINDOW_WIDTH_RANGE[1]):
        raise InvalidInput(f"wc must be within {WINDOW_CENTRE_RANGE} and ww within {WINDOW_WIDTH_RANGE} HU")
    return centre, width


def _slice_uids(session: Session, report: DiagnosticReport) -> list[str]:
    job = session.get(AnalysisJob, report.analysis_job_id) if report.analysis_job_id else None
    return list(job.slice_sop_instance_uids or []) if job else []


@bp.post("/reports/<int:report_id>/findings/add")
@require_roles(Role.RADIOLOGIST)
def add_finding_page(report_id: int) -> ResponseReturnValue:
    """The "add a missed finding" form of the slice viewer; the slice number is 1-based as shown."""
    session = request_session()
    form = request.form
    preset = form.get("window", "lung") if form.get("window") in WINDOWS else "lung"
    slice_number = form.get("slice", type=int)
    anchor = ["slice-viewer"]  # the added finding's card once it exists

    def add() -> str:
        if slice_number is None:
            raise InvalidInput(_("a missed finding needs a whole slice number"))
        box = _form_box(form)
        finding = add_finding(session, current_user(), report_id, slice_number - 1, box, form.get("comment") or None)
        anchor[0] = f"finding-{finding.id}"
        return _("Finding %(id)s added on slice %(number)s.", id=finding.id, number=slice_number)

    form_action(session, add)
    return redirect(url_for("ai_services.report_page", report_id=report_id, window=preset,
                            slice=slice_number, _anchor=anchor[0]))


@bp.get("/reading")
@require_roles(Role.RADIOLOGIST)
def reading_list_page() -> ResponseReturnValue:
    session = request_session()
    found = reading_list_in_clinical_order(session, current_user())
    order = " > ".join(word_for(PRIORITY_WORDS, priority) for priority in PRIORITY_ORDER)
    page = render_template("ai_services/reading_list.html", entries=found, priority_order=order)
    return page


@bp.get("/reports")
@require_roles(Role.CLINICIAN, Role.PATIENT, Role.RADIOLOGIST, Role.ADMIN)
def reports_page() -> ResponseReturnValue:
    session = request_session()
    found = list_reports(session, current_user())
    page = render_template("ai_services/reports.html", reports=found)
    return page


@bp.route("/reports/<int:report_id>", methods=["GET", "POST"])
@require_roles()
def report_page(report_id: int) -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    preset = request.values.get("window", "lung")
    if preset not in WINDOWS:
        preset = "lung"
    if request.method == "POST":
        anchor: list[str | None] = [None]  # the decided finding's card

        if request.form.get("action") == "sign" and request.form.get("confirm") != "yes":
            # Signing cannot be undone: first show what would be signed, and sign only on the
            # confirmation posted from that preview (checked here, so it holds without JavaScript).
            try:
                preview = sign_preview(session, user, report_id, request.form.get("conclusion"))
            except DomainError as exc:
                flash(exc.message, "error")
                return redirect(url_for("ai_services.report_page", report_id=report_id, window=preset,
                                        slice=request.form.get("slice", type=int), _anchor="sign-form"))
            return render_template("ai_services/sign_confirm.html", preview=preview, window=preset,
                                   typed_conclusion=request.form.get("conclusion") or "",
                                   slice=request.form.get("slice", type=int))

        def act() -> str:
            if request.form.get("action") == "sign":
                sign_report(session, user, report_id, request.form.get("conclusion"))
                return _("Report signed. The referring clinician now has a consultation to follow it up.")
            finding_id = request.form.get("finding_id", type=int) or 0
            decision = _decision(request.form.get("decision"))
            box = _form_box(request.form) if decision is ReviewStatus.EDITED else None
            review_finding(session, user, report_id, finding_id, decision, box, request.form.get("comment") or None)
            anchor[0] = f"finding-{finding_id}"
            return _decision_message(finding_id, decision)

        form_action(session, act)
        # Back to the same window and slice the reader was on (the form carries the viewer's slice).
        return redirect(url_for("ai_services.report_page", report_id=report_id, window=preset,
                                slice=request.form.get("slice", type=int), _anchor=anchor[0]))
    found = get_report(session, user, report_id)
    kept = [f for f in found.findings if f.review_status is not ReviewStatus.REJECTED]
    slice_count = len(_slice_uids(session, found)) if user.role is not Role.PATIENT else 0
    priors = prior_reports(session, user, found) if user.role is not Role.PATIENT else []
    prior = prior_to_compare(session, user, found, request.args.get("prior", type=int), priors) if slice_count else None
    prior_count = len(_slice_uids(session, prior)) if prior else 0
    job = found.analysis_job
    # The viewer opens on the asked slice, else on the first kept finding's slice.
    current = request.args.get("slice", type=int) or (kept[0].slice_index + 1 if kept else 1)
    page = render_template(
        "ai_services/report.html", report=found, study=study_ref(session, found.study_id), window=preset,
        windows=list(WINDOWS),
        pending=[f.id for f in found.findings if f.review_status is ReviewStatus.PENDING], kept=kept,
        slice_count=slice_count, current_slice=min(max(current, 1), max(slice_count, 1)),
        analysis=found.analysis_job, context=reading_context(session, found), priors=priors,
        prior=prior if prior_count else None, prior_count=prior_count, window_values=WINDOWS,
        prior_slice=_matching_slice(current, slice_count, prior_count, request.args.get("prior_slice", type=int)),
        pixel_spacing=(job.pixel_spacing_mm if job and job.pixel_spacing_mm else None),
        model_card=found.analysis_job.model_version.card if found.analysis_job and found.analysis_job.model_version else None,
    )
    return page


def _matching_slice(current: int, count: int, prior_count: int, asked: int | None) -> int:
    """The prior's slice (1-based) shown beside the current one: the asked one, else the one at the
    same relative depth (the series may differ in length)."""
    if prior_count <= 0:
        return 1
    if asked is None:
        asked = 1 + round((current - 1) * (prior_count - 1) / max(count - 1, 1))
    return min(max(asked, 1), prior_count)


def _form_box(form: Any) -> Box:
    try:
        return Box(*(int(form.get(name, "")) for name in ("x0", "y0", "x1", "y1")))
    except ValueError as exc:
        raise InvalidInput(_("a box needs whole-number x0, y0, x1 and y1")) from exc


@bp.get("/models")
@require_roles(Role.ADMIN, Role.RADIOLOGIST)
def models_page() -> ResponseReturnValue:
    session = request_session()
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())).all()
    return render_template("ai_services/models.html", versions=versions, drift=drift_report(session),
                           drift_alpha=DRIFT_ALPHA, confidence_bins=CONFIDENCE_BINS, histogram_bars=histogram_bars)
