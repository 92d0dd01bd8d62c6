"""Wires the research stage into the app: its page, the FHIR Consent mapping, its event
subscription and its `hospital research` command."""

from __future__ import annotations

from flask import Flask

from ai_services.events import ReportSigned
from hospital.i18n import lazy_gettext as _l
from hospital.jobs import subscribe
from hospital.models import Role
from hospital.web import add_nav_link
from research import admin_routes, cli, dicomweb, fhir, routes


def register(app: Flask) -> None:
    app.register_blueprint(routes.bp)
    app.register_blueprint(admin_routes.bp)
    app.register_blueprint(dicomweb.bp)
    fhir.register_fhir(app)
    app.cli.add_command(cli.research_group)
    subscribe(app, ReportSigned, "research.jobs.record_contribution_for_report")
    add_nav_link(app, _l("Research"), "research.consent_page", Role.PATIENT)
    add_nav_link(app, _l("Research uploads"), "research.contributions_page", Role.CONTRIBUTOR)
    add_nav_link(app, _l("Research data"), "research_admin.research_admin_page", Role.ADMIN)
