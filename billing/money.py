"""Money at the edge: an amount as a person types it, in their locale ("165,00" or "165.00"), to
integer minor units; integer minor units back to the text a form field is filled with ("165.00" as
the reader's locale writes a number); and to major-unit text ("75.00") for exports.

Inside, money stays integer minor units with an ISO 4217 currency; how many decimals a currency
has (EUR 2, CNY 2, JPY 0, BHD 3) comes from Babel's CLDR data, not from an assumption of two.
Pages show amounts with `hospital.i18n.format_money` ("¥1,280.00", "€243.50"); a form field is
prefilled by `typed_amount` in the locale `parse_amount` tries first, so it reads back as meant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from babel import Locale
from babel.numbers import NumberFormatError, format_decimal, get_currency_precision, parse_decimal

from hospital.errors import InvalidInput
from hospital.i18n import gettext as _
from hospital.i18n import ngettext

logger = logging.getLogger(__name__)


def currency_decimals(currency: str) -> int:
    return int(get_currency_precision(currency.upper()))


def major_units(minor: int, currency: str) -> str:
    """7500 EUR -> '75.00'; 7500 JPY -> '7500'. Exact (Decimal), no grouping, '.' as the decimal
    mark: what a spreadsheet reads as a number."""
    decimals = currency_decimals(currency)
    return f"{Decimal(minor).scaleb(-decimals):.{decimals}f}"


def typed_amount(minor: int, currency: str, locale: Locale) -> str:
    """`minor` as a person of `locale` types it in a form field: the currency's decimals, the
    locale's decimal mark, no grouping and no symbol (12250 EUR -> "122.50"; "122,50" in German),
    so that `parse_amount` reads a prefilled field back to the same amount."""
    decimals = currency_decimals(currency)
    pattern = "0." + "0" * decimals if decimals else "0"
    return format_decimal(Decimal(minor).scaleb(-decimals), format=pattern, locale=locale)


def parse_amount(text: str, currency: str, locales: Iterable[Locale]) -> int:
    """`text`, typed in one of `locales` (best first), as a non-negative number of `currency`'s
    minor units. Each locale is tried strictly, in order: '165,00' reads as 165.00 for a German
    reader, and as 165.00 too for an English one whose browser also accepts German; '1,500' for an
    English reader is 1500. More decimals than the currency has, or a negative amount, is refused."""
    typed = text.strip()
    locales = list(locales)
    if not typed:
        raise InvalidInput(_("The amount is missing."))
    amount = None
    for locale in locales:
        try:
            amount = parse_decimal(typed, locale=locale, strict=True)
        except (NumberFormatError, InvalidOperation):
            continue
        break
    if amount is None or not amount.is_finite():
        example = typed_amount(16500, currency, locales[0] if locales else Locale.parse("en"))
        raise InvalidInput(_("“%(typed)s” is not an amount; type it like %(example)s.", typed=typed[:40],
                             example=example))
    if amount < 0:
        raise InvalidInput(_("The amount cannot be negative (“%(typed)s”).", typed=typed[:40]))
    decimals = currency_decimals(currency)
    minor = amount.scaleb(decimals)
    if minor != minor.to_integral_value():
        raise InvalidInput(ngettext("%(currency)s has %(num)d decimal place; “%(typed)s” has more.",
                                    "%(currency)s has %(num)d decimal places; “%(typed)s” has more.", decimals,
                                    currency=currency.upper(), typed=typed[:40]))
    return int(minor)
