"""`hospital hl7`: the MLLP listener in the foreground (until SIGTERM or SIGINT), and the
administrator's commands: map a sender's codes, list kept messages, replay one, resend a result."""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from hospital.db import get_db
from hospital.errors import DomainError
from integration.hl7_inbound import replay_message
from integration.hl7_results import resend_dead_letter
from integration.mllp import start_hl7_listener
from integration.models import CodeKind, Hl7Message, Hl7Outbound, InboundStatus, OutboundStatus
from integration.service import set_code_map

logger = logging.getLogger(__name__)


@click.group("hl7", invoke_without_command=True)
@click.option("--host", default=None, help="Address to listen on (default: HL7_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: HL7_PORT).")
@click.pass_context
@with_appcontext
def hl7_group(ctx: click.Context, host: str | None, port: int | None) -> None:
    """HL7 v2 over MLLP: without a subcommand, run the listener until stopped."""
    if ctx.invoked_subcommand is not None:
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        start_hl7_listener(app, host=host, port=port, block=True)
    except OSError as exc:
        raise click.ClickException(f"cannot listen for HL7: {exc}") from exc
    except KeyboardInterrupt:
        pass
    click.echo("HL7 listener stopped")


@hl7_group.command("map")
@click.argument("kind", type=click.Choice([k.value for k in CodeKind]))
@click.argument("code")
@click.argument("target_id", type=int)
@with_appcontext
def map_command(kind: str, code: str, target_id: int) -> None:
    """Say what a sender's CODE means: `centre CODE ORGANIZATION_ID` (MSH-6) or
    `provider CODE PRACTITIONER_ID` (ORC-12)."""
    try:
        with get_db().transaction() as session:
            set_code_map(session, CodeKind(kind), code, target_id)
    except DomainError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"{kind} {code} -> {target_id}")


@hl7_group.command("messages")
@click.option("--all", "show_all", is_flag=True, help="also those processed")
@with_appcontext
def messages_command(show_all: bool) -> None:
    """Messages kept (by default those answered AE or AR), newest first."""
    with get_db().transaction() as session:
        query = select(Hl7Message).order_by(Hl7Message.id.desc()).limit(200)
        if not show_all:
            query = query.where(Hl7Message.status != InboundStatus.PROCESSED)
        for row in session.scalars(query):
            click.echo(f"{row.id}\t{row.received_at:%Y-%m-%d %H:%M:%S}\t{row.sending_facility or '-'}\t"
                       f"{row.control_id or '-'}\t{row.message_type or '-'}\t{row.ack_code}\t{row.reason or ''}")


@hl7_group.command("replay")
@click.argument("message_id", type=int)
@with_appcontext
def replay_command(message_id: int) -> None:
    """Apply a kept message again, once its cause is fixed."""
    try:
        row = replay_message(current_app._get_current_object(), message_id)  # type: ignore[attr-defined]
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"message {message_id}: {row.ack_code} {row.reason or ''}".strip())
    if row.status is not InboundStatus.PROCESSED:
        raise SystemExit(1)


@hl7_group.command("resend")
@click.argument("outbound_id", type=int)
@with_appcontext
def resend_command(outbound_id: int) -> None:
    """Send a given-up result (a dead letter) again."""
    try:
        with get_db().transaction() as session:
            resend_dead_letter(session, outbound_id)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"outbound {outbound_id} queued again")


@hl7_group.command("dead-letters")
@with_appcontext
def dead_letters_command() -> None:
    """Results given up on, newest first."""
    with get_db().transaction() as session:
        rows = session.scalars(select(Hl7Outbound).where(Hl7Outbound.status == OutboundStatus.DEAD)
                               .order_by(Hl7Outbound.id.desc()).limit(200))
        for row in rows:
            click.echo(f"{row.id}\treport {row.report_id}\t{row.destination}\t{row.control_id}\t{row.last_error or ''}")
