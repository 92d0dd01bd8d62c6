"""A model that fails fails alone (issue #19), the platform's own detector too: a study the
detector fails on still gets its preliminary report, saying so, so it reaches the radiologist and
is signed like any other; the partner models routed to it still read it; nothing is billed for the
failed analysis; a re-run that succeeds fills the same report and is billed once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ai_services import jobs
from ai_services.fhir import diagnostic_report_to_fhir
from ai_services.jobs import analyse_study_again
from ai_services.models import (
    AnalysisJob,
    AnalysisStatus,
    DiagnosticReport,
    FindingSource,
    PackageAnalysis,
    PackageStatus,
    ReportStatus,
)
from ai_services.package_service import approve_package, submit_package
from ai_services.routing import add_routing_rule
from billing.models import ChargeItem
from hospital.fhir.registry import validate_resource
from hospital.seed import DemoSeed
from tests.ai_services import gate_series
from tests.ai_services.package_factory import make_classifier_package
from tests.ai_services.test_not_applicable import store_study

BROKEN = "model file is corrupt"


def _broken(weights_path: str, sha256: str) -> Any:
    raise RuntimeError(BROKEN)


def _routed_classifier(app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path) -> int:
    package = submit_package(db_session, make_classifier_package(tmp_path / "c"), demo.users["partner"],
                             Path(app.config["AI_MODELS_DIR"]))
    db_session.commit()  # its checks run inline here
    db_session.refresh(package)
    assert package.status is PackageStatus.AWAITING_APPROVAL, package.check_report
    approve_package(db_session, package.id, demo.users["admin"])
    add_routing_rule(db_session, demo.users["admin"], package_name=package.name, modality="CT", body_part="CHEST")
    db_session.commit()
    return package.id


def _ai_charges(db_session: Session, study_id: int) -> int:
    return db_session.scalar(select(func.count()).select_from(ChargeItem)
                             .where(ChargeItem.event_key == f"ai-analysis:ImagingStudy/{study_id}")) or 0


def test_a_study_the_detector_fails_on_is_reported_read_by_partner_models_and_signed(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package_id = _routed_classifier(app, db_session, demo, tmp_path)
    study_id = store_study(app, db_session, demo, lambda uid: gate_series.normal_ct(20_031, uid))
    monkeypatch.setattr(jobs, "load_detector", _broken)
    with pytest.raises(RuntimeError, match=BROKEN):
        analyse_study_again(db_session, study_id)
    db_session.rollback()  # the job's own session; the failure was recorded in a unit of work of its own

    job = db_session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
    assert job is not None and job.status is AnalysisStatus.FAILED and BROKEN in (job.error or "")
    report = db_session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == study_id))
    assert report is not None and report.status is ReportStatus.PRELIMINARY
    assert (report.conclusion or "").startswith(f"AI analysis failed: RuntimeError: {BROKEN}")
    assert not [f for f in report.findings if f.source is FindingSource.AI and f.package_analysis_id is None]
    [run] = db_session.scalars(select(PackageAnalysis).where(PackageAnalysis.study_id == study_id)).all()
    assert run.model_package_id == package_id and run.status is AnalysisStatus.COMPLETED
    assert _ai_charges(db_session, study_id) == 0

    fhir = validate_resource(diagnostic_report_to_fhir(report))
    [absent] = fhir["contained"]
    assert absent["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert fhir["conclusionCode"][0]["coding"][0]["code"] == "failed"

    radiologist = as_role("radiologist")
    assert report.id in [r["id"] for r in radiologist.get("/api/reports?status=preliminary").get_json()]
    page = radiologist.get(f"/reports/{report.id}").get_data(as_text=True)
    assert f"AI analysis failed: RuntimeError: {BROKEN}" in page
    for finding in report.findings:
        url = f"/api/reports/{report.id}/findings/{finding.id}/review"
        assert radiologist.post(url, json={"decision": "accepted"}).status_code == 200
    signed = radiologist.post(f"/api/reports/{report.id}/sign", json={"conclusion": "No acute findings."})
    assert signed.status_code == 200 and signed.get_json()["status"] == "final"


def test_a_re_run_that_succeeds_fills_the_same_report_and_is_billed_once(
    app: Flask, db_session: Session, demo: DemoSeed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _routed_classifier(app, db_session, demo, tmp_path)
    study_id = store_study(app, db_session, demo, lambda uid: gate_series.normal_ct(20_032, uid))
    working = jobs.load_detector
    monkeypatch.setattr(jobs, "load_detector", _broken)
    with pytest.raises(RuntimeError):
        analyse_study_again(db_session, study_id)
    db_session.rollback()
    failed_report = db_session.scalar(select(DiagnosticReport.id).where(DiagnosticReport.study_id == study_id))

    monkeypatch.setattr(jobs, "load_detector", working)
    analyse_study_again(db_session, study_id)
    db_session.commit()
    job = db_session.scalar(select(AnalysisJob).where(AnalysisJob.study_id == study_id))
    assert job is not None and job.status is AnalysisStatus.COMPLETED and job.error is None
    report = db_session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == study_id))
    assert report is not None and report.id == failed_report
    assert (report.conclusion or "").startswith("AI analysis: ")
    assert _ai_charges(db_session, study_id) == 1
    assert db_session.scalar(select(func.count()).select_from(PackageAnalysis)
                             .where(PackageAnalysis.study_id == study_id)) == 1
