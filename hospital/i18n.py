"""The reader's language: Simplified Chinese (zh_CN) or English, for every page, mail and PDF.

Which language a person reads is decided once per request, in this order: the language saved on
their account (chosen with the switch every page shows), then the `lang` cookie the switch sets for
someone not signed in, then the browser's Accept-Language, then English. Work done outside a request
for one person (a notification mail, a PDF made by a job) uses `for_user(user)` to speak that
person's language instead of the worker's.

Each stage owns its strings: `<stage>/translations/zh_Hans_CN/LC_MESSAGES/messages.po`, registered by
the stage's wiring with `add_catalog`; Flask-Babel merges them. The build compiles the `.po` files
(`make catalogs`: `hospital i18n compile`, see hospital/i18n_catalogs.py), and `tests/test_translations.py` fails on any string a
page, mail or PDF shows that has no translation, or a catalog entry no code uses any more.
"""

from __future__ import annotations

import functools
import gettext as gettext_module
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from babel import Locale, support
from babel.dates import format_date as babel_format_date
from babel.dates import format_datetime as babel_format_datetime
from babel.dates import format_time as babel_format_time
from babel.messages.plurals import get_plural
from babel.numbers import format_currency as babel_format_currency
from babel.numbers import format_decimal as babel_format_decimal
from flask import Flask, has_request_context, request
from flask_babel import Babel, Domain, force_locale, get_locale, get_translations
from flask_babel import gettext as _babel_gettext
from flask_babel import lazy_gettext as lazy_gettext
from flask_babel import ngettext as ngettext
from flask_babel import refresh as refresh

from hospital import clock
from hospital.auth import load_current_user
from hospital.errors import Unauthenticated
from hospital.models import User

logger = logging.getLogger(__name__)

# The languages people can choose, as gettext catalog names, with their own name for the switch.
SUPPORTED_LOCALES: dict[str, str] = {"zh_CN": "中文", "en": "English"}
DEFAULT_LOCALE = "en"
LOCALE_COOKIE = "lang"
_EXTENSION_KEY = "hospital.translation_directories"

class _StageDomain(Domain):  # type: ignore[misc]
    """Flask-Babel's domain, merging every stage's catalog, with the plural rule of the locale
    itself: Flask-Babel keeps the rule of the last catalog merged, and a stage with no catalog for
    the locale would leave English's rule (n != 1) on Chinese, whose catalogs have one form only."""

    def get_translations(self) -> support.Translations | support.NullTranslations:
        translations: support.Translations | support.NullTranslations = super().get_translations()
        locale = get_locale()
        if locale is not None and isinstance(translations, support.Translations):
            translations.plural = _plural_rule(str(locale))  # type: ignore[assignment]
        return translations


@functools.lru_cache(maxsize=16)
def _plural_rule(locale: str) -> Callable[[int], int]:
    _count, expression = get_plural(locale)
    return gettext_module.c2py(expression)


babel = Babel()
babel.__dict__["domain_instance"] = _StageDomain()  # what Babel.domain_instance would build, but ours


def gettext(string: str, **variables: object) -> str:
    """`string` in the reader's language, with `%(name)s` placeholders filled from `variables`.
    Flask-Babel's own, typed: a page action that returns its message returns a `str`."""
    return str(_babel_gettext(string, **variables))


def init_app(app: Flask) -> None:
    directories = app.extensions.setdefault(_EXTENSION_KEY, [])
    core = Path(__file__).parent / "translations"
    if core not in directories:
        directories.insert(0, core)
    app.config.setdefault("BABEL_DEFAULT_LOCALE", DEFAULT_LOCALE)
    babel.init_app(app, locale_selector=select_locale, timezone_selector=_select_timezone)
    _point_babel_at_catalogs(app)
    # Flask-Babel keeps the chosen locale on `g`, which outlives a request when an app context was
    # pushed around several (a CLI command, a test): choose afresh for every request.
    app.before_request(refresh)
    app.jinja_env.globals.update(
        supported_locales=SUPPORTED_LOCALES,
        current_locale=current_locale_name,
        html_lang=html_lang,
        format_money=format_money,
        format_number=format_number,
        role_label=role_label,
        status_word=status_word,
        local_datetime=local_datetime,
        js_messages=js_messages,
    )
    app.jinja_env.filters.update(local_date=local_date, local_clock=local_clock)


def add_catalog(app: Flask, directory: Path) -> None:
    """A stage's `translations/` folder joins the catalogs every page is translated from."""
    directories: list[Path] = app.extensions.setdefault(_EXTENSION_KEY, [])
    if directory not in directories:
        directories.append(directory)
    if "babel" in app.extensions:
        _point_babel_at_catalogs(app)


def catalog_directories(app: Flask) -> list[Path]:
    return list(app.extensions.get(_EXTENSION_KEY, []))


def _point_babel_at_catalogs(app: Flask) -> None:
    # Flask-Babel reads this list when it first translates in an app; stages are wired before that.
    # Only folders that exist (a stage may have no strings yet): nothing to load from the others.
    present = [str(path) for path in catalog_directories(app) if path.is_dir()]
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = ";".join(present)
    app.extensions["babel"].translation_directories = present


def normalise(tag: str | None) -> str | None:
    """The supported catalog a language tag asks for: "zh", "zh-CN", "zh-Hans", "zh_Hans_CN" ->
    "zh_CN"; "en-GB" -> "en"; anything else -> None. Traditional Chinese (zh-TW, zh-Hant) is not
    Simplified: it gets None, not a script its reader may not read."""
    if not tag:
        return None
    parts = tag.replace("_", "-").lower().split("-")
    if parts[0] == "en":
        return "en"
    if parts[0] == "zh" and not {"tw", "hk", "mo", "hant"} & set(parts[1:]):
        return "zh_CN"
    return None


def select_locale() -> str:
    if not has_request_context():
        return DEFAULT_LOCALE
    user = _request_user()
    if user is not None and normalise(user.locale):
        return normalise(user.locale) or DEFAULT_LOCALE
    cookie = normalise(request.cookies.get(LOCALE_COOKIE))
    if cookie:
        return cookie
    for tag, _quality in request.accept_languages:
        chosen = normalise(tag)
        if chosen:
            return chosen
    return DEFAULT_LOCALE


def _request_user() -> User | None:
    try:
        return load_current_user()
    except Unauthenticated:
        return None


def _select_timezone() -> str | None:
    from hospital.web import reader_timezone

    return reader_timezone(_request_user()) if has_request_context() else None


def current_locale_name() -> str:
    locale = get_locale()
    return "zh_CN" if locale is not None and locale.language == "zh" else DEFAULT_LOCALE


def html_lang() -> str:
    """The page's `lang` attribute (BCP 47): screen readers and fonts pick Chinese glyphs by it."""
    return "zh-CN" if current_locale_name() == "zh_CN" else "en"


def babel_locale() -> Locale:
    return get_locale() or Locale.parse(DEFAULT_LOCALE)


@contextmanager
def for_user(user: object | None) -> Iterator[str]:
    """Speak `user`'s language (their saved choice, else English) inside the block: for mail and PDFs
    made for someone other than the person whose request or job is running."""
    chosen = normalise(getattr(user, "locale", None)) or DEFAULT_LOCALE
    with force_locale(chosen):
        yield chosen


@contextmanager
def in_locale(name: str | None) -> Iterator[str]:
    chosen = normalise(name) or DEFAULT_LOCALE
    with force_locale(chosen):
        yield chosen


# Words for the reader -----------------------------------------------------------------------------

ROLE_LABELS = {
    "clinician": lazy_gettext("Referring clinician"),
    "patient": lazy_gettext("Patient"),
    "imaging_staff": lazy_gettext("Imaging centre staff"),
    "radiologist": lazy_gettext("Radiologist"),
    "pharmacist": lazy_gettext("Pharmacist"),
    "admin": lazy_gettext("Administrator"),
    "partner": lazy_gettext("AI partner"),
    "contributor": lazy_gettext("Research contributor"),
}


# Status codes as words a patient understands. A stage whose code means something of its own there
# passes its own words to the `status_badge` macro; these are the common meanings.
STATUS_WORDS = {
    "draft": lazy_gettext("Draft"),
    "active": lazy_gettext("In progress"),
    "on-hold": lazy_gettext("On hold"),
    "revoked": lazy_gettext("Withdrawn"),
    "completed": lazy_gettext("Done"),
    "entered-in-error": lazy_gettext("Entered in error"),
    "requested": lazy_gettext("Requested"),
    "accepted": lazy_gettext("Accepted"),
    "rejected": lazy_gettext("Declined"),
    "in-progress": lazy_gettext("In progress"),
    "cancelled": lazy_gettext("Cancelled"),
    "failed": lazy_gettext("Failed"),
    "proposed": lazy_gettext("Proposed"),
    "pending": lazy_gettext("Waiting for confirmation"),
    "booked": lazy_gettext("Booked"),
    "scheduled": lazy_gettext("Booked"),
    "arrived": lazy_gettext("Checked in"),
    "checked-in": lazy_gettext("Checked in"),
    "fulfilled": lazy_gettext("Scan done"),
    "noshow": lazy_gettext("Missed"),
    "registered": lazy_gettext("Awaiting the AI reading"),
    "partial": lazy_gettext("Being read"),
    "preliminary": lazy_gettext("Awaiting the radiologist"),
    "final": lazy_gettext("Signed"),
    "amended": lazy_gettext("Signed, amended"),
    "corrected": lazy_gettext("Signed, corrected"),
    "issued": lazy_gettext("To pay"),
    "balanced": lazy_gettext("Paid"),
    "paid": lazy_gettext("Paid"),
    "finished": lazy_gettext("Finished"),
    "stopped": lazy_gettext("Stopped"),
    "available": lazy_gettext("Available"),
    "unread": lazy_gettext("Unread"),
    "read": lazy_gettext("Read"),
}


def status_word(value: object) -> str:
    code = str(getattr(value, "value", value))
    word = STATUS_WORDS.get(code)
    return str(word) if word is not None else code.replace("_", " ").replace("-", " ")


def role_label(role: object) -> str:
    value = getattr(role, "value", role)
    label = ROLE_LABELS.get(str(value))
    return str(label) if label is not None else str(value).replace("_", " ")


def user_display_name(user: User) -> str:
    """What a person is called on their own pages: their name as their record holds it, not the
    username they sign in with."""
    if user.patient is not None:
        return user.patient.display_name
    if user.practitioner is not None:
        return user.practitioner.display_name
    return user.username


# Words the pages' scripts write (live worklist, AI progress, slice viewer): sent with every page as
# JSON (base.html, read by static/js/page_text.js), so the scripts speak the page's language. A
# plural is sent as its two English forms' translations (one, other): enough for English and Chinese.
def raw_ngettext(singular: str, plural: str, num: int) -> str:
    """The translated form for `num`, its placeholders left for the page's script to fill
    (Flask-Babel's ngettext fills them). Extracted like ngettext (hospital.i18n_catalogs.KEYWORDS)."""
    text: str = get_translations().ungettext(singular, plural, num)
    return text


def js_messages() -> dict[str, str | list[str]]:
    return {
        "complete": gettext("complete"),
        "arriving": gettext("arriving"),
        "images": [raw_ngettext("%(num)d image", "%(num)d images", n) for n in (1, 2)],
        "images_in_series": gettext("%(images)s in %(series)s series"),
        "from_the_ai": gettext("(+ %(num)s from the AI)"),
        "ai_waiting": gettext("AI analysis waiting for the complete study"),
        "ai_progress": gettext("AI analysis progress"),
        "booked_since": [raw_ngettext("%(num)d examination booked since this page was loaded.",
                                  "%(num)d examinations booked since this page was loaded.", n) for n in (1, 2)],
        "show_them": gettext("Show them"),
        "ai_status": gettext("AI: %(status)s"),
        "slices_done": gettext("%(done)s of %(total)s slices"),
        "outputs_failed": gettext("DICOM outputs failed: %(error)s"),
        "retry_analysis": gettext("Retry analysis"),
    }


# Formatting for the reader's locale ---------------------------------------------------------------


def local_date(value: date | datetime | None, zone_name: str | None = None, fmt: str = "medium") -> str:
    """A date as the reader's locale writes it ("4 Dec 2026", "2026年12月4日"), on the wall clock of
    `zone_name` when given a moment."""
    if value is None:
        return "—"
    if isinstance(value, datetime):
        value = value.astimezone(clock.zone(zone_name)).date() if zone_name or value.tzinfo else value.date()
    return babel_format_date(value, format=fmt, locale=babel_locale())


def local_clock(instant: datetime | None, zone_name: str | None) -> str:
    """The time of day of `instant` where it happens ("08:30"), in the reader's locale."""
    if instant is None:
        return "—"
    local = instant.astimezone(clock.zone(zone_name))
    return babel_format_time(local, format="short", locale=babel_locale())


def local_datetime(instant: datetime | None, zone_name: str | None, fmt: str = "medium") -> str:
    """Date and time of `instant` on the wall clock of `zone_name`, with the zone's abbreviation
    ("Fri 4 Dec 2026, 08:00 CET"; "2026年12月4日 周五 08:00 CST")."""
    if instant is None:
        return "—"
    zone = clock.zone(zone_name)
    local = instant.astimezone(zone)
    locale = babel_locale()
    if fmt == "medium":
        day = babel_format_date(local.date(), format="EEE d MMM y" if locale.language == "en" else "y年M月d日 EEE",
                                locale=locale)
        time_of_day = babel_format_time(local, format="HH:mm", locale=locale)
        return f"{day} {time_of_day} {local.tzname()}"
    return babel_format_datetime(local, format=fmt, tzinfo=zone, locale=locale)


def format_money(amount_minor: int | None, currency: str) -> str:
    """An amount held in minor units (cents, fen) as the reader's locale writes it: "€243.50",
    "¥1,280.00", "CN¥1,280.00" for a reader of another currency's country."""
    if amount_minor is None:
        return "—"
    from babel.numbers import get_currency_precision

    digits = get_currency_precision(currency)
    value = Decimal(amount_minor).scaleb(-digits)
    return babel_format_currency(value, currency, locale=babel_locale())


def format_number(value: int | float | Decimal | None, decimals: int | None = None) -> str:
    if value is None:
        return "—"
    if decimals is not None:
        pattern = "#,##0" + ("." + "0" * decimals if decimals else "")
        return babel_format_decimal(value, format=pattern, locale=babel_locale())
    return babel_format_decimal(value, locale=babel_locale())
