"""What billing's codes are called on its pages, in the reader's language: service lines, the ways
revenue is grouped, how a payment arrived.

The codes themselves (`scan`, `ai-analysis`, `2026-12`, `web payment`) stay as they are in the
database, the API, FHIR and the CSV export, which integrators and spreadsheets read; only a person
reading a page gets words.
"""

from __future__ import annotations

import logging
from datetime import date

from babel.dates import format_skeleton

from billing.models import ServiceLine
from hospital.i18n import babel_locale
from hospital.i18n import gettext as _
from hospital.i18n import lazy_gettext as _l

logger = logging.getLogger(__name__)

SERVICE_LINE_WORDS = {
    ServiceLine.SCAN: _l("Scan"),
    ServiceLine.AI_ANALYSIS: _l("AI analysis"),
    ServiceLine.CONSULTATION: _l("Consultation"),
    ServiceLine.MEDICATION: _l("Medication"),
}

REVENUE_GROUP_HEADINGS = {
    "service_line": _l("By service line"),
    "organization": _l("By organisation"),
    "month": _l("By month"),
    "model": _l("By partner model"),
    "partner": _l("By partner"),
}

REVENUE_GROUP_CHART_TITLES = {
    "service_line": _l("Revenue by service line"),
    "organization": _l("Revenue by organisation"),
    "month": _l("Revenue by month"),
    "model": _l("Revenue by partner model"),
    "partner": _l("Revenue by partner"),
}

# The revenue charts' legend: the AI-enabled part of each bar, and the rest.
REVENUE_CHART_LEGEND = (_l("AI-enabled"), _l("Other revenue"))

REVENUE_GROUP_COLUMNS = {
    "service_line": _l("Service line"),
    "organization": _l("Organisation"),
    "month": _l("Month"),
    "model": _l("Partner model"),
    "partner": _l("Partner"),
}

# Each revenue table's download link says which table it downloads (links of one name that lead to
# different files confuse a screen reader's list of links).
REVENUE_GROUP_DOWNLOADS = {
    "service_line": _l("Download CSV of revenue by service line"),
    "organization": _l("Download CSV of revenue by organisation"),
    "month": _l("Download CSV of revenue by month"),
    "model": _l("Download CSV of revenue by partner model"),
    "partner": _l("Download CSV of revenue by partner"),
}

# How a payment came in, as the pages record it in `Payment.reference`; a reference an
# administrator typed (a remittance number) is shown as typed.
PAYMENT_REFERENCE_WORDS = {
    "web payment": _l("paid online"),
    "insurer remittance": _l("insurer remittance"),
}

# The revenue report's organisation group for charges no centre made.
PLATFORM_GROUP = "(platform)"


def service_line_word(line: ServiceLine | str) -> str:
    try:
        return str(SERVICE_LINE_WORDS[ServiceLine(line)])
    except ValueError:
        return str(line)


def revenue_group_label(group_by: str, key: str) -> str:
    """A revenue line's group as a reader names it: "AI analysis", "December 2026" / "2026年12月",
    the organisation's own name."""
    if group_by == "service_line":
        return service_line_word(key)
    if group_by == "month":
        try:
            year, month = (int(part) for part in key.split("-"))
            return format_skeleton("yMMMM", date(year, month, 1), locale=babel_locale())
        except ValueError:
            return key
    if group_by == "organization" and key == PLATFORM_GROUP:
        return _("Platform-wide")
    if group_by == "model" and key == PLATFORM_GROUP:
        return _("No partner model (the platform's own services)")
    if group_by == "partner" and key == PLATFORM_GROUP:
        return _("No partner (the platform's own services)")
    return key


def payment_reference_word(reference: str | None) -> str:
    if not reference:
        return _("payment")
    word = PAYMENT_REFERENCE_WORDS.get(reference)
    return str(word) if word is not None else reference
