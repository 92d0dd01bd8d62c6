"""Fixed-window rate limits (login attempts): shared through Redis when configured, so every
web worker counts together; per process otherwise (the embedded default)."""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask, current_app

from hospital.errors import DomainError
from hospital.jobs import redis_connection

logger = logging.getLogger(__name__)


class RateLimited(DomainError):
    status = 429
    code = "throttled"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _LocalWindows:
    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}
        self.lock = threading.Lock()

    def hit(self, key: str, window: int, now: int) -> int:
        with self.lock:
            start = now - now % window
            seen_start, count = self.counts.get(key, (start, 0))
            count = count + 1 if seen_start == start else 1
            self.counts[key] = (start, count)
            if len(self.counts) > 100_000:  # bound memory under a flood of distinct keys
                self.counts = {k: v for k, v in self.counts.items() if v[0] == start}
            return count


def init_app(app: Flask) -> None:
    app.extensions["hospital.ratelimit"] = _LocalWindows()


def check_rate(key: str, limit: int, window_seconds: int) -> None:
    """Count one attempt for `key`; raise RateLimited past `limit` in the current window."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    now = int(time.time())
    conn = redis_connection(app)
    if conn is not None:
        bucket = f"hospital:rate:{key}:{now // window_seconds}"
        count = int(conn.incr(bucket))
        if count == 1:
            conn.expire(bucket, window_seconds)
    else:
        count = app.extensions["hospital.ratelimit"].hit(key, window_seconds, now)
    if count > limit:
        retry_after = window_seconds - now % window_seconds
        logger.warning("rate limit hit for %s", key.split(":")[0])
        raise RateLimited(f"too many attempts; try again in {retry_after} s", retry_after)
