"""The one source of 'now': timezone-aware UTC, so every stored time is comparable."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
