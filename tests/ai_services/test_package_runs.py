"""Partner model packages run on a study once its preliminary report exists: each routed package in
the sandbox, once per study and version, its outputs as findings of the report (on the study's own
pixels), a failing one recorded as failed with its reason while the others complete."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ai_services.dicom_outputs import (
    SEG_SERIES_NUMBER,
    SR_SERIES_NUMBER,
    read_image_evaluations,
    read_measurement_report,
)
from ai_services.jobs import analyse_study_again
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    Finding,
    ModelPackage,
    PackageAnalysis,
    PackageStatus,
    ReportStatus,
    ReviewStatus,
)
from ai_services.package_jobs import reclaim_package_runs, run_packages_on_report, run_queued_packages
from ai_services.package_runs import (
    claim_package_run,
    plan_package_runs,
    reclaim_stalled_package_runs,
    record_package_failure,
    record_package_run,
)
from ai_services.package_service import approve_package, submit_package
from ai_services.reading import sign_preview
from ai_services.report_outputs import store_report_outputs
from ai_services.routing import add_routing_rule
from ai_services.sandbox import PackageRun, input_geometry
from ai_services.service import review_finding, sign_report
from hospital.clock import utcnow
from hospital.errors import Conflict
from hospital.models import JobRecord
from hospital.seed import DemoSeed
from tests.ai_services import gate_series
from tests.ai_services.package_factory import make_classifier_package, make_map_package, make_torchscript_package
from tests.ai_services.studies import output_instances, store_study_with_report
from tests.ai_services.test_not_applicable import store_study
from tests.pages import choose_language, csrf_token_of, sign_in


def approved(session: Session, demo: DemoSeed, source: Path, app: Flask, modality: str = "CT") -> ModelPackage:
    package = submit_package(session, source, demo.users["partner"], Path(app.config["AI_MODELS_DIR"]))
    package.status = PackageStatus.AWAITING_APPROVAL  # the sandbox's checks have their own tests
    approve_package(session, package.id, demo.users["admin"])
    add_routing_rule(session, demo.users["admin"], package_name=package.name, modality=modality,
                     body_part="CHEST" if modality == "CT" else None)
    return package


def package_completions(session: Session) -> list[JobRecord]:
    """The `PackageAnalysisCompleted` events published, one per completed run (as their billing
    jobs: each event also has the report's DICOM outputs made again)."""
    return list(session.scalars(select(JobRecord).where(JobRecord.event == "ai.package_analysis_completed",
                                                        JobRecord.handler == "billing.jobs.charge_package_analysis")
                                .order_by(JobRecord.id)))


def block_volume() -> np.ndarray:
    """Air with one soft-tissue block at rows 40..50, columns 60..70 on every slice."""
    volume = np.full((5, 128, 128), -1000.0, dtype=np.float32)
    volume[:, 40:50, 60:70] = 60.0
    return volume


def test_routed_packages_read_the_study_once_each_into_its_report(app: Flask, db_session: Session, demo: DemoSeed,
                                                                   tmp_path: Path) -> None:
    detector = approved(db_session, demo, make_map_package(tmp_path / "d", "detection"), app)
    segmenter = approved(db_session, demo, make_map_package(tmp_path / "s", "segmentation"), app)
    classifier = approved(db_session, demo, make_classifier_package(tmp_path / "c"), app)
    db_session.commit()
    study = store_study_with_report(app, db_session, demo, block_volume(), pixel_spacing_mm=0.75)

    run_packages_on_report(study.report_id)
    run_packages_on_report(study.report_id)  # a re-delivered event runs nothing again

    analyses = {a.model_package_id: a for a in db_session.scalars(
        select(PackageAnalysis).where(PackageAnalysis.study_id == study.study_id))}
    assert set(analyses) == {detector.id, segmenter.id, classifier.id}
    assert all(a.status is AnalysisStatus.COMPLETED and a.seconds and a.report_id == study.report_id
               for a in analyses.values()), [a.error for a in analyses.values()]
    findings = {a: list(db_session.scalars(select(Finding).where(Finding.package_analysis_id == analyses[a].id)))
                for a in analyses}
    # Package space is 1.5 mm (half the study's resolution): the block maps back to its own pixels.
    [box] = findings[detector.id]
    assert (box.x0, box.y0, box.x1, box.y1) == (60, 40, 70, 50)
    assert box.slice_index == 2 and box.sop_instance_uid == study.sop_instance_uids[2]
    assert box.diameter_mm == 7.5 and box.confidence == 0.9
    [region] = findings[segmenter.id]
    assert (region.x0, region.y0, region.x1, region.y1) == (60, 40, 70, 50)
    assert region.volume_mm3 == pytest.approx(5 * 5 * 1.5 * 1.5 * 5.0, abs=0.1)  # 25 pixels, 1.5 x 1.5 x 5 mm
    [verdict] = findings[classifier.id]
    assert verdict.label in ("normal", "abnormal") and 0.5 <= (verdict.confidence or 0) <= 1
    assert (verdict.x0, verdict.y0, verdict.x1, verdict.y1) == (0, 0, 128, 128)
    assert len(package_completions(db_session)) == 3


def test_a_failing_package_is_recorded_with_its_reason_and_the_others_complete(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    app.config["AI_PACKAGE_SANDBOX_LIMITS"] = {"wall_seconds": 8.0, "cpu_seconds": 30}
    try:
        slow = approved(db_session, demo, make_torchscript_package(tmp_path / "slow", loops=10**9, name="slow-one"),
                        app)
        detector = approved(db_session, demo, make_map_package(tmp_path / "d", "detection"), app)
        db_session.commit()
        study = store_study_with_report(app, db_session, demo, block_volume(), pixel_spacing_mm=0.75)
        run_packages_on_report(study.report_id)
    finally:
        app.config.pop("AI_PACKAGE_SANDBOX_LIMITS")
    runs = {a.model_package_id: a for a in db_session.scalars(select(PackageAnalysis))}
    assert runs[slow.id].status is AnalysisStatus.FAILED
    assert "time limit" in (runs[slow.id].error or "") or "CPU limit" in (runs[slow.id].error or "")
    assert not db_session.scalars(select(Finding).where(Finding.package_analysis_id == runs[slow.id].id)).all()
    assert runs[detector.id].status is AnalysisStatus.COMPLETED
    assert [e.payload["package_id"] for e in package_completions(db_session)] == [detector.id]


def test_input_geometry_inverts_the_package_view_with_padding() -> None:
    manifest = {"input": {"spacing_mm": [1.0, 1.0, 5.0], "size": [64, 64], "channels": 3}}
    # 40 x 50 pixels of 1 mm: padded with air to 64 x 64, so package pixel 12, 7 is study pixel 0, 0.
    geometry = input_geometry((9, 40, 50), (1.0, 1.0), manifest)
    assert geometry.slices == (3, 4, 5) and geometry.key_slice == 4
    assert geometry.to_study_box((7, 12, 17, 22)) == (0, 0, 10, 10)
    assert geometry.to_study_box((0, 0, 64, 64)) == (0, 0, 50, 40)


def test_a_package_mask_maps_onto_the_study_slice_within_its_box() -> None:
    padded = input_geometry((9, 40, 50), (1.0, 1.0),
                            {"input": {"spacing_mm": [1.0, 1.0, 5.0], "size": [64, 64], "channels": 3}})
    mask = np.zeros((64, 64), dtype=bool)
    mask[12:22, 7:17] = True  # package pixel 12, 7 is study pixel 0, 0 (padded with air)
    study = padded.to_study_mask(mask)
    assert study.shape == (40, 50) and study[0:10, 0:10].all() and int(study.sum()) == 100
    halved = input_geometry((5, 128, 128), (0.75, 0.75),
                            {"input": {"spacing_mm": [1.5, 1.5, 5.0], "size": [64, 64], "channels": 1}})
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:25, 30:35] = True
    mask[20, 30] = False
    expected = np.zeros((128, 128), dtype=bool)
    expected[40:50, 60:70] = True
    expected[40:42, 60:62] = False  # each package pixel is 2 x 2 study pixels
    assert np.array_equal(halved.to_study_mask(mask), expected)
    assert halved.to_study_box((30, 20, 35, 25)) == (60, 40, 70, 50)


def test_a_study_outside_the_built_in_models_use_is_read_by_the_partner_model_routed_to_it(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    """An MR study: the built-in CT model is not applicable, its report says why, and the partner's
    MR model routed to it still reads it into that one report (once, however often it is re-read)."""
    mr_model = approved(db_session, demo, make_map_package(tmp_path / "mr", "segmentation", name="mr-regions",
                                                         modalities=["MR"]), app,
                        modality="MR")
    db_session.commit()
    study_id = store_study(app, db_session, demo, gate_series.mr)

    analyse_study_again(db_session, study_id)
    db_session.commit()
    job = db_session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
    [report] = db_session.scalars(select(DiagnosticReport).where(DiagnosticReport.study_id == study_id)).all()
    assert job is not None and job.status is AnalysisStatus.NOT_APPLICABLE
    [delivery] = db_session.scalars(select(JobRecord).where(JobRecord.event == "ai.analysis_not_applicable")).all()
    assert delivery.handler == "ai_services.package_jobs.run_routed_packages"
    assert delivery.payload["report_id"] == report.id

    run_packages_on_report(report.id)
    # The study's SR holds the partner model's findings (or its "nothing found") and nothing of the
    # built-in model, which did not read it; its segmented region, if any, is a Segmentation.
    store_report_outputs(app, report.id)
    outputs = output_instances(db_session, study_id, source_modality="MR")
    sr = pydicom.dcmread(Path(app.config["DICOM_STORAGE_DIR"]) / outputs[SR_SERIES_NUMBER][0].path)
    named = [r.algorithm for r in read_measurement_report(sr)] + [e.algorithm for e in read_image_evaluations(sr)]
    assert named and {a.name if a else None for a in named} == {"mr-regions"}
    db_session.refresh(report)
    assert (SEG_SERIES_NUMBER in outputs) == any(f.review_status is not ReviewStatus.REJECTED for f in report.findings)
    analyse_study_again(db_session, study_id)  # a re-read of the study: still one report, one run
    db_session.commit()
    run_packages_on_report(report.id)

    [run] = db_session.scalars(select(PackageAnalysis).where(PackageAnalysis.study_id == study_id)).all()
    assert run.model_package_id == mr_model.id and run.report_id == report.id
    assert run.status is AnalysisStatus.COMPLETED, run.error
    assert [r.id for r in db_session.scalars(select(DiagnosticReport).where(DiagnosticReport.study_id == study_id))] \
        == [report.id]
    db_session.refresh(report)
    assert report.conclusion.startswith("AI not applicable")
    assert [f.package_analysis_id for f in report.findings] == [run.id] * len(report.findings)
    assert len(package_completions(db_session)) == 1


def stall(session: Session, analysis_id: int) -> None:
    """The worker that claimed the run died an hour ago (over any limit plus margin)."""
    session.execute(update(PackageAnalysis).where(PackageAnalysis.id == analysis_id)
                    .values(started_at=utcnow() - timedelta(hours=1)))
    session.commit()


def test_a_run_whose_worker_died_is_queued_again_by_the_periodic_job_and_run_once(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    detector = approved(db_session, demo, make_map_package(tmp_path / "d", "detection"), app)
    db_session.commit()
    study = store_study_with_report(app, db_session, demo, block_volume(), pixel_spacing_mm=0.75)
    plan = plan_package_runs(db_session, study.report_id, Path(app.config["DICOM_STORAGE_DIR"]))
    assert plan is not None
    [run] = plan.runs
    assert claim_package_run(db_session, run.analysis_id) == 1
    db_session.commit()  # ... and the worker is killed before it answers

    reclaim_package_runs(db_session)  # a run claimed just now is left to its worker
    assert db_session.get(PackageAnalysis, run.analysis_id).status is AnalysisStatus.RUNNING  # type: ignore[union-attr]
    run_packages_on_report(study.report_id)  # a re-delivered event does not run it twice either
    assert db_session.get(PackageAnalysis, run.analysis_id).attempts == 1  # type: ignore[union-attr]

    stall(db_session, run.analysis_id)
    reclaim_package_runs(db_session)
    db_session.commit()
    [again] = db_session.scalars(select(JobRecord).where(JobRecord.handler == "ai_services.package_jobs.run_queued_packages"))
    assert again.payload == {"report_id": study.report_id}
    run_queued_packages(db_session, **again.payload)
    run_queued_packages(db_session, **again.payload)

    analysis = db_session.get(PackageAnalysis, run.analysis_id)
    assert analysis is not None and analysis.model_package_id == detector.id
    db_session.refresh(analysis)
    assert analysis.status is AnalysisStatus.COMPLETED and analysis.attempts == 2, analysis.error
    assert len(db_session.scalars(select(Finding).where(Finding.package_analysis_id == analysis.id)).all()) == 1
    assert len(package_completions(db_session)) == 1  # billed once


def test_the_late_answer_of_a_reclaimed_attempt_is_dropped_and_a_run_is_given_up_after_its_attempts(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    approved(db_session, demo, make_classifier_package(tmp_path / "c"), app)
    db_session.commit()
    study = store_study_with_report(app, db_session, demo, block_volume(), pixel_spacing_mm=0.75)
    plan = plan_package_runs(db_session, study.report_id, Path(app.config["DICOM_STORAGE_DIR"]))
    assert plan is not None
    [run] = plan.runs
    geometry = input_geometry((5, 128, 128), (0.75, 0.75), run.manifest)
    answer = PackageRun(None, 0.5, {"cases": [{"values": [0.0, 2.0], "shape": [1, 2]}]})

    def reclaim() -> list[int]:
        return reclaim_stalled_package_runs(db_session, time_limit_seconds=120.0, margin_seconds=300.0, max_attempts=2)

    first = claim_package_run(db_session, run.analysis_id)
    stall(db_session, run.analysis_id)
    assert reclaim() == [study.report_id]
    second = claim_package_run(db_session, run.analysis_id)
    assert (first, second) == (1, 2)
    # The first worker was only slow: its answer comes in while the second attempt runs.
    record_package_run(db_session, run.analysis_id, answer, geometry, (0.75, 0.75), study.sop_instance_uids, first)
    record_package_failure(db_session, run.analysis_id, "Killed", attempt=first)
    analysis = db_session.get(PackageAnalysis, run.analysis_id)
    assert analysis is not None and analysis.status is AnalysisStatus.RUNNING and analysis.error is None
    assert not db_session.scalars(select(Finding).where(Finding.package_analysis_id == run.analysis_id)).all()

    db_session.commit()
    stall(db_session, run.analysis_id)  # the second worker dies too: that was the last attempt
    assert reclaim() == []
    db_session.commit()
    db_session.expire_all()
    given_up = db_session.get(PackageAnalysis, run.analysis_id)
    assert given_up is not None and given_up.status is AnalysisStatus.FAILED and given_up.finished_at is not None
    assert "stopped without an answer 2 times" in (given_up.error or "")
    assert claim_package_run(db_session, run.analysis_id) is None
    assert not db_session.scalars(select(JobRecord).where(JobRecord.event == "ai.package_analysis_completed")).all()


def test_a_report_is_not_signed_while_a_partner_model_reads_it_unless_the_run_is_past_its_wait(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path, client: FlaskClient
) -> None:
    classifier = approved(db_session, demo, make_classifier_package(tmp_path / "c"), app)
    db_session.commit()
    study = store_study_with_report(app, db_session, demo, block_volume(), pixel_spacing_mm=0.75)
    plan = plan_package_runs(db_session, study.report_id, Path(app.config["DICOM_STORAGE_DIR"]))
    assert plan is not None
    [run] = plan.runs
    db_session.commit()
    radiologist = demo.users["radiologist"]
    refusal = f"the partner model {classifier.label} has not finished reading this study"

    with pytest.raises(Conflict, match=refusal):
        sign_preview(db_session, radiologist, study.report_id, None)
    with pytest.raises(Conflict, match=refusal):
        sign_report(db_session, radiologist, study.report_id)
    attempt = claim_package_run(db_session, run.analysis_id)  # running now: still refused
    db_session.commit()
    with pytest.raises(Conflict, match=refusal):
        sign_report(db_session, radiologist, study.report_id)
    db_session.rollback()
    # On the page, in the reader's language, like the undecided findings.
    sign_in(client, "radiologist")
    choose_language(client, "zh_CN", f"/reports/{study.report_id}")
    page = client.get(f"/reports/{study.report_id}").get_data(as_text=True)
    refused = client.post(f"/reports/{study.report_id}", data={"action": "sign", "csrf_token": csrf_token_of(page)})
    shown = client.get(refused.headers["Location"]).get_data(as_text=True)
    assert f"合作方 AI 模型 {classifier.label} 尚未完成本检查的阅片" in shown and "flash-error" in shown
    db_session.expire_all()
    report = db_session.get(DiagnosticReport, study.report_id)
    assert report is not None and report.status is ReportStatus.PRELIMINARY

    # Past the wait (30 minutes from being queued): the run is given up with the reason and the
    # report is signed without it.
    db_session.execute(update(PackageAnalysis).where(PackageAnalysis.id == run.analysis_id)
                       .values(created_at=utcnow() - timedelta(minutes=31)))
    db_session.commit()
    assert sign_preview(db_session, radiologist, study.report_id, None).report.id == study.report_id
    signed = sign_report(db_session, radiologist, study.report_id, "No abnormality.")
    db_session.commit()
    assert signed.status is ReportStatus.FINAL
    analysis = db_session.get(PackageAnalysis, run.analysis_id)
    assert analysis is not None and analysis.status is AnalysisStatus.FAILED
    assert analysis.error == "not finished 30 minutes after it was queued; the report was signed without it"
    # Its late answer adds nothing to the signed report and bills nothing.
    geometry = input_geometry((5, 128, 128), (0.75, 0.75), run.manifest)
    answer = PackageRun(None, 0.5, {"cases": [{"values": [0.0, 2.0], "shape": [1, 2]}]})
    record_package_run(db_session, run.analysis_id, answer, geometry, (0.75, 0.75), study.sop_instance_uids, attempt)
    assert not db_session.scalars(select(Finding).where(Finding.package_analysis_id == run.analysis_id)).all()
    assert not db_session.scalars(select(JobRecord).where(JobRecord.event == "ai.package_analysis_completed")).all()


def test_a_report_whose_partner_runs_have_ended_is_signed_as_before(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path
) -> None:
    approved(db_session, demo, make_classifier_package(tmp_path / "c"), app)
    db_session.commit()
    study = store_study_with_report(app, db_session, demo, block_volume(), pixel_spacing_mm=0.75)
    run_packages_on_report(study.report_id)
    radiologist = demo.users["radiologist"]
    [verdict] = db_session.scalars(select(Finding).where(Finding.report_id == study.report_id)).all()
    assert verdict.package_analysis_id is not None
    review_finding(db_session, radiologist, study.report_id, verdict.id, ReviewStatus.ACCEPTED)
    assert sign_report(db_session, radiologist, study.report_id).status is ReportStatus.FINAL
