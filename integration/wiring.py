"""Wires the integration stage into the app: its `hospital hl7` command and the administrator's HL7
page, FHIR subscriptions (routes, event subscriptions, the periodic retry and heartbeat sweep)."""

from __future__ import annotations

from flask import Flask

from ai_services.events import ReportAmended, ReportSigned
from hospital.fhir.registry import register_capability
from hospital.jobs import subscribe
from hospital.periodic import register_periodic
from imaging_orders.events import AppointmentBooked, AppointmentCancelled
from integration import cli, routes, subscription_routes, subscriptions
from integration.hl7_results import parse_destinations


def register(app: Flask) -> None:
    # A malformed destination list stops the app at start-up rather than at the first signed report.
    parse_destinations(app.config["HL7_RESULT_DESTINATIONS"])
    app.cli.add_command(cli.hl7_group)
    routes.register(app)
    subscribe(app, ReportSigned, "integration.jobs.send_results_for_report", queue="notify")
    subscribe(app, ReportAmended, "integration.jobs.send_results_for_amendment", queue="notify")
    app.register_blueprint(subscription_routes.bp)
    register_capability(app, {
        "type": "Subscription",
        "supportedProfile": [f"{subscriptions.BACKPORT}/backport-subscription"],
        "interaction": [{"code": code} for code in ("create", "read", "search-type", "delete")],
        "operation": [{"name": "$status", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"}],
        "documentation": "R5 Subscriptions Backport (topic-based) on R4B, rest-hook channel; a user sees only their own",
    }, subscriptions.capability_extensions())
    register_capability(app, {"type": "SubscriptionTopic",
                              "interaction": [{"code": "read"}, {"code": "search-type"}]})
    subscribe(app, ReportSigned, "integration.jobs.notify_report_signed", queue="notify")
    subscribe(app, ReportAmended, "integration.jobs.notify_report_amended", queue="notify")
    subscribe(app, AppointmentBooked, "integration.jobs.notify_appointment_booked", queue="notify")
    subscribe(app, AppointmentCancelled, "integration.jobs.notify_appointment_cancelled", queue="notify")
    register_periodic(app, "integration.jobs.check_subscriptions", app.config["SUBSCRIPTION_CHECK_SECONDS"],
                      queue="notify")
