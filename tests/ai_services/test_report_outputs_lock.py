"""One report's DICOM outputs are made one job at a time on the embedded SQLite database too
(ai_services.report_outputs._embedded_lock): the draft's job and the signature's job ran at once in
two processes of an embedded installation, and the one that finished last withdrew the other's SR."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from flask import Flask

from ai_services.report_outputs import _embedded_lock
from hospital.app import create_app


def embedded_app(tmp_path: Path) -> Flask:
    return create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'hospital.db'}", "REDIS_URL": None,
                       "SECRET_KEY": "test-secret", "TESTING": True, "INSTANCE_DIR": tmp_path})


def test_a_second_job_for_the_same_report_waits_for_the_first(tmp_path: Path) -> None:
    app = embedded_app(tmp_path)
    inside: list[tuple[str, float, float]] = []

    def job(name: str, report_id: int) -> None:
        with _embedded_lock(app, report_id):
            start = time.monotonic()
            time.sleep(1.0)
            inside.append((name, start, time.monotonic()))

    # Each job opens the lock file on its own, as another process would: flock excludes them alike.
    threads = [threading.Thread(target=job, args=(name, 7)) for name in ("draft", "signature")]
    other = threading.Thread(target=job, args=("other report", 8))
    for thread in (*threads, other):
        thread.start()
    for thread in (*threads, other):
        thread.join(10)
    same = sorted((start, end) for name, start, end in inside if name != "other report")
    assert len(same) == 2 and same[1][0] >= same[0][1], f"the two jobs for report 7 overlapped: {same}"
    # Another report's job is not held up.
    other_start = next(start for name, start, _ in inside if name == "other report")
    assert other_start < same[0][1]


def test_postgresql_needs_no_lock_file(app: Flask, tmp_path: Path) -> None:
    with _embedded_lock(app, 7):
        pass
    assert not (Path(app.config["INSTANCE_DIR"]) / "locks").exists()
