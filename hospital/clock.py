"""The one source of 'now': timezone-aware UTC, so every stored time is comparable; and the local
calendar of a place (a centre's IANA zone) for the days and times people read and ask for.

Times are stored in UTC. A day someone asks for ("today's worklist", a DICOM date) is a day on the
wall clock of the place it happens, so it is turned into UTC bounds through that place's zone.
"""

from __future__ import annotations

import logging
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hospital.errors import InvalidInput

logger = logging.getLogger(__name__)

# Every zone's offset lies within UTC-12 and UTC+14: a window widened by this much on each side
# holds every instant that falls on the asked days somewhere on Earth.
MAX_UTC_OFFSET = timedelta(hours=14)


def utcnow() -> datetime:
    return datetime.now(UTC)


@lru_cache(maxsize=64)
def zone(name: str | None) -> ZoneInfo:
    """The IANA zone `name`; UTC when none is set or the name is unknown (a stored value outlived
    the zone database), so a page never fails on it."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        logger.warning("unknown time zone %r; using UTC", name)
        return ZoneInfo("UTC")


def local_date(instant: datetime, zone_name: str | None) -> date:
    return instant.astimezone(zone(zone_name)).date()


def utc_window_for_days(first: date | None, last: date | None) -> tuple[datetime | None, datetime | None]:
    """UTC bounds [start, end) wide enough to hold local days `first`..`last` in any zone: a coarse
    filter for a query spanning places in several zones, refined with `local_date` per row."""
    start = datetime.combine(first, time.min, tzinfo=UTC) - MAX_UTC_OFFSET if first else None
    end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC) + MAX_UTC_OFFSET if last else None
    return start, end


@cache
def _zone_names_by_lower_case() -> dict[str, str]:
    """Every IANA zone this system knows, keyed by its lower-case name (for forgiving input)."""
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def zone_names() -> list[str]:
    """Every IANA zone, sorted: 'Africa/...', 'America/...', ... so a picker reads grouped by region."""
    return sorted(_zone_names_by_lower_case().values())


class UnknownTimeZone(InvalidInput):
    """A typed time zone that is not an IANA zone name."""


def valid_zone_name(value: str) -> str:
    """The canonical IANA name for `value` ('europe/berlin' -> 'Europe/Berlin'); free text that
    names no zone is refused, so a stored zone always resolves."""
    name = _zone_names_by_lower_case().get(value.strip().lower())
    if name is None:
        raise UnknownTimeZone(
            f"{value.strip()[:64]!r} is not an IANA time zone; choose one from the list, e.g. Europe/Berlin or UTC"
        )
    return name
