"""RQ jobs of the AI stage. Thin: each step is a service call in a unit of work of its own
(`Database.transaction`), so progress is visible while the model runs and a failure is recorded
before it is re-raised; the handler's own session, committed by `hospital.jobs.run_job`, takes the
result."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flask import Flask, current_app
from sqlalchemy.orm import Session

from ai_services.applicability import ValidatedRange, check_headers, check_volume
from ai_services.events import AnalysisCompleted, PackageAnalysisCompleted, ReportAmended, ReportSigned
from ai_services.reading import notify_referrer_of_amendment, notify_report_signed
from ai_services.report_outputs import store_report_outputs
from ai_services.retraining import RetrainConfig, prepare_retraining, record_candidate, train_candidate
from ai_services.series_reader import CtVolume, SeriesReadError, read_ct_volume, read_series_headers
from ai_services.service import (
    load_detector,
    prepare_analysis,
    record_analysis,
    record_failed_analysis,
    record_not_applicable,
    record_progress,
)
from hospital import metrics
from hospital.db import get_db
from imaging_orders.archive.events import StudyCompleted

logger = logging.getLogger(__name__)


def analyse_study(session: Session, event: StudyCompleted) -> None:
    """On `StudyCompleted`: read the study with the active model."""
    analyse_study_again(session, event.study_id)


def analyse_study_again(session: Session, study_id: int) -> None:
    """Analyse one study (also run directly when staff re-run a failed or finished analysis)."""
    db = get_db()
    # Its own unit of work, ended before the model runs: "running" is visible at once, and no
    # transaction is held open through inference. The findings go in the job's own session.
    with db.transaction() as prepare_session:
        plan = prepare_analysis(prepare_session, study_id, current_app.config["DICOM_STORAGE_DIR"])
    if plan is None:
        return
    if plan.not_routed_reason is not None:
        viewable = _viewable_volume(plan.instance_paths)
        record_not_applicable(session, plan, plan.not_routed_reason, viewable.sop_instance_uids if viewable else [],
                              viewable.pixel_spacing_mm if viewable else None)
        return

    def progress(done: int, total: int) -> None:
        with db.transaction() as progress_session:
            record_progress(progress_session, plan.job_id, done, total)

    try:
        detector = load_detector(plan.weights_path, plan.weights_sha256)
        # The gate before inference: outside the model's validated range it does not run at all.
        valid = ValidatedRange.from_manifest(detector.manifest)
        verdict = check_headers(read_series_headers(plan.instance_paths), valid)
        volume = read_ct_volume(plan.instance_paths) if verdict.applicable else _viewable_volume(plan.instance_paths)
        if volume is not None and verdict.applicable:
            verdict = check_volume(volume, valid)
        started = time.perf_counter()
        detections = (detector.reported(detector.detect(volume, progress=progress))
                      if volume is not None and verdict.applicable else [])
        inference_seconds = time.perf_counter() - started
    except Exception as exc:
        with db.transaction() as failure_session:
            record_failed_analysis(failure_session, plan, f"{type(exc).__name__}: {exc}")
        raise
    if verdict.reason is not None or volume is None:
        record_not_applicable(session, plan, str(verdict.reason), volume.sop_instance_uids if volume else [],
                              volume.pixel_spacing_mm if volume else None)
        return
    record_analysis(session, plan, volume.sop_instance_uids, volume.pixel_spacing_mm, detections)
    metrics.observe_inference(inference_seconds, len(detections))
    logger.info("study %s analysed: %d findings", study_id, len(detections))


def _viewable_volume(paths: list[Path]) -> CtVolume | None:
    """A refused series read anyway when it can be, so the radiologist can page through its slices
    on the report; an NM or RT dose object (multi-frame) cannot, and that is no failure here."""
    try:
        return read_ct_volume(paths)
    except SeriesReadError as exc:
        logger.info("series not readable as slices (%s); the report has no slice viewer", exc)
        return None


def make_report_outputs(
    session: Session, event: AnalysisCompleted | PackageAnalysisCompleted | ReportSigned | ReportAmended
) -> None:
    """On `AnalysisCompleted`, `PackageAnalysisCompleted`, `ReportSigned` and `ReportAmended`: store
    the report's SR, key images and Segmentation in its study (a partner model's findings: a new
    version with them; an amendment: a new SR version with the addenda). The handler's session is
    left unused: the outputs are made in a transaction of their own (`store_report_outputs`)."""
    store_report_outputs(current_app, event.report_id)


def notify_report_amended(session: Session, event: ReportAmended) -> None:
    """On `ReportAmended`: tell the referring clinician and the patient (once each per addendum)."""
    notify_referrer_of_amendment(session, event.addendum_id)


def tell_report_signed(session: Session, event: ReportSigned) -> None:
    """On `ReportSigned`: tell the referring clinician and the patient (once each)."""
    notify_report_signed(session, event.report_id, event.patient_id, event.referral_id)


def retrain_model(session: Session) -> None:
    """Periodic: fine-tune a candidate on newly signed reports and promote it only if it is better.

    Reads in one transaction, trains with none open, records the verdict in a new one. Idempotent:
    a label set already trained on (same digest, same parent) is skipped.
    """
    config = RetrainConfig(**current_app.config.get("AI_RETRAIN_CONFIG", {}))
    with get_db().transaction() as read_session:
        inputs = prepare_retraining(read_session, Path(current_app.config["DICOM_STORAGE_DIR"]), config)
    if inputs is None:
        return
    result = train_candidate(inputs, retraining_output_dir(current_app), config)
    version = record_candidate(session, result)
    logger.info("retraining recorded %s: %s", version.label, version.decision_reason)


def retraining_output_dir(app: Flask) -> Path:
    return Path(app.config["AI_MODELS_DIR"])
