"""Partner statements: what each AI partner's model packages earned in a period (a calendar month
on the reader's clock), per package version: the analyses charged, the revenue, the partner's share
and the platform's.

The share is the one each charge recorded when it was made (`ChargeItem.partner_share_bp`), so a
later change of a package's terms never rewrites a past statement; each charge's partner share is
rounded down to the minor unit and the platform keeps the rest, so the two always add up.

Who reads which: an administrator any partner's; a partner account (role `partner`) only its own
organisation's (`ai_services.package_service` decides partners the same way).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.models import ChargeItem, ChargeStatus
from billing.money import major_units
from hospital import clock
from hospital.audit import record_access
from hospital.errors import Forbidden, InvalidInput, NotFound
from hospital.i18n import gettext as _
from hospital.models import Organization, OrganizationKind, Role, User

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatementLine:
    package_id: int | None
    model: str  # "name version"
    currency: str
    analyses: int
    revenue_minor: int
    partner_share_minor: int

    @property
    def platform_share_minor(self) -> int:
        return self.revenue_minor - self.partner_share_minor


@dataclass(frozen=True)
class StatementTotal:
    currency: str
    analyses: int
    revenue_minor: int
    partner_share_minor: int
    platform_share_minor: int


@dataclass(frozen=True)
class PartnerStatement:
    partner_organization_id: int
    partner_name: str
    month: str  # YYYY-MM
    lines: tuple[StatementLine, ...]

    @property
    def totals(self) -> tuple[StatementTotal, ...]:
        by_currency: dict[str, list[int]] = {}
        for line in self.lines:
            acc = by_currency.setdefault(line.currency, [0, 0, 0, 0])
            acc[0] += line.analyses
            acc[1] += line.revenue_minor
            acc[2] += line.partner_share_minor
            acc[3] += line.platform_share_minor
        return tuple(StatementTotal(currency, *acc) for currency, acc in sorted(by_currency.items()))


def month_bounds(month: str, zone_name: str | None) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of "YYYY-MM" on the clock of `zone_name`."""
    try:
        year, number = (int(part) for part in month.split("-"))
        zone = clock.zone(zone_name)
        start = datetime(year, number, 1, tzinfo=zone)
        end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=zone)
    except ValueError as exc:
        raise InvalidInput(_("A month is written like 2026-12, not “%(typed)s”.", typed=month[:20]),
                           for_people=True) from exc
    return start, end


def statement_partners(session: Session, user: User) -> list[Organization]:
    """The partners whose statements `user` may read: every AI partner for an administrator, its
    own organisation for a partner account, none for anyone else."""
    if user.role is Role.ADMIN:
        return list(session.scalars(select(Organization).where(Organization.kind == OrganizationKind.AI_PARTNER)
                                    .order_by(Organization.name)))
    if user.role is Role.PARTNER and user.organization is not None:
        return [user.organization]
    return []


def partner_statement(session: Session, user: User, partner_organization_id: int, month: str,
                      zone_name: str | None = None) -> PartnerStatement:
    """The partner's statement for `month`; another partner's is NotFound to a partner account (its
    existence is not theirs to learn)."""
    if user.role not in (Role.ADMIN, Role.PARTNER):
        raise Forbidden(_("Partner statements are for administrators and the partner's own accounts."))
    partner = session.get(Organization, partner_organization_id)
    if partner is None or (user.role is Role.PARTNER and user.organization_id != partner.id):
        raise NotFound(_("There is no statement of partner %(number)s for you.", number=partner_organization_id),
                       for_people=True)
    start, end = month_bounds(month, zone_name)
    share = func.sum((ChargeItem.total_minor * ChargeItem.partner_share_bp) // 10_000)
    rows = session.execute(
        select(ChargeItem.model_package_id, ChargeItem.model_label, ChargeItem.currency, func.count(),
               func.sum(ChargeItem.total_minor), share)
        .where(ChargeItem.partner_organization_id == partner.id, ChargeItem.status != ChargeStatus.NOT_BILLABLE,
               ChargeItem.occurred_at >= start, ChargeItem.occurred_at < end)
        .group_by(ChargeItem.model_package_id, ChargeItem.model_label, ChargeItem.currency)
        .order_by(ChargeItem.model_label, ChargeItem.currency)
    ).all()
    lines = tuple(StatementLine(package_id, label or "", currency, int(count), int(total), int(partner_share))
                  for package_id, label, currency, count, total, partner_share in rows)
    record_access(session, user, "E", "ChargeItem", None,
                  description=f"partner statement of organisation {partner.id} for {month} ({len(lines)} lines)")
    return PartnerStatement(partner.id, partner.name, month, lines)


def statement_csv(statement: PartnerStatement) -> str:
    """Amounts in major units with '.' as the decimal mark, beside their currency (like revenue_csv)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["partner", "month", "model", "currency", "analyses", "revenue", "partner_share", "platform_share"])
    for line in statement.lines:
        writer.writerow([statement.partner_name, statement.month, line.model, line.currency, line.analyses,
                         major_units(line.revenue_minor, line.currency),
                         major_units(line.partner_share_minor, line.currency),
                         major_units(line.platform_share_minor, line.currency)])
    return out.getvalue()
