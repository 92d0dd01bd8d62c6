"""Partner model packages on studies: after the built-in model has made a study's preliminary
report, every approved package version a routing rule sends to the study runs on it (in the
sandbox, one after another), and each run's outputs become findings of that same report, marked
with the run, for the radiologist to accept or reject like the built-in ones.

One row per (study, package version) in `package_analysis` is the promise that a package reads a
study once: made `queued` when the study is routed, claimed `running` by a conditional UPDATE just
before it runs (counting the attempt), ended `completed` (its findings written,
`PackageAnalysisCompleted` published for billing) or `failed` with the reason in words. A package
that fails, crashes or runs past a limit fails alone: the built-in findings, the other packages
and the report stand.

A worker that dies mid-run (killed, out of memory, the machine gone) leaves its run `running`
with nobody on it. `reclaim_stalled_package_runs` (periodic) puts such a run back in the queue
once it has been claimed longer than the sandbox's time limit plus a margin, at most
`max_attempts` claims in all, then fails it with the reason. Only the answer of the current
attempt is recorded (the attempt number is the claim's token), so a late answer from a worker
thought dead neither adds findings twice nor bills twice.

How a package's output becomes findings (`findings_from_output`, by its manifest's output kind)
is `ai_services.package_outputs`: the same rules score a package on the held-out set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ai_services.events import PackageAnalysisCompleted
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    Finding,
    FindingSource,
    PackageAnalysis,
    ReportStatus,
)
from ai_services.package_outputs import PackageOutputError, findings_from_output
from ai_services.routing import packages_for_study, study_facts
from ai_services.sandbox import InputGeometry, PackageRun
from ai_services.service import series_to_analyse
from hospital.clock import utcnow
from hospital.events import iso_instant
from hospital.jobs import publish
from imaging_orders.archive.public import study_ref, study_series

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageToRun:
    analysis_id: int
    label: str
    root: Path
    manifest: dict[str, Any]


@dataclass(frozen=True)
class PackageRunPlan:
    """What the job needs to run the routed packages on a study: the slices of its series, and the
    runs still queued (none when every routed package has already run or is running)."""

    report_id: int
    study_id: int
    instance_paths: list[Path]
    runs: list[PackageToRun]


def plan_package_runs(session: Session, report_id: int, storage_dir: Path) -> PackageRunPlan | None:
    """Route the report's study and queue a run of each package it gets (once per study and
    package version). None when the report is gone, signed, or its study has no images."""
    report = session.get(DiagnosticReport, report_id)
    if report is None or report.status is not ReportStatus.PRELIMINARY:
        logger.info("report %s is gone or signed; no partner models run on it", report_id)
        return None
    study = study_ref(session, report.study_id)
    all_series = study_series(session, report.study_id, storage_dir) if study is not None else ()
    if study is None or not any(s.instances for s in all_series):
        return None
    job = session.get(AnalysisJob, report.analysis_job_id) if report.analysis_job_id else None
    # The series the built-in model read (its slice numbers are the report's), else the same choice.
    series = next((s for s in all_series if job is not None and s.series_instance_uid == job.series_instance_uid),
                  None) or series_to_analyse(study.study_id, all_series)
    packages = packages_for_study(session, study_facts(session, study, series))
    for package in packages:
        _queue_once(session, study.study_id, report.id, package.id)
    queued = session.scalars(
        select(PackageAnalysis).where(PackageAnalysis.study_id == study.study_id,
                                      PackageAnalysis.status == AnalysisStatus.QUEUED)
        .order_by(PackageAnalysis.id)
    ).all()
    runs = [PackageToRun(a.id, a.model_package.label, Path(a.model_package.storage_path), dict(a.model_package.manifest))
            for a in queued]
    return PackageRunPlan(report.id, study.study_id, [i.path for i in series.instances], runs)


def _queue_once(session: Session, study_id: int, report_id: int, package_id: int) -> None:
    exists = select(PackageAnalysis.id).where(PackageAnalysis.study_id == study_id,
                                              PackageAnalysis.model_package_id == package_id)
    if session.scalar(exists) is not None:
        return
    try:
        with session.begin_nested():
            session.add(PackageAnalysis(study_id=study_id, report_id=report_id, model_package_id=package_id))
    except IntegrityError:
        # Another delivery of the same event queued it first; that row stands.
        if session.scalar(exists) is None:
            raise


def claim_package_run(session: Session, analysis_id: int) -> int | None:
    """Mark a queued run running and count the attempt: the attempt's number (the claim's token,
    given back when recording its answer), or None when another worker has it or it has ended."""
    claimed = session.execute(
        update(PackageAnalysis)
        .where(PackageAnalysis.id == analysis_id, PackageAnalysis.status == AnalysisStatus.QUEUED)
        .values(status=AnalysisStatus.RUNNING, started_at=utcnow(), attempts=PackageAnalysis.attempts + 1)
        .returning(PackageAnalysis.attempts)
    )
    return claimed.scalar_one_or_none()


def _is_current_attempt(analysis: PackageAnalysis, attempt: int | None) -> bool:
    return attempt is None or (analysis.status is AnalysisStatus.RUNNING and analysis.attempts == attempt)


def record_package_failure(session: Session, analysis_id: int, reason: str, seconds: float | None = None,
                           attempt: int | None = None) -> None:
    """The run failed (the package crashed or ran past a limit, or the study could not be given to
    it): the reason is kept for staff; nothing is added to the report and nothing is billed.
    `attempt`: the claim that failed; nothing is changed when the run has been reclaimed since."""
    analysis = session.get(PackageAnalysis, analysis_id, with_for_update=True)
    if analysis is None or analysis.status is AnalysisStatus.COMPLETED:
        return
    if not _is_current_attempt(analysis, attempt):
        logger.info("partner model run %s: attempt %s failed after it was reclaimed; not recorded", analysis_id, attempt)
        return
    analysis.status = AnalysisStatus.FAILED
    analysis.error = reason[:4000]
    analysis.seconds = round(seconds, 3) if seconds is not None else None
    analysis.finished_at = utcnow()
    logger.info("partner model run %s failed: %s", analysis_id, reason)


def record_package_run(session: Session, analysis_id: int, run: PackageRun, geometry: InputGeometry,
                       study_spacing_mm: tuple[float, float], sop_instance_uids: list[str],
                       attempt: int | None = None) -> PackageAnalysis | None:
    """The sandbox's answer for one run: its findings into the report and the run completed (and
    `PackageAnalysisCompleted` published), or the run failed with the reason. The answer of an
    `attempt` that has been reclaimed since (`reclaim_stalled_package_runs`) is dropped."""
    analysis = session.get(PackageAnalysis, analysis_id, with_for_update=True)
    if analysis is None or analysis.status is not AnalysisStatus.RUNNING:
        return analysis
    if not _is_current_attempt(analysis, attempt):
        logger.info("partner model run %s: the answer of attempt %s came after it was reclaimed; dropped",
                    analysis_id, attempt)
        return analysis
    if run.reason is not None or run.result.get("error"):
        record_package_failure(session, analysis_id, run.reason or f"the model failed on the study: {run.result['error']}",
                               run.seconds)
        return analysis
    report = session.get(DiagnosticReport, analysis.report_id)
    if report is None or report.status is not ReportStatus.PRELIMINARY:
        record_package_failure(session, analysis_id, "the report was signed before the model finished; "
                               "its outputs were not added", run.seconds)
        return analysis
    package = analysis.model_package
    cases = run.result.get("cases") or []
    try:
        if len(cases) != 1:
            raise PackageOutputError(f"expected 1 result for the study, got {len(cases)}")
        case = cases[0]
        found = findings_from_output(case.get("values") or [], [int(v) for v in case.get("shape", [])],
                                     package.manifest, geometry, study_spacing_mm)
    except PackageOutputError as exc:
        record_package_failure(session, analysis_id, f"the model's output was not usable: {exc}", run.seconds)
        return analysis
    added = []
    for item in found:
        x0, y0, x1, y1 = item.box
        finding = Finding(
            report_id=report.id, patient_id=report.patient_id, source=FindingSource.AI,
            package_analysis_id=analysis.id, sop_instance_uid=sop_instance_uids[geometry.key_slice],
            slice_index=geometry.key_slice, x0=x0, y0=y0, x1=x1, y1=y1, diameter_mm=item.diameter_mm,
            n_slices=item.n_slices, confidence=item.confidence, label=item.label, volume_mm3=item.volume_mm3,
        )
        session.add(finding)
        added.append((finding, item))
    session.flush()  # the findings' ids, which their masks are kept under
    rows, columns = geometry.study_size
    masks = [{"finding_id": finding.id, "rows": rows, "columns": columns, "runs": list(item.mask_runs)}
             for finding, item in added if item.mask_runs is not None]
    analysis.status = AnalysisStatus.COMPLETED
    analysis.error = None
    analysis.seconds = round(run.seconds, 3)
    analysis.finished_at = utcnow()
    outputs: dict[str, Any] = {"kind": package.output_kind, "shape": cases[0].get("shape"), "findings": len(found),
                               "mean": cases[0].get("mean")}
    if masks:
        outputs["masks"] = masks
    analysis.outputs = outputs
    session.flush()
    study = study_ref(session, analysis.study_id)
    publish(session, PackageAnalysisCompleted(
        analysis_id=analysis.id, report_id=report.id, study_id=analysis.study_id, patient_id=report.patient_id,
        organization_id=study.organization_id if study else None, package_id=package.id,
        package_name=package.name, package_version=package.version,
        partner_organization_id=package.partner_organization_id, price_minor=package.price_minor,
        currency=package.currency, partner_share_bp=package.partner_share_bp,
        completed_at=iso_instant(analysis.finished_at),
    ))
    logger.info("partner model %s read study %s: %d findings", package.label, analysis.study_id, len(found))
    return analysis



def reclaim_stalled_package_runs(session: Session, *, time_limit_seconds: float, margin_seconds: float,
                                 max_attempts: int, now: datetime | None = None) -> list[int]:
    """Runs claimed longer ago than the sandbox's time limit plus a margin have lost their worker
    (the sandbox ends a run at its limit, so a live worker has answered by then): each goes back to
    the queue, or fails with the reason once it has been claimed `max_attempts` times. Conditional
    UPDATEs, so two sweepers (or a sweeper and a late answer) never both act on one run. Returns
    the reports whose runs were queued again, for the caller to run."""
    now = now or utcnow()
    stalled = (PackageAnalysis.status == AnalysisStatus.RUNNING,
               PackageAnalysis.started_at < now - timedelta(seconds=time_limit_seconds + margin_seconds))
    requeued = session.execute(
        update(PackageAnalysis).where(*stalled, PackageAnalysis.attempts < max_attempts)
        .values(status=AnalysisStatus.QUEUED, started_at=None)
        .returning(PackageAnalysis.id, PackageAnalysis.report_id)
    ).all()
    reason = (f"the worker running it stopped without an answer {max_attempts} times (each time over the "
              f"{time_limit_seconds:g} s time limit plus {margin_seconds:g} s); given up")
    given_up = session.execute(
        update(PackageAnalysis).where(*stalled, PackageAnalysis.attempts >= max_attempts)
        .values(status=AnalysisStatus.FAILED, error=reason, finished_at=now)
        .returning(PackageAnalysis.id)
    ).scalars().all()
    for analysis_id, report_id in requeued:
        logger.warning("partner model run %s on report %s lost its worker; queued again", analysis_id, report_id)
    for analysis_id in given_up:
        logger.warning("partner model run %s: %s", analysis_id, reason)
    return sorted({report_id for _, report_id in requeued})
