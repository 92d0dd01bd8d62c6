"""`hospital demo`: run one whole closed loop on this configuration, print its summary, then serve."""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import with_appcontext
from werkzeug.serving import run_simple

from demo.closed_loop import run_demo
from hospital.seed import DEMO_PASSWORD

logger = logging.getLogger(__name__)


@click.command("demo")
@click.option("--serve/--no-serve", default=True, show_default=True, help="serve the web app afterwards")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--dicom-port", default=None, type=int, help="port for the demo's DICOM server (default: config)")
@with_appcontext
def demo_command(serve: bool, host: str, port: int, dicom_port: int | None) -> None:
    """Run one whole closed loop (referral to invoice) and print its summary; then serve."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    summary = run_demo(app, dicom_port=dicom_port or app.config["DICOM_PORT"])
    click.echo(summary.render())
    if serve:
        click.echo(f"\nServing on http://{host}:{port}  (demo logins: clinician, patient, imaging_staff, "
                   f"radiologist, pharmacist, admin; password {DEMO_PASSWORD})")
        run_simple(host, port, app, threaded=True)
