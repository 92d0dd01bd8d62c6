"""Partner statement pages and API: an administrator reads any AI partner's month, a partner
account its own (billing.statements), on a page in the reader's language or as CSV."""

from __future__ import annotations

import logging
from dataclasses import asdict

from flask import Blueprint, Response, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from billing.statements import partner_statement, statement_csv, statement_partners
from hospital import clock
from hospital.auth import current_user, require_roles
from hospital.clock import utcnow
from hospital.db import request_session
from hospital.errors import InvalidInput, NotFound
from hospital.i18n import format_money
from hospital.i18n import gettext as _
from hospital.models import Role
from hospital.web import reader_timezone

logger = logging.getLogger(__name__)

bp = Blueprint("billing_statements", __name__, template_folder="templates")


def _this_month(zone_name: str | None) -> str:
    return utcnow().astimezone(clock.zone(zone_name)).strftime("%Y-%m")


@bp.get("/api/partner-statements/<int:partner_id>")
@require_roles(Role.ADMIN, Role.PARTNER)
def partner_statement_api(partner_id: int) -> ResponseReturnValue:
    """`month=YYYY-MM` (default this month, on the reader's clock); `format=csv`: amounts in major units."""
    user = current_user()
    zone_name = reader_timezone(user)
    month = request.args.get("month", "").strip() or _this_month(zone_name)
    statement = partner_statement(request_session(), user, partner_id, month, zone_name)
    if request.args.get("format") == "csv":
        return Response(statement_csv(statement), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="partner-statement-{partner_id}-{statement.month}.csv"'})
    return jsonify({
        "partner_organization_id": statement.partner_organization_id, "partner": statement.partner_name,
        "month": statement.month,
        "lines": [{**asdict(line), "platform_share_minor": line.platform_share_minor} for line in statement.lines],
        "totals": [asdict(total) for total in statement.totals],
    })


@bp.get("/partner-statements")
@require_roles(Role.ADMIN, Role.PARTNER)
def partner_statement_page() -> ResponseReturnValue:
    session = request_session()
    user = current_user()
    zone_name = clock.zone(reader_timezone(user)).key
    partners = statement_partners(session, user)
    month = request.args.get("month", "").strip() or _this_month(zone_name)
    chosen = request.args.get("partner", type=int) or (partners[0].id if partners else None)
    if chosen is None:
        raise NotFound(_("There is no partner statement for you."), for_people=True)
    try:
        statement = partner_statement(session, user, chosen, month, zone_name)
    except InvalidInput as exc:
        page = render_template("billing/partner_statement.html", statement=None, partners=partners, chosen=chosen,
                               month=month, error=exc.message, zone_name=zone_name, money=format_money)
        return page, 422
    return render_template("billing/partner_statement.html", statement=statement, partners=partners, chosen=chosen,
                           month=month, error=None, zone_name=zone_name, money=format_money)
