"""Wires the integration stage into the app: its `hospital hl7` command and its event subscription."""

from __future__ import annotations

from flask import Flask

from ai_services.events import ReportAmended, ReportSigned
from hospital.jobs import subscribe
from integration import cli, routes
from integration.hl7_results import parse_destinations


def register(app: Flask) -> None:
    # A malformed destination list stops the app at start-up rather than at the first signed report.
    parse_destinations(app.config["HL7_RESULT_DESTINATIONS"])
    app.cli.add_command(cli.hl7_group)
    routes.register(app)
    subscribe(app, ReportSigned, "integration.jobs.send_results_for_report", queue="notify")
    subscribe(app, ReportAmended, "integration.jobs.send_results_for_amendment", queue="notify")
