"""`hospital dicom`: run the imaging centre's DICOM node (C-ECHO, C-STORE, Modality Worklist) in
the foreground until SIGTERM or SIGINT, as a process manager expects."""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import ScriptInfo, with_appcontext

from hospital.jobs import redis_connection
from hospital.process_registry import Heartbeat
from imaging_orders.archive.dicom_server import start_dicom_server
from imaging_orders.archive.node_processes import NodeProcessesFailed, run_node_processes

logger = logging.getLogger(__name__)

DEFAULT_APP = "hospital.app:create_app"


@click.command("dicom")
@click.option("--host", default=None, help="Address to listen on (default: DICOM_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: DICOM_PORT).")
@click.option("--ae-title", default=None, help="Our AE title (default: DICOM_AE_TITLE).")
@click.option("--processes", type=click.IntRange(1, 64), default=None,
              help="Node processes sharing the port, e.g. one per core (default: DICOM_PROCESSES, 1).")
@with_appcontext
def dicom_command(host: str | None, port: int | None, ae_title: str | None, processes: int | None) -> None:
    """Run the DICOM node until stopped."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if ae_title is not None and not (0 < len(ae_title.strip()) <= 16):
        raise click.BadParameter("an AE title is 1 to 16 characters", param_hint="--ae-title")
    processes = processes or int(app.config.get("DICOM_PROCESSES") or 1)
    script_info = click.get_current_context().find_object(ScriptInfo)
    # Registered with the schema its code was written for: `hospital db upgrade` waits for it.
    conn = redis_connection(app)
    heartbeat = Heartbeat(conn, "dicom") if conn is not None else None
    if heartbeat is not None:
        heartbeat.start()
    try:
        if processes > 1:
            # The children load the app as this command did: `flask --app X` (or FLASK_APP) names it;
            # the `hospital` command's own factory is the platform's.
            app_import_path = (script_info.app_import_path if script_info else None) or DEFAULT_APP
            run_node_processes(app, processes, app_import_path=app_import_path, host=host, port=port, ae_title=ae_title)
        else:
            start_dicom_server(app, host=host, port=port, ae_title=ae_title, block=True)
    except NodeProcessesFailed as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        # Most often the port is taken or privileged; say so instead of a traceback.
        raise click.ClickException(f"cannot listen for DICOM: {exc}") from exc
    finally:
        if heartbeat is not None:
            heartbeat.stop()
    click.echo("DICOM node stopped")
