"""Money at the edge: an amount as a person types it, in their locale ("165,00" or "165.00"), to
integer minor units; and integer minor units back to major-unit text ("75.00") for exports.

Inside, money stays integer minor units with an ISO 4217 currency; how many decimals a currency
has (EUR 2, JPY 0, BHD 3) comes from Babel's CLDR data, not from an assumption of two.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from babel import Locale
from babel.numbers import NumberFormatError, format_decimal, get_currency_precision, parse_decimal

from hospital.errors import InvalidInput

logger = logging.getLogger(__name__)


def currency_decimals(currency: str) -> int:
    return int(get_currency_precision(currency.upper()))


def major_units(minor: int, currency: str) -> str:
    """7500 EUR -> '75.00'; 7500 JPY -> '7500'. Exact (Decimal), no grouping, '.' as the decimal
    mark: what a spreadsheet reads as a number."""
    decimals = currency_decimals(currency)
    return f"{Decimal(minor).scaleb(-decimals):.{decimals}f}"


def parse_amount(text: str, currency: str, locales: Iterable[Locale]) -> int:
    """`text`, typed in one of `locales` (best first), as a non-negative number of `currency`'s
    minor units. Each locale is tried strictly, in order: '165,00' reads as 165.00 for a German
    reader, and as 165.00 too for an English one whose browser also accepts German; '1,500' for an
    English reader is 1500. More decimals than the currency has, or a negative amount, is refused."""
    typed = text.strip()
    locales = list(locales)
    if not typed:
        raise InvalidInput("the amount is missing")
    amount = None
    for locale in locales:
        try:
            amount = parse_decimal(typed, locale=locale, strict=True)
        except (NumberFormatError, InvalidOperation):
            continue
        break
    if amount is None or not amount.is_finite():
        example = format_decimal(Decimal("165.00"), format="0.00", locale=locales[0]) if locales else "165.00"
        raise InvalidInput(f"{typed[:40]!r} is not an amount; type it like {example}")
    if amount < 0:
        raise InvalidInput(f"the amount cannot be negative ({typed[:40]!r})")
    decimals = currency_decimals(currency)
    minor = amount.scaleb(decimals)
    if minor != minor.to_integral_value():
        raise InvalidInput(f"{currency.upper()} has {decimals} decimal place{'' if decimals == 1 else 's'}; "
                           f"{typed[:40]!r} has more")
    return int(minor)
