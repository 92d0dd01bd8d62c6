"""Liveness and readiness, kept apart on purpose.

`/healthz` (liveness) answers from the process alone: a load balancer or Kubernetes restarts a
process that cannot answer it, so it must not fail because PostgreSQL is down (restarting every
web worker does not bring the database back). `/readyz` (readiness) checks what a request needs:
the database answers, Redis answers when it is configured, and the storage volumes (the DICOM
store, the model directory) accept a write; while any fails the instance is taken out of the
balancer (503, naming the failed check) and put back when it passes again. Neither needs a login
nor says anything about patients.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, jsonify
from sqlalchemy import text

from hospital.db import get_db
from hospital.jobs import redis_configured, redis_connection

logger = logging.getLogger(__name__)

bp = Blueprint("readiness", __name__)


def check_database(app: Flask) -> None:
    with get_db(app).engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_redis(app: Flask) -> None:
    conn = redis_connection(app)
    if conn is not None:
        conn.ping()


def check_writable(directory: Path) -> None:
    """Write, fsync and remove a probe file: a full, read-only or vanished volume fails here."""
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".readyz-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def readiness(app: Flask) -> dict[str, str]:
    """Each check's result: "ok", "skipped" or the failure's exception type."""
    checks = {
        "database": lambda: check_database(app),
        "redis": (lambda: check_redis(app)) if redis_configured(app) else None,
        "dicom_storage": lambda: check_writable(Path(app.config["DICOM_STORAGE_DIR"])),
        "model_storage": lambda: check_writable(Path(app.config["AI_MODELS_DIR"])),
    }
    results: dict[str, str] = {}
    for name, check in checks.items():
        if check is None:
            results[name] = "skipped"
            continue
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - a readiness probe reports failures, it does not raise
            logger.warning("readiness check %s failed: %s: %s", name, type(exc).__name__, exc)
            results[name] = f"failed: {type(exc).__name__}"
    return results


@bp.get("/readyz")
def ready() -> Response:
    results = readiness(current_app._get_current_object())  # type: ignore[attr-defined]
    ok = all(value in ("ok", "skipped") for value in results.values())
    response = jsonify({"status": "ready" if ok else "not ready", "checks": results})
    response.status_code = 200 if ok else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
