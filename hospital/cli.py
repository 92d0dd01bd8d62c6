"""The `hospital` command: database, demo, web server, worker, and the stages' own commands
(`hospital dicom`, `hospital ai ...`) which they register on the app."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import click
from flask import current_app
from flask.cli import FlaskGroup
from rq import Queue, Worker
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from werkzeug.serving import run_simple

from demo.cli import demo_command
from hospital import migrate
from hospital.app import create_app
from hospital.audit import verify_chain
from hospital.backup import BackupError, backup, restore
from hospital.db import get_db
from hospital.errors import InvalidInput
from hospital.jobs import QUEUES, JobSweeper, redis_connection, sweep_if_due, sweep_lost_jobs
from hospital.models import SmartClient, User
from hospital.periodic import enqueue_periodic_jobs, run_scheduler
from hospital.process_registry import Heartbeat, running_processes, worker_name
from hospital.retention import DataClass, run_retention
from hospital.seed import DEMO_PASSWORD, seed_demo
from hospital.smart import disable_client, register_client

logger = logging.getLogger(__name__)


@click.group(cls=FlaskGroup, create_app=lambda: create_app(), add_default_commands=True)
def cli() -> None:
    """Closed-loop imaging internet hospital."""


# The demo is not core but a client of the public API in its own package; this composition root is
# the one place the core names it.
cli.add_command(demo_command)


@cli.group("db")
def db_group() -> None:
    """Schema migrations (Alembic)."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@click.option("--force", is_flag=True,
              help="run destructive (contract) steps even while older code is registered as running")
def db_upgrade(revision: str, force: bool) -> None:
    """Migrate the database in DATABASE_URL up to REVISION (default: head). Refuses a migration
    marked destructive while a worker, web or DICOM process written for an older schema is
    registered in Redis (or when there is no Redis to ask), unless --force."""
    database_url = current_app.config["DATABASE_URL"]
    steps = migrate.pending_destructive_steps(database_url, revision)
    if steps and not force:
        conn = redis_connection(current_app._get_current_object())  # type: ignore[attr-defined]
        names = ", ".join(step.revision for step in steps)
        if conn is None:
            raise click.ClickException(
                f"migration {names} is destructive and REDIS_URL is not set (nor REDIS_SENTINELS), so the running processes cannot be "
                "checked: stop every process of the old release first, then run again with --force")
        blocking = migrate.old_code_blocking(database_url, running_processes(conn), revision)
        if blocking:
            lines = sorted({f"  {process.kind} {process.name} (code for schema {process.schema_head or 'unknown'})"
                            for _step, process in blocking})
            raise click.ClickException(
                f"migration {names} is destructive (a contract step) and code that needs the old schema is still "
                "running:\n" + "\n".join(lines) + "\nfinish the rolling restart onto the new release first "
                "(or pass --force once those are known to be gone)")
    migrate.upgrade(database_url, revision)
    click.echo(f"database at {revision}")


@db_group.command("grant-app-role")
@click.argument("role")
def db_grant_app_role(role: str) -> None:
    """Create ROLE for the application to connect as (run as the tables' owner): normal reads and
    writes everywhere, but only SELECT and INSERT on the audit trail. Set its password with ALTER ROLE."""
    migrate.grant_app_role(current_app.config["DATABASE_URL"], role)
    click.echo(f"role {role} may read and write the tables, and only read and append audit_event")


@db_group.command("downgrade")
@click.argument("revision", default="base")
def db_downgrade(revision: str) -> None:
    migrate.downgrade(current_app.config["DATABASE_URL"], revision)
    click.echo(f"database at {revision}")


@cli.group("audit")
def audit_group() -> None:
    """The audit trail."""


@audit_group.command("verify")
def audit_verify_command() -> None:
    """Walk the audit trail's hash chain; report the first broken link and exit 1 if there is one.
    Keep the printed head hash somewhere the database's superuser cannot reach: a trail cut short
    at its end (or emptied) is a valid chain, and only a head kept elsewhere shows it."""
    with get_db().transaction() as session:
        report = verify_chain(session)
    if report.broken is not None:
        click.echo(f"audit chain broken at audit_event {report.broken.event_id}: {report.broken.reason} "
                   f"({report.rows} rows read)", err=True)
        sys.exit(1)
    click.echo(f"audit chain intact: {report.rows} rows; head {report.head_hash}")


@cli.command("backup")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def backup_command(directory: Path) -> None:
    """Back up the database, the DICOM store and the model files into DIRECTORY (absent or empty),
    with a manifest of SHA-256 hashes and the schema revision (hospital/backup.py)."""
    try:
        manifest = backup(current_app._get_current_object(), directory)  # type: ignore[attr-defined]
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"backup in {directory}: {len(manifest['files'])} files, schema {manifest['schema_revision']}")


@cli.command("restore")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def restore_command(directory: Path) -> None:
    """Restore the backup in DIRECTORY into this installation, which must be empty (no tables, no
    stored files); refuses a backup whose files do not match its manifest."""
    try:
        result = restore(current_app._get_current_object(), directory)  # type: ignore[attr-defined]
    except BackupError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"restored schema {result.manifest['schema_revision']}; audit chain intact: "
               f"{result.audit.rows} rows; head {result.audit.head_hash}")


@cli.group("retention")
def retention_group() -> None:
    """Retention rules and legal holds (set them on the Storage page, /admin/storage)."""


@retention_group.command("run")
@click.option("--dry-run", is_flag=True, help="list what would be deleted, delete nothing")
@click.option("--class", "classes", multiple=True, type=click.Choice([c.value for c in DataClass]),
              help="only these classes (default: every class with a rule)")
def retention_run_command(dry_run: bool, classes: tuple[str, ...]) -> None:
    """Delete what each retention rule names, past its period and not on legal hold; every deletion
    audited. The audit class needs the tables' owner (DATABASE_URL of the migrations)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        with get_db().transaction() as session:
            report = run_retention(app, session, dry_run=dry_run,
                                   classes=[DataClass(c) for c in classes] if classes else None)
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from exc
    except DBAPIError as exc:
        # Most often the application's role running the audit class: it may not delete audit rows.
        raise click.ClickException(
            f"the database refused the run, nothing was deleted: {str(exc.orig).strip()[:300]} (the audit class "
            "needs the tables' owner: run it with the DATABASE_URL the migrations use)") from exc
    if not report.outcomes:
        click.echo("no retention rules: nothing is deleted")
    verb = "would delete" if dry_run else "deleted"
    for outcome in report.outcomes:
        click.echo(f"{outcome.data_class.value} (keep {outcome.keep_days} days, before {outcome.cutoff:%Y-%m-%d %H:%M}Z): "
                   f"{verb} {len(outcome.deleted)}, kept on hold {len(outcome.kept_on_hold)}"
                   + (f", {outcome.freed_bytes} bytes" if outcome.freed_bytes else "")
                   + (f"; {outcome.note}" if outcome.note else ""))
        for item in outcome.deleted:
            click.echo(f"  {verb}: {item}")
        for item in outcome.kept_on_hold:
            click.echo(f"  kept on hold: {item}")


@cli.command("seed")
def seed_command() -> None:
    """Add the demo organisations, users, schedules, catalog and AI model (idempotent)."""
    with get_db().transaction() as session:
        seed_demo(session, current_app._get_current_object())  # type: ignore[attr-defined]
    click.echo(f"demo users seeded; password for all: {DEMO_PASSWORD}")


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def serve_command(host: str, port: int) -> None:
    """Serve the web app with Werkzeug (production: gunicorn 'hospital.wsgi:app')."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    conn = redis_connection(app)
    heartbeat = Heartbeat(conn, "web") if conn is not None else None
    if heartbeat is not None:
        heartbeat.start()
    # SIGINT and SIGTERM stop the server whatever this process inherited: a parent that started
    # it in the background may have left SIGINT ignored, in which case Python installs no handler
    # of its own and Ctrl-C (or a test's SIGINT) would be lost.
    previous = {sig: signal.signal(sig, _stop_serving) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Werkzeug directly: Flask refuses app.run() inside its own CLI.
        run_simple(host, port, app, threaded=True)
    except KeyboardInterrupt:
        pass  # a signal before Werkzeug's own loop began
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if heartbeat is not None:
            heartbeat.stop()


def _stop_serving(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # Werkzeug's serve_forever ends on it and closes its socket


@cli.command("worker")
@click.option("--queue", "queues", multiple=True, default=QUEUES, show_default=True)
@click.option("--burst", is_flag=True, help="exit once the queues are empty")
@click.option("--sweep-every", default=30.0, show_default=True, type=float, envvar="JOB_SWEEP_SECONDS",
              help="seconds between sweeps for lost work, across all workers (0: no sweeper)")
@click.option("--sweep-after", default=60.0, show_default=True, type=float, envvar="JOB_SWEEP_AFTER_SECONDS",
              help="seconds a queued record may wait (running: the job timeout plus this) before it counts as lost")
def worker_command(queues: tuple[str, ...], burst: bool, sweep_every: float, sweep_after: float) -> None:
    """Run an RQ worker for the given queues (needs REDIS_URL or REDIS_SENTINELS), with a sweeper that re-sends work
    lost with Redis or with a dead worker (a burst worker sweeps once, when it starts)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    conn = redis_connection(app)
    if conn is None:
        raise click.ClickException("neither REDIS_URL nor REDIS_SENTINELS is set: without Redis, jobs run inline and no worker is needed")
    sweeper = None
    if sweep_every > 0 and burst:
        sweep_if_due(app, every_seconds=sweep_every, older_than_seconds=sweep_after)
    elif sweep_every > 0:
        sweeper = JobSweeper(app, every_seconds=sweep_every, older_than_seconds=sweep_after)
        sweeper.start()
    # The name carries the schema head this code was written for (hospital/process_registry.py).
    worker = Worker([Queue(name, connection=conn) for name in queues], connection=conn, name=worker_name())
    try:
        worker.work(burst=burst, with_scheduler=True)
    finally:
        if sweeper is not None:
            sweeper.stop()


@cli.command("scheduler")
@click.option("--once", is_flag=True, help="enqueue every periodic job once and exit (for cron)")
@click.option("--tick", default=5.0, show_default=True, type=float, help="seconds between checks")
def scheduler_command(once: bool, tick: float) -> None:
    """Enqueue periodic jobs (follow-up reminders, due repeat scans) when they fall due."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if once:
        ids = enqueue_periodic_jobs(app)
        click.echo(f"enqueued {len(ids)} periodic job(s)")
        return
    run_scheduler(app, tick_seconds=tick)


@cli.group("jobs")
def jobs_group() -> None:
    """Durable job records."""


@jobs_group.command("sweep")
@click.option("--older-than", default=60, show_default=True, type=int, help="seconds a queued record may wait")
@click.option("--include-failed", is_flag=True, help="also re-run records that failed (after fixing the cause)")
def sweep_command(older_than: int, include_failed: bool) -> None:
    """Hand lost job records to the queue again now (workers also do this on their own):
    queued ones RQ no longer holds (e.g. Redis lost its data) and running ones whose worker died."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    ids = sweep_lost_jobs(app, older_than_seconds=older_than, include_failed=include_failed)
    click.echo(f"re-dispatched {len(ids)} job record(s)")


def main() -> None:
    cli(prog_name="hospital")


if __name__ == "__main__":
    main()


@cli.group("smart-client")
def smart_client_group() -> None:
    """SMART on FHIR apps registered by an administrator."""


@smart_client_group.command("add")
@click.option("--name", required=True, help="The app's name, as the consent screen shows it.")
@click.option("--scope", "scopes", required=True, help="Space-separated: the most the app may ask for.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI (repeat for more).")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The app's public keys (JWKS JSON): a confidential app or backend service.")
@click.option("--jwks-uri", help="Where the app publishes its JWKS, instead of --jwks-file.")
@click.option("--service-user", help="Username a backend service acts as (its role bounds system/ scopes).")
def smart_client_add(scopes: str, name: str, redirect_uris: tuple[str, ...], jwks_file: Path | None,
                     jwks_uri: str | None, service_user: str | None) -> None:
    """Register an app and print its client_id."""
    with get_db().transaction() as session:
        user = None
        if service_user:
            user = session.scalar(select(User).where(User.username == service_user))
            if user is None:
                raise click.ClickException(f"no user named {service_user!r}")
        try:
            jwks = json.loads(jwks_file.read_text()) if jwks_file is not None else None
            client = register_client(session, name=name, scopes=scopes, redirect_uris=list(redirect_uris),
                                     jwks=jwks, jwks_uri=jwks_uri, service_user=user)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(client.client_id)


@smart_client_group.command("list")
def smart_client_list() -> None:
    """Registered apps: client_id, name, scopes."""
    with get_db().transaction() as session:
        for client in session.scalars(select(SmartClient).order_by(SmartClient.id)):
            state = "" if client.active else " (disabled)"
            click.echo(f"{client.client_id}\t{client.name}{state}\t{client.scopes}")


@smart_client_group.command("disable")
@click.argument("client_id")
def smart_client_disable(client_id: str) -> None:
    """Stop an app: no new authorisations or tokens, and every token it holds is revoked."""
    with get_db().transaction() as session:
        if disable_client(session, client_id) is None:
            raise click.ClickException(f"no app with client_id {client_id!r}")
    click.echo(f"{client_id} disabled; its tokens are revoked")
