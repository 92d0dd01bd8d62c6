"""`hospital dicom`: run the imaging centre's DICOM node (C-ECHO, C-STORE, Modality Worklist) in
the foreground until SIGTERM or SIGINT, as a process manager expects."""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import with_appcontext

from hospital.jobs import redis_connection
from hospital.process_registry import Heartbeat
from imaging_orders.archive.dicom_server import start_dicom_server

logger = logging.getLogger(__name__)


@click.command("dicom")
@click.option("--host", default=None, help="Address to listen on (default: DICOM_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: DICOM_PORT).")
@click.option("--ae-title", default=None, help="Our AE title (default: DICOM_AE_TITLE).")
@with_appcontext
def dicom_command(host: str | None, port: int | None, ae_title: str | None) -> None:
    """Run the DICOM node until stopped."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if ae_title is not None and not (0 < len(ae_title.strip()) <= 16):
        raise click.BadParameter("an AE title is 1 to 16 characters", param_hint="--ae-title")
    # Registered with the schema its code was written for: `hospital db upgrade` waits for it.
    conn = redis_connection(app)
    heartbeat = Heartbeat(conn, "dicom") if conn is not None else None
    if heartbeat is not None:
        heartbeat.start()
    try:
        start_dicom_server(app, host=host, port=port, ae_title=ae_title, block=True)
    except OSError as exc:
        # Most often the port is taken or privileged; say so instead of a traceback.
        raise click.ClickException(f"cannot listen for DICOM: {exc}") from exc
    finally:
        if heartbeat is not None:
            heartbeat.stop()
    click.echo("DICOM node stopped")
