"""Wires the imaging_orders stage into the app: blueprint, FHIR mappings, access scopes, events, CLI."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from hospital import metrics
from hospital.i18n import add_catalog
from hospital.i18n import lazy_gettext as _l
from hospital.jobs import subscribe
from hospital.models import Role
from hospital.periodic import register_periodic
from hospital.web import add_nav_link
from imaging_orders import cli, fhir, routes, seed
from imaging_orders.archive import dicomweb, reconciliation, wado, withdrawal_page
from imaging_orders.archive.events import StudyCompleted
from imaging_orders.archive.public import register_retention
from referrals.events import ReferralCancelled


def register(app: Flask) -> None:
    app.register_blueprint(routes.bp)
    app.register_blueprint(dicomweb.bp)
    app.register_blueprint(wado.bp)
    app.register_blueprint(reconciliation.bp)
    app.register_blueprint(withdrawal_page.bp)
    fhir.register_fhir(app)
    subscribe(app, StudyCompleted, "imaging_orders.archive.jobs.notify_instance_availability")
    subscribe(app, ReferralCancelled, "imaging_orders.jobs.release_appointments_of_cancelled_referral")
    metrics.register_gauge(app, "hospital_studies_awaiting_reconciliation",
                           "Studies received but matched to no order, waiting for staff.", reconciliation.awaiting_count)
    app.cli.add_command(cli.dicom_command)
    register_retention(app)  # the images and ai_outputs classes, and storage per centre
    app.extensions["hospital.seeders"].append(seed.seed_schedules)
    register_periodic(app, "imaging_orders.jobs.remind_appointments", app.config["APPOINTMENT_REMINDER_CHECK_SECONDS"],
                      queue="notify")
    add_nav_link(app, _l("Worklist"), "imaging_orders.worklist_page", Role.IMAGING_STAFF, Role.ADMIN)
    add_nav_link(app, _l("Reconciliation"), "reconciliation.reconciliation_page", Role.IMAGING_STAFF, Role.ADMIN)
    add_nav_link(app, _l("Referrals to accept"), "imaging_orders.incoming_page", Role.IMAGING_STAFF)
    add_nav_link(app, _l("Directions for patients"), "imaging_orders.own_visit_guide_page", Role.IMAGING_STAFF)
    add_nav_link(app, _l("Appointments"), "imaging_orders.appointments_page", Role.PATIENT, Role.CLINICIAN)
    add_nav_link(app, _l("Imaging centres"), "imaging_orders.centres_page", Role.ADMIN)
    add_catalog(app, Path(__file__).parent / "translations")
