"""Issue #19 end to end: a partner submits two model packages of different output kinds, they pass
their sandbox checks and an administrator approves them and routes them to chest CT; a study is
stored and analysed; both run on it (a third, over its time limit, is recorded as failed and the
others complete); the radiologist reviews every finding and signs; each package's analysis is its
own ChargeItem at its own price, and the partner's statement shows them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.fhir import MODEL_PACKAGE_SYSTEM, observation_to_fhir
from ai_services.jobs import analyse_study_again
from ai_services.models import AnalysisStatus, DiagnosticReport, ModelPackage, PackageAnalysis, PackageStatus
from ai_services.package_service import approve_package, submit_package
from ai_services.routing import add_routing_rule
from billing.models import ChargeItem
from hospital.fhir.registry import validate_resource
from hospital.seed import DemoSeed
from tests.ai_services import gate_series
from tests.ai_services.package_factory import make_classifier_package, make_map_package, make_torchscript_package
from tests.ai_services.test_not_applicable import store_study


def test_two_partner_models_are_submitted_approved_routed_reviewed_and_billed(
    app: Flask, db_session: Session, demo: DemoSeed, as_role: Any, tmp_path: Path
) -> None:
    partner, admin = demo.users["partner"], demo.users["admin"]
    models_dir = Path(app.config["AI_MODELS_DIR"])
    classifier = submit_package(db_session, make_classifier_package(tmp_path / "c"), partner, models_dir)
    detector = submit_package(db_session, make_map_package(tmp_path / "d", "detection"), partner, models_dir)
    slow = submit_package(db_session, make_torchscript_package(tmp_path / "s", loops=10**9, name="slow-model"),
                          partner, models_dir)
    slow.status = PackageStatus.AWAITING_APPROVAL  # it would fail its checks too; here it fails on the study
    db_session.commit()  # the checks of the other two run (inline here, on the reference studies)
    for package in (classifier, detector):
        db_session.refresh(package)
        assert package.status is PackageStatus.AWAITING_APPROVAL, package.check_report
    for package in (classifier, detector, slow):
        approve_package(db_session, package.id, admin)
        add_routing_rule(db_session, admin, package_name=package.name, modality="CT", body_part="CHEST")
    db_session.commit()

    app.config["AI_PACKAGE_SANDBOX_LIMITS"] = {"wall_seconds": 20.0}
    try:
        study_id = store_study(app, db_session, demo, lambda uid: gate_series.normal_ct(20_019, uid))
        analyse_study_again(db_session, study_id)
        db_session.commit()  # AnalysisCompleted: the routed packages run, then billing charges them
    finally:
        app.config.pop("AI_PACKAGE_SANDBOX_LIMITS")

    report = db_session.scalar(select(DiagnosticReport).where(DiagnosticReport.study_id == study_id))
    assert report is not None
    runs = {a.model_package_id: a for a in db_session.scalars(select(PackageAnalysis))}
    assert runs[classifier.id].status is AnalysisStatus.COMPLETED
    assert runs[detector.id].status is AnalysisStatus.COMPLETED
    assert runs[slow.id].status is AnalysisStatus.FAILED and "time limit" in (runs[slow.id].error or "")
    by_package = {p.id: [f for f in report.findings if f.package_analysis_id == runs[p.id].id]
                  for p in (classifier, detector)}
    assert len(by_package[classifier.id]) == 1 and by_package[classifier.id][0].label in ("normal", "abnormal")
    assert by_package[detector.id]

    radiologist = as_role("radiologist")
    page = radiologist.get(f"/reports/{report.id}").get_data(as_text=True)
    assert "Partner AI model: nodule-classifier 1.0.0" in page and "Partner AI model: bright-detection 1.0.0" in page
    assert "Acme Imaging AI" in page and "auroc 0.91" in page and "time limit" in page
    # Signing waits for every finding, the partner models' included.
    assert radiologist.post(f"/api/reports/{report.id}/sign", json={}).status_code == 409
    for finding in report.findings:
        decision = "rejected" if finding.package_analysis_id == runs[detector.id].id else "accepted"
        url = f"/api/reports/{report.id}/findings/{finding.id}/review"
        assert radiologist.post(url, json={"decision": decision}).status_code == 200
    assert radiologist.post(f"/api/reports/{report.id}/sign", json={}).get_json()["status"] == "final"

    observation = validate_resource(observation_to_fhir(by_package[classifier.id][0]))
    assert observation["device"]["identifier"] == {"system": MODEL_PACKAGE_SYSTEM, "value": "nodule-classifier|1.0.0"}

    charges = db_session.scalars(select(ChargeItem).where(ChargeItem.model_package_id.is_not(None))).all()
    assert sorted((c.model_label, c.total_minor, c.currency) for c in charges) == [
        ("bright-detection 1.0.0", 3000, "EUR"), ("nodule-classifier 1.0.0", 1200, "EUR")]
    month = charges[0].occurred_at.strftime("%Y-%m")
    statement = as_role("partner").get(
        f"/api/partner-statements/{partner.organization_id}?month={month}").get_json()
    assert {(line["model"], line["analyses"], line["revenue_minor"], line["partner_share_minor"])
            for line in statement["lines"]} == {("bright-detection 1.0.0", 1, 3000, 1800),
                                                ("nodule-classifier 1.0.0", 1, 1200, 840)}
    assert db_session.get(ModelPackage, slow.id) is not None
