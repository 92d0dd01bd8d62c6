"""RQ jobs of partner model packages: run a submitted package's checks in the sandbox, and run the
routed packages on a study once the built-in model has made its preliminary report."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import current_app
from sqlalchemy.orm import Session

from ai_services.events import AnalysisCompleted, AnalysisFailed, AnalysisNotApplicable
from ai_services.package_runs import (
    claim_package_run,
    plan_package_runs,
    reclaim_stalled_package_runs,
    record_package_failure,
    record_package_run,
)
from ai_services.package_service import check_package
from ai_services.sandbox import SandboxLimits, input_geometry, run_package, study_inputs
from ai_services.series_reader import SeriesReadError, read_ct_volume
from hospital.db import get_db
from hospital.jobs import enqueue

logger = logging.getLogger(__name__)

RUN_QUEUED_PACKAGES = "ai_services.package_jobs.run_queued_packages"


def check_model_package(session: Session, package_id: int) -> None:
    """Queued by a submission: the sandbox's verdict on the package (a no-op when it has one)."""
    limits = SandboxLimits(**current_app.config.get("AI_PACKAGE_SANDBOX_LIMITS", {}))
    check_package(session, package_id, limits, held_out_cases=int(current_app.config["AI_PACKAGE_HELD_OUT_CASES"]),
                  held_out_cache=Path(current_app.instance_path) / "held-out")


def run_routed_packages(session: Session, event: AnalysisCompleted | AnalysisNotApplicable | AnalysisFailed) -> None:
    """On `AnalysisCompleted`, `AnalysisNotApplicable` and `AnalysisFailed` (the study has its
    preliminary report, with or without the built-in model's findings): run every package routed
    to the study on it, each in the sandbox.

    Each step is a unit of work of its own (queue, claim, record), so a run shows as running while
    it runs and no transaction is held through it. A package that fails fails alone; an error of
    the platform's own is recorded on the run it hit, the other runs go on, and it is raised at the
    end so the job's failure is seen (a retry finds only the runs still queued)."""
    run_packages_on_report(event.report_id)


def run_queued_packages(session: Session, report_id: int) -> None:
    """Queued by `reclaim_package_runs`: run the report's runs that are queued again."""
    run_packages_on_report(report_id)


def reclaim_package_runs(session: Session) -> None:
    """Periodic: runs whose worker died are queued again (or given up, with the reason), and run.
    Enqueued in this job's transaction, so they go out once the reclaim is committed."""
    limits = SandboxLimits(**current_app.config.get("AI_PACKAGE_SANDBOX_LIMITS", {}))
    report_ids = reclaim_stalled_package_runs(
        session, time_limit_seconds=limits.wall_seconds,
        margin_seconds=float(current_app.config["AI_PACKAGE_RUN_MARGIN_SECONDS"]),
        max_attempts=int(current_app.config["AI_PACKAGE_RUN_MAX_ATTEMPTS"]),
    )
    for report_id in report_ids:
        enqueue(session, RUN_QUEUED_PACKAGES, queue="ai", report_id=report_id)


def run_packages_on_report(report_id: int) -> None:
    db = get_db()
    with db.transaction() as plan_session:
        plan = plan_package_runs(plan_session, report_id, Path(current_app.config["DICOM_STORAGE_DIR"]))
    if plan is None or not plan.runs:
        return
    try:
        volume = read_ct_volume(plan.instance_paths)
    except SeriesReadError as exc:
        for run in plan.runs:
            with db.transaction() as failure_session:
                failing = claim_package_run(failure_session, run.analysis_id)
                if failing is not None:
                    record_package_failure(failure_session, run.analysis_id,
                                           f"the study's images could not be read as a volume: {exc}", attempt=failing)
        return
    limits = SandboxLimits(**current_app.config.get("AI_PACKAGE_SANDBOX_LIMITS", {}))
    first_error: Exception | None = None
    for run in plan.runs:
        with db.transaction() as claim_session:
            attempt = claim_package_run(claim_session, run.analysis_id)
        if attempt is None:
            continue
        try:
            slices, rows, columns = volume.hu.shape
            geometry = input_geometry((slices, rows, columns), volume.pixel_spacing_mm, run.manifest)
            result = run_package(run.root, study_inputs(volume.hu, volume.pixel_spacing_mm, run.manifest), limits)
            with db.transaction() as record_session:
                record_package_run(record_session, run.analysis_id, result, geometry, volume.pixel_spacing_mm,
                                   volume.sop_instance_uids, attempt)
        except Exception as exc:
            with db.transaction() as failure_session:
                record_package_failure(failure_session, run.analysis_id, f"{type(exc).__name__}: {exc}",
                                       attempt=attempt)
            logger.exception("running partner model %s on report %s failed", run.label, report_id)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
