"""The app factory. This is the composition root: the one place that wires the stages in.

Each stage's `wiring.register(app)`, which adds its blueprint, FHIR mappings, patient
scopes, event subscriptions, CLI commands and demo seeders. Stages never import one another
backwards; the factory only lists them in flow order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import ai_services.wiring
import billing.wiring
import followup.wiring
import imaging_orders.wiring
import integration.wiring
import referrals.wiring
import research.wiring
from hospital import (
    access,
    admin_pages,
    api,
    auth,
    csrf,
    db,
    emergency,
    emergency_routes,
    errors_http,
    i18n,
    jobs,
    limits,
    logging_setup,
    metrics,
    notification_routes,
    notify,
    openapi,
    periodic,
    ratelimit,
    readiness,
    record_openings_routes,
    retention,
    retention_routes,
    smart_routes,
    web,
)
from hospital.config import load_config
from hospital.fhir import core_resources
from hospital.fhir import registry as fhir_registry
from hospital.fhir import routes as fhir_routes

logger = logging.getLogger(__name__)

STAGES = (
    referrals.wiring, imaging_orders.wiring, ai_services.wiring, research.wiring, followup.wiring, billing.wiring, integration.wiring,
)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    config = load_config(test_config)
    app = db.UnitOfWorkFlask("hospital", instance_path=str(config["INSTANCE_DIR"]))
    app.config.update(config)
    config["INSTANCE_DIR"].mkdir(parents=True, exist_ok=True)
    _configure_logging(app)
    _trust_proxies(app)

    logging_setup.init_app(app)
    metrics.init_app(app)
    db.init_app(app)
    jobs.init_app(app)
    auth.init_app(app)
    access.init_app(app)
    emergency.init_app(app)
    notify.init_app(app)
    i18n.init_app(app)
    ratelimit.init_app(app)
    periodic.init_app(app)
    retention.init_app(app)
    fhir_registry.init_app(app)
    core_resources.register_fhir(app)
    app.extensions["hospital.seeders"] = []

    readiness.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(web.bp)
    app.register_blueprint(fhir_routes.bp)
    admin_pages.register(app)
    emergency_routes.register(app)
    record_openings_routes.register(app)
    notification_routes.register(app)
    retention_routes.register(app)
    smart_routes.register(app)
    limits.init_app(app)
    csrf.init_app(app)
    errors_http.init_app(app)
    for stage in STAGES:
        stage.register(app)
        # Each stage's strings are in its own catalog, beside its templates.
        i18n.add_catalog(app, Path(str(stage.__file__)).resolve().parent / "translations")
    jobs.check_subscriptions(app, packages=[stage.__name__.split(".")[0] for stage in STAGES])
    return app


def _trust_proxies(app: Flask) -> None:
    """Take the client's address and scheme from the `TRUSTED_PROXIES` nearest X-Forwarded-*
    entries, so rate limits and audit see the real client, not the proxy."""
    count = int(app.config["TRUSTED_PROXIES"])
    if count > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count)  # type: ignore[method-assign]


def _configure_logging(app: Flask) -> None:
    logging_setup.configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
