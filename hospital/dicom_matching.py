"""Matching a DICOM query key against our index (PS3.4 C.2.2.2): wildcards and date ranges, shared by
the Modality Worklist (ordering) and study-root query/retrieve (the archive)."""

from __future__ import annotations

import logging
from datetime import date, datetime

from hospital.dicom_status import UNABLE_TO_PROCESS, DicomFailure
from hospital.errors import InvalidInput

logger = logging.getLogger(__name__)


class InvalidMatchKey(InvalidInput, DicomFailure):
    """A matching key cannot be interpreted (e.g. a malformed date or date range)."""

    dicom_status = UNABLE_TO_PROCESS


def wildcard_pattern(value: str) -> str:
    """A DICOM wildcard value (`*`, `?`) as a SQL LIKE pattern, with LIKE's own metacharacters escaped."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def date_range(value: str) -> tuple[date | None, date | None]:
    """`YYYYMMDD`, `YYYYMMDD-YYYYMMDD`, `-YYYYMMDD` or `YYYYMMDD-` -> inclusive (first, last)."""
    if "-" not in value:
        day = parse_date(value)
        return day, day
    start_text, _, end_text = value.partition("-")
    if not start_text.strip() and not end_text.strip():
        raise InvalidMatchKey(f"date range {value!r} has neither start nor end")
    first = parse_date(start_text) if start_text.strip() else None
    last = parse_date(end_text) if end_text.strip() else None
    if first and last and first > last:
        raise InvalidMatchKey(f"date range {value!r} ends before it starts")
    return first, last


def parse_date(text: str) -> date:
    text = text.strip()
    # Some older modalities send ACR-NEMA style "YYYY.MM.DD".
    compact = text.replace(".", "")
    if len(compact) != 8 or not compact.isdigit():
        raise InvalidMatchKey(f"{text!r} is not a DICOM date (YYYYMMDD)")
    try:
        return datetime.strptime(compact, "%Y%m%d").date()
    except ValueError as exc:
        raise InvalidMatchKey(f"{text!r} is not a valid date") from exc
