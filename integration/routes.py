"""The administrator's HL7 page: kept inbound messages (by default those answered AE/AR), one
message's raw text and ACK with a Replay, the dead-letter results with Resend, and the code maps.
Administrators only; every view and action is audited."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from hospital.audit import record_access
from hospital.auth import current_user, require_roles
from hospital.db import request_session
from hospital.errors import InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l
from hospital.models import Organization, OrganizationKind, Practitioner, Role
from hospital.web import add_nav_link, ask_first, form_action
from integration.hl7_inbound import replay_message
from integration.hl7_results import resend_dead_letter
from integration.models import CodeKind, Hl7CodeMap, Hl7Message, Hl7Outbound, InboundStatus, OutboundStatus
from integration.service import set_code_map

bp = Blueprint("hl7_admin", __name__, template_folder="templates")

PAGE_SIZE = 50


@bp.get("/admin/hl7")
@require_roles(Role.ADMIN)
def messages_page() -> ResponseReturnValue:
    session = request_session()
    show_all = request.args.get("all") == "1"
    before = request.args.get("before", type=int)
    query = select(Hl7Message).order_by(Hl7Message.id.desc()).limit(PAGE_SIZE + 1)
    if not show_all:
        query = query.where(Hl7Message.status != InboundStatus.PROCESSED)
    if before:
        query = query.where(Hl7Message.id < before)
    rows = list(session.scalars(query))
    older = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
    rows = rows[:PAGE_SIZE]
    dead = list(session.scalars(select(Hl7Outbound).where(Hl7Outbound.status == OutboundStatus.DEAD)
                                .order_by(Hl7Outbound.id.desc()).limit(200)))
    record_access(session, current_user(), "E", "Hl7Message", None,
                  description=f"HL7 admin page ({len(rows)} messages, {len(dead)} dead letters, all={show_all})")
    args = {"all": "1"} if show_all else {}
    return render_template("hl7/messages.html", rows=rows, dead=dead, show_all=show_all,
                           older_url=url_for(".messages_page", **args, before=older) if older else None,
                           newest_url=url_for(".messages_page", **args) if before else None)


@bp.route("/admin/hl7/messages/<int:message_id>", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def message_page(message_id: int) -> ResponseReturnValue:
    session = request_session()
    admin = current_user()
    row = session.get(Hl7Message, message_id)
    if row is None:
        raise NotFound(_("HL7 message %(id)s does not exist.", id=message_id))
    if request.method == "POST":
        if row.status is InboundStatus.PROCESSED:
            flash(_("This message was processed already; replaying it would apply it twice."), "error")
            return redirect(url_for(".message_page", message_id=message_id))
        ask_first(_("Apply HL7 message %(id)s again?", id=message_id), _("Replay"))
        record_access(session, admin, "U", "Hl7Message", message_id, description="replay asked on the HL7 admin page")
        session.commit()  # the replay runs in its own transaction and locks the row
        outcome = replay_message(current_app._get_current_object(), message_id)  # type: ignore[attr-defined]
        if outcome.status is InboundStatus.PROCESSED:
            flash(_("Replayed: accepted (AA)."))
        else:
            flash(_("Replayed: %(code)s %(reason)s", code=outcome.ack_code, reason=outcome.reason or ""), "error")
        return redirect(url_for(".message_page", message_id=message_id))
    record_access(session, admin, "R", "Hl7Message", message_id, description="HL7 message read on the admin page")
    raw = bytes(row.raw).decode("utf-8", errors="replace")
    ack = bytes(row.ack).decode("utf-8", errors="replace")
    return render_template("hl7/message.html", row=row, segments=_segments(raw), ack_segments=_segments(ack),
                           processed=row.status is InboundStatus.PROCESSED)


def _segments(text: str) -> list[str]:
    """HL7 separates segments with CR; shown one a line (the template escapes them)."""
    return [s for s in text.replace("\r\n", "\r").replace("\n", "\r").strip("\x0b\x1c\r").split("\r") if s]


@bp.post("/admin/hl7/outbound/<int:outbound_id>/resend")
@require_roles(Role.ADMIN)
def resend(outbound_id: int) -> ResponseReturnValue:
    session = request_session()

    def act() -> str:
        ask_first(_("Send result message %(id)s again?", id=outbound_id), _("Resend"))
        try:
            resend_dead_letter(session, outbound_id)
        except (LookupError, ValueError) as exc:
            raise InvalidInput(str(exc)) from exc
        record_access(session, current_user(), "U", "Hl7Outbound", outbound_id, description="dead letter resent")
        return _("Result message %(id)s is queued again.", id=outbound_id)

    form_action(session, act)
    return redirect(url_for(".messages_page"))


@bp.route("/admin/hl7/codes", methods=["GET", "POST"])
@require_roles(Role.ADMIN)
def codes_page() -> ResponseReturnValue:
    session = request_session()
    admin = current_user()
    if request.method == "POST":

        def act() -> str:
            try:
                kind = CodeKind(request.form.get("kind", ""))
            except ValueError:
                raise InvalidInput(_("Choose centre or provider.")) from None
            target = request.form.get("target_id", type=int)
            if target is None:
                raise InvalidInput(_("Choose what the code means here."))
            row = set_code_map(session, kind, request.form.get("code", ""), target)
            record_access(session, admin, "U", "Hl7CodeMap", row.id, description=f"{kind.value} {row.code} -> {target}")
            return _("%(code)s is mapped.", code=row.code)

        form_action(session, act)
        return redirect(url_for(".codes_page"))
    maps = list(session.scalars(select(Hl7CodeMap).order_by(Hl7CodeMap.kind, Hl7CodeMap.code)))
    centres = list(session.scalars(select(Organization).where(Organization.kind == OrganizationKind.IMAGING_CENTRE)
                                   .order_by(Organization.name)))
    practitioners = list(session.scalars(select(Practitioner).order_by(Practitioner.id)))
    record_access(session, admin, "E", "Hl7CodeMap", None, description="HL7 code maps listed")
    return render_template("hl7/codes.html", maps=maps, centres=centres, practitioners=practitioners,
                           centre_names={c.id: c.name for c in centres},
                           practitioner_names={p.id: p.display_name for p in practitioners}, CodeKind=CodeKind)


def register(app: Flask) -> None:
    app.register_blueprint(bp)
    add_nav_link(app, _l("HL7"), "hl7_admin.messages_page", Role.ADMIN)
