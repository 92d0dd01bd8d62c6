"""AI workflow: the model registry, analysing a study in three steps (prepare, infer, record),
the radiologist's review of each finding, and signing the report.

Analysis is split so that the slow middle step holds no database transaction: progress is
committed slice batch by slice batch and the web page can show it live.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ai_services.applicability import NOT_APPLICABLE_PREFIX
from ai_services.events import AnalysisCompleted, AnalysisFailed, AnalysisNotApplicable, ReportSigned
from ai_services.inference import Detection, LesionDetector, manifest_path_for, sha256_of_file
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    Finding,
    FindingReview,
    FindingSource,
    ModelPackage,
    ModelStatus,
    ModelVersion,
    PackageAnalysis,
    ReportStatus,
    ReviewStatus,
)
from ai_services.routing import detector_not_routed
from hospital.access import ensure_patient_access, patient_filter
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.errors import Conflict, Forbidden, InvalidInput, NotFound
from hospital.events import iso_instant
from hospital.i18n import format_number, ngettext
from hospital.i18n import gettext as _
from hospital.jobs import enqueue, publish
from hospital.models import JobRecord, JobStatus, Role, User
from hospital.records import load_record
from imaging_orders.archive.public import (
    SeriesFiles,
    StudyRef,
    study_ref,
    study_series,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "lesion-detector"


class ModelRegistryError(Exception):
    """A weights file and its manifest disagree, or a version would be overwritten."""


def register_model_version(session: Session, weights_path: Path, *, activate: bool) -> ModelVersion:
    """Record a trained version from its weights file and manifest; versions are immutable."""
    manifest = json.loads(manifest_path_for(weights_path).read_text())
    digest = sha256_of_file(weights_path)
    if manifest.get("sha256") not in (None, digest):
        raise ModelRegistryError(f"{weights_path}: sha256 {digest} does not match its manifest {manifest['sha256']}")
    name = str(manifest.get("model_name") or manifest.get("name") or DEFAULT_MODEL_NAME)
    version = str(manifest.get("version") or digest[:12])
    existing = session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))
    if existing is not None:
        if existing.weights_sha256 != digest:
            raise ModelRegistryError(f"{name} {version} is already registered with other weights")
        model_version = existing
    else:
        model_version = ModelVersion(
            name=name, version=version, weights_path=str(weights_path), weights_sha256=digest,
            manifest=manifest, metrics=dict(manifest.get("metrics") or manifest.get("heldout_metrics") or {}),
        )
        session.add(model_version)
        session.flush()
    if activate:
        activate_model_version(session, model_version)
    return model_version


def activate_model_version(session: Session, model_version: ModelVersion) -> None:
    for other in session.scalars(
        select(ModelVersion).where(ModelVersion.name == model_version.name, ModelVersion.active.is_(True))
    ):
        other.active = False
        other.status = ModelStatus.RETIRED
    session.flush()
    model_version.active = True
    model_version.status = ModelStatus.ACTIVE


def active_model_version(session: Session, name: str = DEFAULT_MODEL_NAME) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.active.is_(True)))


@functools.lru_cache(maxsize=4)
def load_detector(weights_path: str, sha256: str) -> LesionDetector:
    """Load a model once per worker process (keyed by path and digest, so a new version reloads)."""
    detector = LesionDetector.load(Path(weights_path))
    logger.info("loaded AI model %s (sha256 %s)", weights_path, sha256[:12])
    return detector


@dataclass(frozen=True)
class AnalysisPlan:
    job_id: int
    study_id: int
    model_version_id: int
    weights_path: str
    weights_sha256: str
    instance_paths: list[Path]
    # Set when routing rules keep the detector off this study: the report says so, no model runs.
    not_routed_reason: str | None = None


def queue_analysis(session: Session, study_id: int) -> AnalysisJob:
    """The study's analysis job, created once; a rerun resets the same row."""
    job = session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
    if job is None:
        job = AnalysisJob(study_id=study_id)
        session.add(job)
        session.flush()
    return job


def prepare_analysis(session: Session, study_id: int, storage_dir: Path) -> AnalysisPlan | None:
    """Step 1: mark the job running and list the slices. None when there is nothing to do."""
    study = study_ref(session, study_id)
    if study is None or not study.complete or study.patient_id is None:
        logger.info("study %s is gone, incomplete or unmatched; no analysis", study_id)
        return None
    report = session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == study_id))
    if report is not None and (report.status is not ReportStatus.PRELIMINARY or _has_reviews(session, report.id)):
        logger.info("report %s is already reviewed or signed; analysis is not redone", report.id)
        return None
    model_version = active_model_version(session)
    if model_version is None:
        raise ModelRegistryError("no active AI model version; run `hospital ai register`")
    series = series_to_analyse(study_id, study_series(session, study_id, storage_dir))
    not_routed = detector_not_routed(session, model_version.name, study, series)
    job = queue_analysis(session, study_id)
    job.status = AnalysisStatus.RUNNING
    job.attempts += 1
    job.started_at = utcnow()
    job.finished_at = None
    job.error = None
    job.not_applicable_reason = None
    job.model_version_id = model_version.id
    job.slices_done = 0
    job.slices_total = len(series.instances)
    job.series_instance_uid = series.series_instance_uid
    return AnalysisPlan(
        job_id=job.id, study_id=study_id, model_version_id=model_version.id,
        weights_path=model_version.weights_path, weights_sha256=model_version.weights_sha256,
        instance_paths=[instance.path for instance in series.instances], not_routed_reason=not_routed,
    )


def series_to_analyse(study_id: int, series: tuple[SeriesFiles, ...]) -> SeriesFiles:
    """The largest CT series; in a study without CT, the largest series of any modality, so that
    the applicability gate says why the model does not read it (an NM study is "not applicable",
    not a failed job)."""
    candidates = [s for s in series if s.instances]
    if not candidates:
        raise InvalidInput(f"study {study_id} has no images to analyse")
    return max(candidates, key=lambda s: (s.modality == "CT", len(s.instances)))


def _has_reviews(session: Session, report_id: int) -> bool:
    return session.scalar(
        select(FindingReview.id).join(Finding).where(Finding.report_id == report_id).limit(1)
    ) is not None


def record_progress(session: Session, job_id: int, done: int, total: int) -> None:
    job = session.get(AnalysisJob, job_id)
    if job is not None:
        job.slices_done = done
        job.slices_total = total


def record_failure(session: Session, job_id: int, error: str) -> None:
    job = session.get(AnalysisJob, job_id)
    if job is not None:
        job.status = AnalysisStatus.FAILED
        job.error = error[:4000]
        job.finished_at = utcnow()


FAILED_PREFIX = "AI analysis failed: "


def record_failed_analysis(session: Session, plan: AnalysisPlan, reason: str) -> DiagnosticReport | None:
    """The model failed on the study (step 2 raised): the job ends FAILED with the reason, and a
    study that had no report gets its preliminary report saying so, with no AI findings, so that
    it is read and signed like any other (a model that fails fails alone) and the partner models
    routed to it still read it (`AnalysisFailed`). A report already there (an earlier analysis's)
    keeps what it has. Returns the report made, if one was."""
    record_failure(session, plan.job_id, reason)
    job, study = session.get(AnalysisJob, plan.job_id), study_ref(session, plan.study_id)
    if job is None or study is None or study.patient_id is None:
        return None
    if session.scalar(select(DiagnosticReport.id).where(DiagnosticReport.study_id == study.study_id)) is not None:
        return None
    report = DiagnosticReport(study_id=study.study_id, patient_id=study.patient_id, referral_id=study.referral_id,
                              analysis_job_id=job.id, issued_at=utcnow(), conclusion=failed_conclusion(reason))
    session.add(report)
    session.flush()
    publish(session, AnalysisFailed(report_id=report.id, study_id=study.study_id, patient_id=report.patient_id,
                                    organization_id=study.organization_id, reason=reason[:500]))
    logger.info("study %s: AI analysis failed (%s); report %s made without AI findings", study.study_id, reason,
                report.id)
    return report


def failed_conclusion(reason: str) -> str:
    return f"{FAILED_PREFIX}{reason[:500]}. No AI findings; awaiting the radiologist's reading."


def record_analysis(
    session: Session,
    plan: AnalysisPlan,
    sop_instance_uids: list[str],
    pixel_spacing_mm: tuple[float, float],
    detections: list[Detection],
) -> DiagnosticReport:
    """Step 3: write the findings and the preliminary report. A rerun replaces, never adds."""
    job, study, report = _job_and_preliminary_report(session, plan)
    for detection in detections:
        x0, y0, x1, y1 = detection.bbox
        session.add(
            Finding(
                report_id=report.id, patient_id=study.patient_id, source=FindingSource.AI,
                model_version_id=plan.model_version_id,
                sop_instance_uid=sop_instance_uids[detection.slice_index], slice_index=detection.slice_index,
                x0=x0, y0=y0, x1=x1, y1=y1, diameter_mm=round(detection.diameter_mm, 1),
                n_slices=detection.n_slices, confidence=round(detection.confidence, 4),
            )
        )
    job.status = AnalysisStatus.COMPLETED
    job.slices_done = job.slices_total = len(sop_instance_uids)
    job.slice_sop_instance_uids = list(sop_instance_uids)
    job.pixel_spacing_mm = [float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1])]
    job.finished_at = utcnow()
    report.analysis_job_id = job.id
    report.issued_at = utcnow()
    report.conclusion = ai_conclusion(detections)
    session.flush()
    model_version = session.get(ModelVersion, plan.model_version_id)
    package = model_version.model_package if model_version is not None else None
    priced = {} if package is None else {
        "package_id": package.id, "package_name": package.name, "package_version": package.version,
        "partner_organization_id": package.partner_organization_id, "price_minor": package.price_minor,
        "currency": package.currency, "partner_share_bp": package.partner_share_bp,
    }
    publish(session, AnalysisCompleted(
        report_id=report.id, study_id=study.study_id, patient_id=report.patient_id,
        organization_id=study.organization_id, issued_at=iso_instant(report.issued_at), **priced,
    ))
    return report


def record_not_applicable(
    session: Session,
    plan: AnalysisPlan,
    reason: str,
    sop_instance_uids: list[str],
    pixel_spacing_mm: tuple[float, float] | None,
) -> DiagnosticReport:
    """Step 3 when the applicability gate refused the series: the job ends NOT_APPLICABLE with its
    reason and the preliminary report says "AI not applicable: <reason>", with no AI findings.

    No `AnalysisCompleted` is published: the model read nothing, so nothing is billed as an AI
    analysis and no AI SR is made for it. `AnalysisNotApplicable` is, so the partner models routed to
    the study (an MR model for an MR study) still read it into this report (and the SR made then
    holds their findings only). The radiologist reads and
    signs the study as usual; the slices (when they could be read) stay viewable on the report
    page. A rerun replaces, never adds (partner runs are kept once per study and package).
    """
    job, study, report = _job_and_preliminary_report(session, plan)
    job.status = AnalysisStatus.NOT_APPLICABLE
    job.not_applicable_reason = reason
    job.slices_done = 0
    job.slices_total = len(sop_instance_uids)
    job.slice_sop_instance_uids = list(sop_instance_uids)
    job.pixel_spacing_mm = [float(v) for v in pixel_spacing_mm] if pixel_spacing_mm else []
    job.finished_at = utcnow()
    report.analysis_job_id = job.id
    report.issued_at = utcnow()
    report.conclusion = not_applicable_conclusion(reason)
    session.flush()
    publish(session, AnalysisNotApplicable(
        report_id=report.id, study_id=study.study_id, patient_id=report.patient_id,
        organization_id=study.organization_id, reason=reason,
    ))
    logger.info("study %s: AI not applicable (%s)", study.study_id, reason)
    return report


def _job_and_preliminary_report(session: Session, plan: AnalysisPlan) -> tuple[AnalysisJob, StudyRef, DiagnosticReport]:
    """The plan's job, its study and the study's preliminary report (made if missing), with the
    report's earlier AI findings removed: a rerun replaces them."""
    job = session.get(AnalysisJob, plan.job_id)
    study = study_ref(session, plan.study_id)
    if job is None or study is None or study.patient_id is None:
        raise NotFound(f"analysis job {plan.job_id} or its study vanished")
    report = session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == study.study_id))
    if report is None:
        report = DiagnosticReport(study_id=study.study_id, patient_id=study.patient_id, referral_id=study.referral_id)
        session.add(report)
        session.flush()
    elif report.status is not ReportStatus.PRELIMINARY:
        raise Conflict(f"report {report.id} is {report.status.value}; its findings are not replaced")
    # The built-in model's findings only: a partner model's stay with its run (package_runs).
    session.execute(delete(Finding).where(Finding.report_id == report.id, Finding.source == FindingSource.AI,
                                          Finding.package_analysis_id.is_(None)))
    return job, study, report


def not_applicable_conclusion(reason: str) -> str:
    return f"{NOT_APPLICABLE_PREFIX}{reason}. No AI findings; awaiting the radiologist's reading."


def ai_conclusion(detections: list[Detection]) -> str:
    if not detections:
        return "AI analysis: no suspected abnormality flagged. Awaiting radiologist review."
    largest = max(d.diameter_mm for d in detections)
    return (
        f"AI analysis: {len(detections)} suspected abnormalit{'y' if len(detections) == 1 else 'ies'} flagged "
        f"for review (largest {largest:.0f} mm). Awaiting radiologist review."
    )


def get_report(
    session: Session, user: User, report_id: int, action: str = "R", *, image_of_opened_report: bool = False
) -> DiagnosticReport:
    """The report, if `user` may `action` it. `image_of_opened_report`: the fetch of one of its
    images (a slice, a key image) as a viewer scrolls; not another audited read when the user has
    just read the report (`hospital.records`)."""
    report = load_record(session, user, DiagnosticReport, report_id, entity_type="DiagnosticReport", noun="report",
                         action=action, part_of_opened_record=image_of_opened_report)
    if user.role is Role.PATIENT and report.status is ReportStatus.PRELIMINARY:
        # A patient sees the report once a radiologist has signed it, not the machine's draft (the
        # read audited above is rolled back with this refusal).
        raise NotFound(_("Report %(id)s is not available yet: it appears once a radiologist has signed it.", id=report_id),
                       for_people=True)
    return report


def list_reports(session: Session, user: User, status: ReportStatus | None = None) -> list[DiagnosticReport]:
    query = select(DiagnosticReport).where(patient_filter(user, DiagnosticReport.patient_id, "DiagnosticReport"))
    if user.role is Role.PATIENT:
        query = query.where(DiagnosticReport.status != ReportStatus.PRELIMINARY)
    if status is not None:
        query = query.where(DiagnosticReport.status == status)
    reports = list(session.scalars(query.order_by(DiagnosticReport.issued_at.desc()).limit(500)))
    record_access(session, user, "E", "DiagnosticReport", None, description=f"list reports ({len(reports)})",
                  at_response=True)
    return reports


def reading_list(session: Session, user: User) -> list[DiagnosticReport]:
    """Preliminary reports of the radiologist's centre, most urgent first (largest confident finding)."""
    reports = list_reports(session, user, ReportStatus.PRELIMINARY)
    return sorted(reports, key=urgency, reverse=True)


def urgency(report: DiagnosticReport) -> float:
    scores = [(f.confidence or 0.0) * f.diameter_mm for f in report.findings if f.review_status is not ReviewStatus.REJECTED]
    return max(scores, default=0.0)


def radiologist_report(session: Session, user: User, report_id: int) -> DiagnosticReport:
    if user.role is not Role.RADIOLOGIST:
        raise Forbidden(_("only a radiologist can review or sign a report"))
    report = get_report(session, user, report_id, action="U")
    if report.status is not ReportStatus.PRELIMINARY:
        raise Conflict(_("report %(id)s is already signed; it can no longer be changed", id=report_id))
    return report


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    def validate(self) -> Box:
        if self.x0 < 0 or self.y0 < 0 or self.x1 <= self.x0 or self.y1 <= self.y0:
            raise InvalidInput(_("a box needs 0 <= x0 < x1 and 0 <= y0 < y1, got x0=%(x0)s, y0=%(y0)s, x1=%(x1)s, y1=%(y1)s",
                                  x0=self.x0, y0=self.y0, x1=self.x1, y1=self.y1))
        return self


def _diameter_mm(session: Session, report: DiagnosticReport, box: Box) -> float:
    job = session.get(AnalysisJob, report.analysis_job_id) if report.analysis_job_id else None
    row_mm, col_mm = (job.pixel_spacing_mm if job and job.pixel_spacing_mm else [1.0, 1.0])
    return round(max((box.x1 - box.x0) * col_mm, (box.y1 - box.y0) * row_mm), 1)


def review_finding(
    session: Session, user: User, report_id: int, finding_id: int, decision: ReviewStatus,
    box: Box | None = None, comment: str | None = None,
) -> Finding:
    """Accept, reject or edit (move/resize) one finding. Every decision is kept as a label."""
    report = radiologist_report(session, user, report_id)
    finding = session.get(Finding, finding_id)
    if finding is None or finding.report_id != report.id:
        raise NotFound(_("finding %(finding)s is not on report %(report)s", finding=finding_id, report=report_id))
    if decision is ReviewStatus.PENDING:
        raise InvalidInput(_("a decision is accepted, rejected or edited"))
    previous = {"x0": finding.x0, "y0": finding.y0, "x1": finding.x1, "y1": finding.y1,
                "diameter_mm": finding.diameter_mm, "review_status": finding.review_status.value}
    if decision is ReviewStatus.EDITED:
        if box is None:
            raise InvalidInput(_("an edit needs the corrected box"))
        box.validate()
        finding.x0, finding.y0, finding.x1, finding.y1 = box.x0, box.y0, box.x1, box.y1
        finding.diameter_mm = _diameter_mm(session, report, box)
    finding.review_status = decision
    session.add(FindingReview(finding_id=finding.id, reviewer_user_id=user.id, decision=decision, previous=previous, comment=comment))
    record_access(session, user, "U", "Observation", finding.id, patient_id=finding.patient_id, description=decision.value)
    return finding


def add_finding(
    session: Session, user: User, report_id: int, slice_index: int, box: Box, comment: str | None = None
) -> Finding:
    """A finding the AI missed, added by the radiologist (a positive label for retraining)."""
    report = radiologist_report(session, user, report_id)
    job = session.get(AnalysisJob, report.analysis_job_id) if report.analysis_job_id else None
    uids = job.slice_sop_instance_uids if job else []
    if not 0 <= slice_index < len(uids):
        raise InvalidInput(_("there is no slice %(number)s: the series has slices 1 to %(count)s",
                               number=slice_index + 1, count=len(uids)))
    box.validate()
    finding = Finding(
        report_id=report.id, patient_id=report.patient_id, source=FindingSource.RADIOLOGIST,
        sop_instance_uid=uids[slice_index], slice_index=slice_index, x0=box.x0, y0=box.y0, x1=box.x1, y1=box.y1,
        diameter_mm=_diameter_mm(session, report, box), confidence=None, review_status=ReviewStatus.ACCEPTED,
    )
    session.add(finding)
    session.flush()
    session.add(FindingReview(finding_id=finding.id, reviewer_user_id=user.id, decision=ReviewStatus.ACCEPTED,
                              previous={"added": True}, comment=comment))
    record_access(session, user, "C", "Observation", finding.id, patient_id=report.patient_id)
    return finding


def signing_conclusion(report: DiagnosticReport, conclusion: str | None) -> str:
    """The conclusion a signature records: the radiologist's text, else a summary of the kept
    findings (what the sign preview shows is what `sign_report` stores), in the language the
    radiologist reads the preview in: the signed text is theirs."""
    kept = [f for f in report.findings if f.review_status is not ReviewStatus.REJECTED]
    if (conclusion or "").strip():
        return (conclusion or "").strip()
    # A partner model's class for the study is no sized abnormality: it is said as its label.
    areas = [f for f in kept if f.kind != "classification"]
    said = []
    if areas:
        said.append(ngettext("%(num)d abnormality confirmed by the radiologist (largest %(size)s mm).",
                             "%(num)d abnormalities confirmed by the radiologist (largest %(size)s mm).",
                             len(areas), size=format_number(max(f.diameter_mm for f in areas), 0)))
    for finding in kept:
        if finding.kind == "classification" and finding.package is not None:
            said.append(_("%(model)s classified the study as “%(label)s” (probability %(percent)s), confirmed by "
                          "the radiologist.", model=finding.package.label, label=finding.label or "",
                          percent=probability_percent(finding.confidence)))
    if not said:
        return _("0 abnormalities confirmed by the radiologist: no abnormality.")
    return " ".join(str(words) for words in said)


@dataclass(frozen=True)
class FindingGroup:
    """Findings as a reader meets them: the built-in model's and the radiologist's (`package`
    None) first, then each partner model's under its name, version and partner."""

    package: ModelPackage | None
    findings: tuple[Finding, ...]


def findings_by_model(findings: Sequence[Finding]) -> list[FindingGroup]:
    """`findings` grouped by the model that made them (the built-in group first, then the partner
    models in the order they ran), each group in the given order."""
    groups: dict[int | None, list[Finding]] = {None: []}
    for finding in sorted(findings, key=lambda f: f.package_analysis_id or 0):
        groups.setdefault(finding.package_analysis_id, []).append(finding)
    ordered = sorted(groups.items(), key=lambda item: item[0] or 0)
    return [FindingGroup(group[0].package if key is not None else None, tuple(group))
            for key, group in ordered if group]


def probability_percent(probability: float | None) -> str:
    """"87%": a partner classifier's probability for its class, in the reader's number format (no
    word beside it, as a detector's confidence has: it is the model's probability for the class)."""
    return f"{format_number((probability or 0.0) * 100, 0)}%"


def undecided_findings_message(pending: list[int]) -> str:
    """Why a report with undecided findings cannot be signed yet (the preview and the signature)."""
    return ngettext("finding %(ids)s has no decision yet; accept, reject or edit it before signing",
                    "findings %(ids)s have no decision yet; accept, reject or edit each before signing",
                    len(pending), ids=", ".join(str(finding_id) for finding_id in pending))


# How long a report waits for a partner model run still queued or running before it may be signed
# without it (AI_PACKAGE_SIGNING_WAIT_SECONDS overrides).
PACKAGE_SIGNING_WAIT = timedelta(minutes=30)


def package_signing_wait() -> timedelta:
    seconds = current_app.config.get("AI_PACKAGE_SIGNING_WAIT_SECONDS")
    return timedelta(seconds=seconds) if seconds is not None else PACKAGE_SIGNING_WAIT


def unfinished_package_runs(session: Session, report: DiagnosticReport, *, lock: bool = False,
                            now: datetime | None = None) -> tuple[list[PackageAnalysis], list[PackageAnalysis]]:
    """The report's partner model runs still queued or running: those still within the signing
    wait (counted from when the run was queued), and those past it. `lock`: held until the
    signature commits, so a worker recording a run's findings and a signature do not cross (the
    worker locks the same row: either its findings are in before the signature reads them, or it
    finds the run given up and adds nothing)."""
    query = (select(PackageAnalysis)
             .where(PackageAnalysis.report_id == report.id,
                    PackageAnalysis.status.in_((AnalysisStatus.QUEUED, AnalysisStatus.RUNNING)))
             .order_by(PackageAnalysis.id))
    runs = list(session.scalars(query.with_for_update() if lock else query))
    deadline = (now or utcnow()) - package_signing_wait()
    return [r for r in runs if r.created_at > deadline], [r for r in runs if r.created_at <= deadline]


def unfinished_runs_message(waiting: list[PackageAnalysis]) -> str:
    """Why a report cannot be signed while partner models read its study (the preview and the signature)."""
    minutes = int(package_signing_wait().total_seconds() // 60)
    return str(ngettext("the partner model %(models)s has not finished reading this study; sign once its findings are "
                    "in the report (a run still unfinished %(minutes)s minutes after it was queued is given up)",
                    "the partner models %(models)s have not finished reading this study; sign once their findings "
                    "are in the report (a run still unfinished %(minutes)s minutes after it was queued is given up)",
                    len(waiting), models=", ".join(r.model_package.label for r in waiting),
                    minutes=format_number(minutes, 0)))


def give_up_package_runs(session: Session, overdue: list[PackageAnalysis]) -> None:
    """The report is signed without these runs: each fails with the reason (a late answer is then
    dropped by `package_runs.record_package_run`, so nothing is added and nothing billed)."""
    if not overdue:
        return
    minutes = int(package_signing_wait().total_seconds() // 60)
    session.execute(
        update(PackageAnalysis)
        .where(PackageAnalysis.id.in_([r.id for r in overdue]),
               PackageAnalysis.status.in_((AnalysisStatus.QUEUED, AnalysisStatus.RUNNING)))
        .values(status=AnalysisStatus.FAILED, finished_at=utcnow(),
                error=f"not finished {minutes} minutes after it was queued; the report was signed without it")
        .execution_options(synchronize_session="fetch")
    )
    logger.info("report signed without partner model runs %s (over the wait)", [r.id for r in overdue])


def sign_report(session: Session, user: User, report_id: int, conclusion: str | None = None) -> DiagnosticReport:
    """Make the report final. Every AI finding must have a decision first, and every partner model
    routed to the study must have finished (or waited past `package_signing_wait`, then it is given
    up)."""
    report = radiologist_report(session, user, report_id)
    waiting, overdue = unfinished_package_runs(session, report, lock=True)
    if waiting:
        raise Conflict(unfinished_runs_message(waiting))
    give_up_package_runs(session, overdue)
    # Read after the runs' lock: a run that finished just before has its findings in.
    session.expire(report, ["findings"])
    pending = [f.id for f in report.findings if f.review_status is ReviewStatus.PENDING]
    if pending:
        raise Conflict(undecided_findings_message(pending))
    report.conclusion = signing_conclusion(report, conclusion)
    report.status = ReportStatus.FINAL
    report.signed_by_user_id = user.id
    report.signed_at = utcnow()
    record_access(session, user, "U", "DiagnosticReport", report.id, patient_id=report.patient_id, description="signed")
    publish(session, ReportSigned(report_id=report.id, patient_id=report.patient_id, referral_id=report.referral_id))
    return report


def analysis_status(session: Session, user: User, study_id: int) -> AnalysisJob:
    job = session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
    if job is None:
        raise NotFound(f"study {study_id} has no analysis")
    study = study_ref(session, study_id)
    ensure_patient_access(session, user, study.patient_id if study else None, "ImagingStudy", study_id)
    return job


REPORT_OUTPUTS_HANDLER = "ai_services.jobs.make_report_outputs"


def failed_outputs(session: Session, study_id: int) -> str | None:
    """Why storing the study's report outputs (SR, key images) last failed, or None when the newest
    attempt did not fail. The analysis can be complete while this job failed: the worklist says so."""
    report_id = session.scalar(select(DiagnosticReport.id).where(DiagnosticReport.study_id == study_id))
    if report_id is None:
        return None
    # Failed jobs are few and indexed by status; a later attempt for the report supersedes it.
    failed = session.scalar(
        select(JobRecord).where(JobRecord.status == JobStatus.FAILED, JobRecord.handler == REPORT_OUTPUTS_HANDLER,
                                JobRecord.payload["report_id"].as_integer() == report_id)
        .order_by(JobRecord.id.desc()).limit(1)
    )
    if failed is None:
        return None
    superseded = session.scalar(
        select(JobRecord.id).where(JobRecord.id > failed.id, JobRecord.handler == REPORT_OUTPUTS_HANDLER,
                                   JobRecord.payload["report_id"].as_integer() == report_id).limit(1)
    )
    if superseded is not None:
        return None
    return (failed.last_error or "unknown error").strip().splitlines()[-1][:200]


def request_rerun(session: Session, user: User, study_id: int) -> AnalysisJob:
    """Re-run a failed or finished analysis (replaces its findings while unreviewed)."""
    if user.role not in (Role.RADIOLOGIST, Role.IMAGING_STAFF, Role.ADMIN):
        raise Forbidden("only imaging staff, radiologists or administrators can re-run an analysis")
    job = analysis_status(session, user, study_id)
    if job.status is AnalysisStatus.RUNNING:
        raise Conflict("the analysis is running")
    job.status = AnalysisStatus.QUEUED
    enqueue(session, "ai_services.jobs.analyse_study_again", queue="ai", study_id=study_id)
    return job


def finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "id": finding.id, "source": finding.source.value, "slice_index": finding.slice_index,
        "sop_instance_uid": finding.sop_instance_uid, "box": [finding.x0, finding.y0, finding.x1, finding.y1],
        "diameter_mm": finding.diameter_mm, "n_slices": finding.n_slices, "confidence": finding.confidence,
        "review_status": finding.review_status.value, "body_site": finding.body_site,
        "model_version_id": finding.model_version_id, "fhir": f"Observation/{finding.id}",
        "package_analysis_id": finding.package_analysis_id, "label": finding.label, "volume_mm3": finding.volume_mm3,
        "model": (finding.package_analysis.model_package.label if finding.package_analysis
                  else finding.model_version.label if finding.model_version else None),
    }

