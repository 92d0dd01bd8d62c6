"""`hospital demo`: run one whole closed loop on this configuration, print its summary, then serve.

What a newcomer meets first, so it is quiet (a line per step, then the summary; `--verbose` for
every log line, a few per DICOM instance), brings the embedded database to the current schema
itself, and stops with one line saying what to do when it cannot go on: a database someone else
runs that is not migrated, or a DICOM port already taken by something that is not ours.
"""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from werkzeug.serving import run_simple

from demo.closed_loop import DicomPortInUse, run_demo
from hospital import migrate
from hospital.seed import DEMO_PASSWORD

logger = logging.getLogger(__name__)


def bring_schema_to_head(database_url: str) -> None:
    """Migrate the embedded SQLite database when it is behind; refuse any other database that is.

    Someone else's database (PostgreSQL) is migrated by whoever runs it, on purpose, not as a side
    effect of a demo."""
    url = make_url(database_url)
    shown = url.render_as_string(hide_password=True)
    try:
        if migrate.is_at_head(database_url):
            return
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise click.ClickException(f"cannot reach the database {shown}: {reason}") from exc
    if url.get_backend_name() != "sqlite":
        raise click.ClickException(f"the database {shown} is not at the current schema; "
                                   f"run `hospital db upgrade` first")
    migrate.upgrade(database_url)
    click.echo(f"embedded database {url.database} migrated to the current schema")


@click.command("demo")
@click.option("--serve/--no-serve", default=True, show_default=True, help="serve the web app afterwards")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--dicom-port", default=None, type=int, help="port for the demo's DICOM server (default: config)")
@click.option("--verbose", is_flag=True, help="log everything, including a few lines per DICOM instance")
@with_appcontext
def demo_command(serve: bool, host: str, port: int, dicom_port: int | None, verbose: bool) -> None:
    """Run one whole closed loop (referral to invoice) and print its summary; then serve."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    # The app configured logging at LOG_LEVEL; warnings and errors stay either way.
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    bring_schema_to_head(app.config["DATABASE_URL"])
    dicom_port = dicom_port or app.config["DICOM_PORT"]
    try:
        summary = run_demo(app, dicom_port=dicom_port, verbose=verbose, report_step=click.echo)
    except DicomPortInUse as exc:
        raise click.ClickException(f"{exc}: is another `hospital dicom` or demo running? "
                                   f"Stop it, or choose a free port with --dicom-port") from exc
    click.echo(summary.render())
    if serve:
        click.echo(f"\nServing on http://{host}:{port}  (demo logins: clinician, patient, imaging_staff, "
                   f"radiologist, pharmacist, admin; password {DEMO_PASSWORD})")
        run_simple(host, port, app, threaded=True)
