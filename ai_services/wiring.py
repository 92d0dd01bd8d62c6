"""Wires the ai_services stage into the app: blueprint, FHIR mappings, access scopes, events, CLI."""

from __future__ import annotations

from flask import Flask

from ai_services import cli, drift, fhir, package_routes, report_pdf_routes, routes, seed
from ai_services.events import (
    AnalysisCompleted,
    AnalysisFailed,
    AnalysisNotApplicable,
    PackageAnalysisCompleted,
    ReportAmended,
    ReportSigned,
)
from hospital import metrics
from hospital.i18n import lazy_gettext as _l
from hospital.jobs import subscribe
from hospital.models import Role
from hospital.periodic import register_periodic
from hospital.web import add_nav_link
from imaging_orders.archive.events import StudyCompleted


def register(app: Flask) -> None:
    app.register_blueprint(routes.bp)
    app.register_blueprint(package_routes.bp)
    app.register_blueprint(report_pdf_routes.bp)
    fhir.register_fhir(app)
    app.cli.add_command(cli.ai_group)
    app.extensions["hospital.seeders"].append(seed.seed_model_registry)
    subscribe(app, StudyCompleted, "ai_services.jobs.analyse_study", queue="ai")
    # The SR and key images follow the report: made with the draft, remade when it is signed.
    subscribe(app, AnalysisCompleted, "ai_services.jobs.make_report_outputs", queue="ai")
    subscribe(app, ReportSigned, "ai_services.jobs.make_report_outputs", queue="ai")
    # ... and when a partner model's findings join the report (its SR groups, its Segmentation).
    subscribe(app, PackageAnalysisCompleted, "ai_services.jobs.make_report_outputs", queue="ai")
    # The partner models routed to the study read it once the built-in model made its report, so
    # their findings join that one report; also when the built-in model found the study outside its
    # intended use (its report says why), since a partner's model may be made for exactly that study.
    subscribe(app, AnalysisCompleted, "ai_services.package_jobs.run_routed_packages", queue="ai")
    subscribe(app, AnalysisNotApplicable, "ai_services.package_jobs.run_routed_packages", queue="ai")
    subscribe(app, AnalysisFailed, "ai_services.package_jobs.run_routed_packages", queue="ai")
    subscribe(app, ReportSigned, "ai_services.jobs.tell_report_signed", queue="notify")
    # An addendum: a new SR version and a word to the referring clinician; no consultation and no
    # charge follow it (those followed the signature, once).
    subscribe(app, ReportAmended, "ai_services.jobs.make_report_outputs", queue="ai")
    subscribe(app, ReportAmended, "ai_services.jobs.notify_report_amended", queue="notify")
    # Drift per model version and centre (acceptance, added misses, findings per scan, confidences).
    metrics.register_gauge_families(app, drift.drift_gauges)
    register_periodic(app, "ai_services.jobs.retrain_model", app.config["AI_RETRAIN_EVERY_SECONDS"], queue="ai")
    # Partner model runs whose worker died are queued again (package_runs.reclaim_stalled_package_runs).
    register_periodic(app, "ai_services.package_jobs.reclaim_package_runs",
                      app.config["AI_PACKAGE_RECLAIM_EVERY_SECONDS"], queue="ai")
    add_nav_link(app, _l("Reading list"), "ai_services.reading_list_page", Role.RADIOLOGIST)
    add_nav_link(app, _l("Model versions"), "ai_services.models_page", Role.ADMIN, Role.RADIOLOGIST)
    add_nav_link(app, _l("Model packages"), "ai_packages.packages_page", Role.ADMIN, Role.PARTNER)
    add_nav_link(app, _l("Reports"), "ai_services.reports_page", Role.CLINICIAN, Role.PATIENT, Role.RADIOLOGIST)
