"""Matching a DICOM query key against our index (PS3.4 C.2.2.2): wildcards, date ranges and person
names in their component groups, shared by the Modality Worklist (ordering) and study-root
query/retrieve (the archive)."""

from __future__ import annotations

import logging
import re
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, true

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


# A PN value has up to three component groups: alphabetic, ideographic, phonetic (PS3.5 6.2.1).
PERSON_NAME_GROUPS = 3


def _name_groups(value: str) -> list[str]:
    """A PN value's component groups, each without trailing empty components ("DOE^JOHN^^^")."""
    groups = [group.rstrip("^ ") for group in value.split("=")][:PERSON_NAME_GROUPS]
    return groups + [""] * (PERSON_NAME_GROUPS - len(groups))


def person_name_clause(column: ColumnElement[Any], value: str) -> ColumnElement[bool]:
    """SQL for a PatientName matching key against a column holding whole PN values.

    A key of one group ("Wang^Xiaoming", "王*") matches a name any of whose groups matches it, so a
    modality console that types pinyin and a registration desk that types characters both find
    "Wang^Xiaoming=王^小明". A key with several groups ("Wang*=王*") matches group by group; an
    empty group in the key matches anything. Case-insensitive, with `*` and `?` wildcards.
    """
    key_groups = [group.rstrip("^ ") for group in value.split("=")][:PERSON_NAME_GROUPS]
    stored = [func.rtrim(func.split_part(column, "=", n), "^ ") for n in range(1, PERSON_NAME_GROUPS + 1)]
    if len(key_groups) == 1:
        pattern = wildcard_pattern(key_groups[0] or "*")
        return or_(*(group.ilike(pattern, escape="\\") for group in stored))
    conditions = [
        group.ilike(wildcard_pattern(key), escape="\\")
        for group, key in zip(stored, key_groups, strict=False)
        if key and key != "*"
    ]
    return and_(true(), *conditions)


def person_name_matches(value: str, stored: str) -> bool:
    """`person_name_clause` in Python, for names not held as a column (a patient's pinyin)."""
    key_groups = [group.rstrip("^ ") for group in value.split("=")][:PERSON_NAME_GROUPS]
    stored_groups = _name_groups(stored)
    if len(key_groups) == 1:
        pattern = _wildcard_regex(key_groups[0] or "*")
        return any(group and pattern.fullmatch(group) for group in stored_groups)
    return all(
        _wildcard_regex(key).fullmatch(group) is not None
        for group, key in zip(stored_groups, key_groups, strict=False)
        if key and key != "*"
    )


def _wildcard_regex(value: str) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in value)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)
