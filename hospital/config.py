"""Configuration read from the environment, with defaults a newcomer can run as-is.

Unset `DATABASE_URL` means an embedded SQLite file under `instance/`; unset `REDIS_URL` (and
`REDIS_SENTINELS`) means jobs run inline in the process that created them. Production sets both.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE_DIR = PROJECT_ROOT / "instance"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def parse_host_ports(value: str, setting: str) -> list[tuple[str, int]]:
    """A setting of the form `host:port,host:port` as (host, port) pairs; blank entries are
    skipped, and a malformed one is a configuration error naming `setting`."""
    found = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{setting} entry {entry!r} is not host:port")
        found.append((host, int(port)))
    return found


def _env_bool(name: str, default: bool) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


# Setting -> its folder inside the instance folder, where it lives unless its variable is set.
INSTANCE_FOLDERS = {"DICOM_STORAGE_DIR": "dicom", "AI_MODELS_DIR": "models", "AUDIT_ARCHIVE_DIR": "audit-archive",
                    "RESEARCH_STORAGE_DIR": "research"}


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the app configuration: environment first, then explicit overrides (tests)."""
    instance_dir = Path(os.environ.get("HOSPITAL_INSTANCE_DIR") or DEFAULT_INSTANCE_DIR)
    config: dict[str, Any] = {
        "INSTANCE_DIR": instance_dir,
        "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{instance_dir / 'hospital.db'}",
        "REDIS_URL": os.environ.get("REDIS_URL") or None,
        # Redis behind Sentinel (hospital.jobs.redis_connection): "host:port,host:port" of the
        # sentinels and the name they monitor the master under. When set, every process asks the
        # sentinels where the master is and asks again after a failover; REDIS_URL, if also set,
        # gives only the database number and password (its host is not used).
        "REDIS_SENTINELS": os.environ.get("REDIS_SENTINELS") or "",
        "REDIS_SENTINEL_MASTER": os.environ.get("REDIS_SENTINEL_MASTER") or "hospital",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or None,
        "DICOM_AE_TITLE": os.environ.get("DICOM_AE_TITLE") or "HOSPITAL",
        "DICOM_HOST": os.environ.get("DICOM_HOST") or "127.0.0.1",
        "DICOM_PORT": _env_int("DICOM_PORT", 11112),
        # Node processes sharing DICOM_PORT (`hospital dicom --processes`): one per core to spare.
        "DICOM_PROCESSES": _env_int("DICOM_PROCESSES", 1),
        # Where C-MOVE may send studies ("AE=host:port,AE2=host:port") and which calling AE
        # titles may query and retrieve ("*" for any; a comma list to restrict).
        "DICOM_MOVE_DESTINATIONS": os.environ.get("DICOM_MOVE_DESTINATIONS") or "",
        "DICOM_QR_CALLING_AES": os.environ.get("DICOM_QR_CALLING_AES") or "*",
        # Who gets an Instance Availability Notification when a study completes ("AE=host:port,...";
        # imaging_orders.archive.availability).
        "DICOM_IAN_SUBSCRIBERS": os.environ.get("DICOM_IAN_SUBSCRIBERS") or "",
        # Calling AE titles that see every centre's studies over query/retrieve (a PACS gateway);
        # any other sees only its own centre's (imaging_orders.archive.query_retrieve).
        "DICOM_QR_TRUSTED_AES": os.environ.get("DICOM_QR_TRUSTED_AES") or "",
        "DICOM_QR_MAX_RESULTS": _env_int("DICOM_QR_MAX_RESULTS", 10_000),
        # Private or unknown SOP classes: refused (the node offers no presentation context for
        # them, STOW-RS answers 0122) unless this is on; one policy for DIMSE and DICOMweb.
        "DICOM_ACCEPT_UNKNOWN_SOP_CLASSES": _env_bool("DICOM_ACCEPT_UNKNOWN_SOP_CLASSES", False),
        "DICOM_STORAGE_DIR": Path(os.environ.get("DICOM_STORAGE_DIR") or instance_dir / "dicom"),
        "AI_WEIGHTS": Path(
            os.environ.get("AI_WEIGHTS") or PROJECT_ROOT / "ai_services" / "weights" / "lesion-detector-v2.pt"
        ),
        # A study is complete after this long with no new instance (as archives do).
        "STUDY_QUIET_SECONDS": float(os.environ.get("STUDY_QUIET_SECONDS") or "5"),
        "AI_RETRAIN_EVERY_SECONDS": _env_int("AI_RETRAIN_EVERY_SECONDS", 86_400),
        "AI_MODELS_DIR": Path(os.environ.get("AI_MODELS_DIR") or instance_dir / "models"),
        # A partner model run claimed longer ago than the sandbox's wall-clock limit plus this margin
        # lost its worker: it is queued again, at most this many claims in all (ai_services.package_runs),
        # looked for this often.
        "AI_PACKAGE_RUN_MARGIN_SECONDS": _env_int("AI_PACKAGE_RUN_MARGIN_SECONDS", 300),
        "AI_PACKAGE_RUN_MAX_ATTEMPTS": _env_int("AI_PACKAGE_RUN_MAX_ATTEMPTS", 3),
        "AI_PACKAGE_RECLAIM_EVERY_SECONDS": _env_int("AI_PACKAGE_RECLAIM_EVERY_SECONDS", 300),
        # How many cases of the platform's held-out set a package's checks score it on (3..64;
        # ai_services.held_out): more give narrower intervals and slower checks.
        "AI_PACKAGE_HELD_OUT_CASES": _env_int("AI_PACKAGE_HELD_OUT_CASES", 12),
        # A report with a partner model run still queued or running cannot be signed, until the run
        # has waited this long (then it is failed with the reason and signing goes on). Longer than
        # the reclaims above can take: 3 x (120 s + 300 s) by default.
        "AI_PACKAGE_SIGNING_WAIT_SECONDS": _env_int("AI_PACKAGE_SIGNING_WAIT_SECONDS", 1800),
        # Where retention archives audit rows before removing them (keep it with the backups).
        "AUDIT_ARCHIVE_DIR": Path(os.environ.get("AUDIT_ARCHIVE_DIR") or instance_dir / "audit-archive"),
        # The research database's de-identified files, and the secret their pseudonyms are seeded
        # from (research/storage.py; SECRET_KEY when unset).
        "RESEARCH_STORAGE_DIR": Path(os.environ.get("RESEARCH_STORAGE_DIR") or instance_dir / "research"),
        "RESEARCH_SECRET": os.environ.get("RESEARCH_SECRET") or None,
        "FOLLOWUP_CHECK_SECONDS": _env_int("FOLLOWUP_CHECK_SECONDS", 900),
        # How often booked appointments starting within 24 hours are looked for, to remind patients.
        "APPOINTMENT_REMINDER_CHECK_SECONDS": _env_int("APPOINTMENT_REMINDER_CHECK_SECONDS", 900),
        # The periodic retention run (hospital.retention; 0: only `hospital retention run`).
        "RETENTION_EVERY_SECONDS": _env_int("RETENTION_EVERY_SECONDS", 86_400),
        "LOGIN_ATTEMPTS_PER_MINUTE": _env_int("LOGIN_ATTEMPTS_PER_MINUTE", 20),
        # How many reverse proxies in front of the app set X-Forwarded-For/-Proto. 0: trust no such
        # header (direct exposure). Behind one proxy and 0, every client has the proxy's address,
        # so all share one login rate bucket; more than there are, and clients can forge theirs.
        "TRUSTED_PROXIES": _env_int("TRUSTED_PROXIES", 0),
        "TOKEN_TTL_SECONDS": _env_int("TOKEN_TTL_SECONDS", 8 * 3600),
        # A process keeps a bearer token it found live for this long, so a client's next requests
        # need no query to know who it is; a change made in another process (a revoked token, a
        # deactivated account) is seen this long after at the latest. 0: off (hospital/auth_cache.py).
        "AUTH_CACHE_SECONDS": _env_int("AUTH_CACHE_SECONDS", 5),
        "JOB_TIMEOUT_SECONDS": _env_int("JOB_TIMEOUT_SECONDS", 600),
        # Handlers that legitimately run longer than the default (dotted path -> seconds).
        "JOB_TIMEOUTS": {"ai_services.jobs.retrain_model": _env_int("AI_RETRAIN_TIMEOUT_SECONDS", 6 * 3600)},
        "MAX_CONTENT_LENGTH": _env_int("MAX_UPLOAD_BYTES", 512 * 1024 * 1024),
        # FHIR and JSON API bodies are parsed whole: their own, smaller limit (hospital/limits.py).
        "MAX_JSON_BYTES": _env_int("MAX_JSON_BYTES", 10 * 1024 * 1024),
        "FHIR_MAX_BUNDLE_ENTRIES": _env_int("FHIR_MAX_BUNDLE_ENTRIES", 1000),
        # Our own FHIR output is checked against fhir.resources for 1 resource of each type in this
        # many (a failure is logged and counted); 1: every one, and an invalid one is refused (the
        # suite's setting: TESTING makes it 1 unless a test sets it). See check_own_resource.
        "FHIR_OUTPUT_CHECK_EVERY": _env_int("FHIR_OUTPUT_CHECK_EVERY", 100),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        # Off for the embedded run on http://localhost; must be on behind HTTPS (deploy/gunicorn.conf.py
        # turns it on), or the cookie that signs a user in could travel over plain HTTP.
        "SESSION_COOKIE_SECURE": _env_bool("SESSION_COOKIE_SECURE", False),
        # A page session ends after this long without a request (a shared ward computer left
        # signed in), and in any case this long after signing in. Bearer tokens have their own TTL.
        "SESSION_IDLE_MINUTES": _env_int("SESSION_IDLE_MINUTES", 30),
        "SESSION_MAX_HOURS": _env_int("SESSION_MAX_HOURS", 12),
        # The root log level of each process (the demo asks its DICOM server for WARNING).
        "LOG_LEVEL": (os.environ.get("LOG_LEVEL") or "INFO").upper(),
        # "json" (one object per line, for a log shipper; deploy/ sets it) or "text".
        "LOG_FORMAT": (os.environ.get("LOG_FORMAT") or "text").lower(),
        # Who may scrape /metrics besides a signed-in administrator (hospital/metrics.py): a bearer
        # token, and/or client addresses or networks ("10.0.0.0/8,127.0.0.1").
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN") or None,
        "METRICS_ALLOW_IPS": os.environ.get("METRICS_ALLOW_IPS") or "",
        # A clinician's completed referral or finished consultation still opens the patient's record
        # for this many days (see hospital/access.py); a live one opens it until it ends.
        "CARE_RELATIONSHIP_DAYS": _env_int("CARE_RELATIONSHIP_DAYS", 30),
        # An emergency ("break the glass") grant opens a patient's record for this long, then ends
        # by itself (hospital/emergency.py); a longer need asks again, with a new reason and alert.
        "EMERGENCY_ACCESS_MINUTES": _env_int("EMERGENCY_ACCESS_MINUTES", 60),
        # HL7 v2 over MLLP (`hospital hl7`, integration/): where the listener listens, how it names
        # itself in MSH-3/MSH-4 of what it sends, the largest message it keeps, when an idle
        # connection is closed; where signed reports go as ORU^R01 ("host:port,host:port") and
        # the address the report links in them start with.
        "HL7_HOST": os.environ.get("HL7_HOST") or "127.0.0.1",
        "HL7_PORT": _env_int("HL7_PORT", 2575),
        "HL7_APPLICATION": os.environ.get("HL7_APPLICATION") or "HOSPITAL",
        "HL7_FACILITY": os.environ.get("HL7_FACILITY") or "HOSPITAL",
        "HL7_MAX_MESSAGE_BYTES": _env_int("HL7_MAX_MESSAGE_BYTES", 1024 * 1024),
        "HL7_IDLE_TIMEOUT_SECONDS": _env_int("HL7_IDLE_TIMEOUT_SECONDS", 60),
        "HL7_RESULT_DESTINATIONS": os.environ.get("HL7_RESULT_DESTINATIONS") or "",
        "HL7_SEND_TIMEOUT_SECONDS": _env_int("HL7_SEND_TIMEOUT_SECONDS", 10),
        # FHIR subscriptions (rest-hook, integration/subscriptions.py): how long one POST may take;
        # a failed notification is tried again after RETRY_SECONDS, doubling per attempt up to
        # RETRY_MAX_SECONDS, and never dropped; after ERROR_AFTER_FAILURES failures in a row the
        # subscription shows status "error" to its owner until a delivery succeeds. The sweep
        # that retries and sends heartbeats runs every CHECK_SECONDS.
        "SUBSCRIPTION_SEND_TIMEOUT_SECONDS": _env_int("SUBSCRIPTION_SEND_TIMEOUT_SECONDS", 10),
        "SUBSCRIPTION_RETRY_SECONDS": _env_int("SUBSCRIPTION_RETRY_SECONDS", 30),
        "SUBSCRIPTION_RETRY_MAX_SECONDS": _env_int("SUBSCRIPTION_RETRY_MAX_SECONDS", 3600),
        "SUBSCRIPTION_ERROR_AFTER_FAILURES": _env_int("SUBSCRIPTION_ERROR_AFTER_FAILURES", 5),
        "SUBSCRIPTION_CHECK_SECONDS": _env_int("SUBSCRIPTION_CHECK_SECONDS", 30),
        "PUBLIC_BASE_URL": (os.environ.get("PUBLIC_BASE_URL") or "http://127.0.0.1:5000").rstrip("/"),
        # Mail to patients and staff (hospital/notify.py): an SMTP server when SMTP_HOST is set, else
        # nothing leaves the process (the log says a message was due). STARTTLS upgrades a plain
        # connection (port 587); a pending mail is tried again every NOTIFICATION_MAIL_RETRY_SECONDS
        # until the server takes it (hospital/notifications.py).
        "SMTP_HOST": os.environ.get("SMTP_HOST") or None,
        "SMTP_PORT": _env_int("SMTP_PORT", 25),
        "SMTP_USERNAME": os.environ.get("SMTP_USERNAME") or None,
        "SMTP_PASSWORD": os.environ.get("SMTP_PASSWORD") or None,
        "SMTP_STARTTLS": _env_bool("SMTP_STARTTLS", False),
        "SMTP_FROM": os.environ.get("SMTP_FROM") or "Imaging Hospital <no-reply@hospital.invalid>",
        "SMTP_TIMEOUT_SECONDS": _env_int("SMTP_TIMEOUT_SECONDS", 30),
        "NOTIFICATION_MAIL_RETRY_SECONDS": _env_int("NOTIFICATION_MAIL_RETRY_SECONDS", 900),
        "TESTING": False,
    }
    if overrides:
        config.update(overrides)
        if overrides.get("TESTING") and "FHIR_OUTPUT_CHECK_EVERY" not in overrides:
            config["FHIR_OUTPUT_CHECK_EVERY"] = 1
        if "INSTANCE_DIR" in overrides:
            # The folders that live in the instance folder unless set on their own move with it (a
            # second installation, a test's temporary folder): nothing lands in the default one.
            moved = Path(overrides["INSTANCE_DIR"])
            for key, name in INSTANCE_FOLDERS.items():
                if key not in overrides and not os.environ.get(key):
                    config[key] = moved / name
    if not config["SECRET_KEY"]:
        # A random key per process is safe (sessions just do not survive restarts); say so once.
        logger.warning("SECRET_KEY is not set; using a random key for this process only")
        config["SECRET_KEY"] = secrets.token_hex(32)
    for key in ("INSTANCE_DIR", "DICOM_STORAGE_DIR", "AI_WEIGHTS"):
        config[key] = Path(config[key])
    for key in ("SESSION_IDLE_MINUTES", "SESSION_MAX_HOURS", "EMERGENCY_ACCESS_MINUTES", "FHIR_OUTPUT_CHECK_EVERY"):
        # Zero or less would sign every user out on their next click (or end every emergency grant
        # as it is made, or check no output), which is never what was meant.
        if int(config[key]) < 1:
            raise ValueError(f"{key} must be at least 1, got {config[key]!r}")
    return config
