"""Periodic work (reminders, due follow-ups): stages register a handler and an interval; the
`hospital scheduler` process enqueues each as a durable job when it falls due.

Handlers are ordinary job handlers and must be idempotent, since a restart of the scheduler may
enqueue one again early.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import Flask

from hospital.db import get_db
from hospital.jobs import enqueue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeriodicJob:
    handler: str
    every_seconds: int
    queue: str = "default"


def init_app(app: Flask) -> None:
    app.extensions["hospital.periodic"] = []


def register_periodic(app: Flask, handler: str, every_seconds: int, queue: str = "default") -> None:
    if every_seconds < 1:
        raise ValueError(f"every_seconds must be positive, got {every_seconds}")
    app.extensions["hospital.periodic"].append(PeriodicJob(handler, every_seconds, queue))


def enqueue_periodic_jobs(app: Flask, due: list[PeriodicJob] | None = None) -> list[int]:
    """Enqueue the given periodic jobs (default: all of them) now; returns the job record ids."""
    jobs = app.extensions["hospital.periodic"] if due is None else due
    with app.app_context(), get_db(app).transaction() as session:
        records = [enqueue(session, job.handler, queue=job.queue) for job in jobs]
        ids = [record.id for record in records]
    return ids


def run_scheduler(app: Flask, *, tick_seconds: float = 5.0, max_ticks: int | None = None) -> None:
    """Loop forever (or `max_ticks` times), enqueueing each periodic job when its interval has passed."""
    last_run: dict[str, float] = {}
    ticks = 0
    while max_ticks is None or ticks < max_ticks:
        now = time.monotonic()
        due = [job for job in app.extensions["hospital.periodic"]
               if now - last_run.get(job.handler, -float("inf")) >= job.every_seconds]
        if due:
            enqueue_periodic_jobs(app, due)
            for job in due:
                last_run[job.handler] = now
            logger.info("scheduler enqueued %s", ", ".join(job.handler for job in due))
        ticks += 1
        time.sleep(tick_seconds)
