"""Wires the billing stage into the app: blueprint, FHIR mappings, access scopes, events, CLI."""

from __future__ import annotations

from flask import Flask

from ai_services.events import AnalysisCompleted, PackageAnalysisCompleted
from billing import documents_pdf_routes, fhir, routes, seed, statement_routes
from followup.events import ConsultationFinished, MedicationDispensed
from hospital.i18n import lazy_gettext as _l
from hospital.jobs import subscribe
from hospital.models import Role
from hospital.web import add_nav_link
from imaging_orders.archive.events import StudyCompleted


def register(app: Flask) -> None:
    app.register_blueprint(routes.bp)
    app.register_blueprint(documents_pdf_routes.bp)
    app.register_blueprint(statement_routes.bp)
    fhir.register_fhir(app)
    app.extensions["hospital.seeders"].append(seed.seed_catalog)
    subscribe(app, StudyCompleted, "billing.jobs.charge_scan", queue="billing")
    subscribe(app, AnalysisCompleted, "billing.jobs.charge_ai_analysis", queue="billing")
    subscribe(app, PackageAnalysisCompleted, "billing.jobs.charge_package_analysis", queue="billing")
    subscribe(app, ConsultationFinished, "billing.jobs.charge_consultation", queue="billing")
    subscribe(app, MedicationDispensed, "billing.jobs.charge_dispense", queue="billing")
    add_nav_link(app, _l("Revenue"), "billing.revenue_page", Role.ADMIN)
    add_nav_link(app, _l("Partner statements"), "billing_statements.partner_statement_page", Role.ADMIN, Role.PARTNER)
    add_nav_link(app, _l("Price catalog"), "billing.catalog_page", Role.ADMIN)
    add_nav_link(app, _l("Billing"), "billing.billing_office_page", Role.ADMIN)
    add_nav_link(app, _l("My invoices"), "billing.my_invoices_page", Role.PATIENT)
