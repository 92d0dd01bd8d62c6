"""Wires the followup stage into the app: blueprint, FHIR mappings, access scopes, events, CLI."""

from __future__ import annotations

from flask import Flask

from ai_services.events import ReportSigned
from followup import fhir, pathway, plan_routes, routes, seed, service
from hospital.access import register_patient_scope
from hospital.i18n import lazy_gettext
from hospital.jobs import subscribe
from hospital.models import Role
from hospital.periodic import register_periodic
from hospital.web import add_nav_link


def register(app: Flask) -> None:
    app.register_blueprint(routes.bp)
    app.register_blueprint(pathway.bp)
    app.register_blueprint(plan_routes.bp)
    fhir.register_fhir(app)
    app.extensions["hospital.seeders"].extend((seed.seed_formulary, seed.seed_pharmacy_stock))
    register_periodic(app, "followup.jobs.process_due_followups", app.config["FOLLOWUP_CHECK_SECONDS"])
    subscribe(app, ReportSigned, "followup.jobs.open_consultation_for_report")
    register_patient_scope(app, Role.CLINICIAN, service.consulted_patient_ids)
    register_patient_scope(app, Role.PHARMACIST, service.pharmacy_patient_ids)
    add_nav_link(app, lazy_gettext("Consultations"), "followup.consultations_page", Role.CLINICIAN, Role.PATIENT,
                 badge=service.unread_message_total)
    add_nav_link(app, lazy_gettext("Dispense queue"), "followup.dispense_queue_page", Role.PHARMACIST)
    add_nav_link(app, lazy_gettext("Stock"), "followup.stock_page", Role.PHARMACIST)
