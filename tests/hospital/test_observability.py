"""Metrics, request ids, logs without patient data, readiness and the alert rules (issue #21)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital import jobs, logging_setup
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.migrate import upgrade
from hospital.models import JobRecord, JobStatus, Patient
from tests.conftest import make_test_app
from tests.hospital.inprocess_loop import run_loop_in_process

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scrape-token-for-tests-0123456789"


@pytest.fixture()
def scrape_token(app: Flask) -> Iterator[str]:
    previous = app.config.get("METRICS_TOKEN")
    app.config["METRICS_TOKEN"] = TOKEN
    yield TOKEN
    app.config["METRICS_TOKEN"] = previous


def scrape(client: FlaskClient, token: str = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client's own exposition parser."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum over the series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


# --- /metrics ------------------------------------------------------------------------------------

def test_metrics_refuse_anonymous_and_non_admin_callers(client: FlaskClient, as_role: Any, scrape_token: str) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer not-the-token"}).status_code == 403
    assert as_role("clinician").get("/metrics").status_code == 403
    assert as_role("admin").get("/metrics").status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {scrape_token}"}).status_code == 200


def test_metrics_answer_an_allowed_address(app: Flask, client: FlaskClient) -> None:
    app.config["METRICS_ALLOW_IPS"] = "10.0.0.0/8, 192.0.2.7"
    try:
        assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
        assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.8"}).status_code == 401
    finally:
        app.config["METRICS_ALLOW_IPS"] = ""


def test_http_latency_and_status_are_labelled_by_url_rule_not_path(client: FlaskClient, as_role: Any, scrape_token: str) -> None:
    before = scrape(client)
    clinician = as_role("clinician")
    for missing in (999_001, 999_002):
        assert clinician.get(f"/fhir/Patient/{missing}").status_code in (403, 404)
    after = scrape(client)
    routes = {dict(labels).get("route") for (name, labels) in after if name == "hospital_http_requests_total"}
    assert not any(route and "999001" in route for route in routes), "raw paths must not become series"
    rule = "/fhir/<type_name>/<resource_id>"
    assert rule in routes, sorted(r for r in routes if r)
    assert total(after, "hospital_http_requests_total", route=rule) - total(before, "hospital_http_requests_total", route=rule) == 2
    assert total(after, "hospital_http_request_duration_seconds_count", route=rule) >= 2


def test_job_queue_figures_come_from_the_job_record_table(client: FlaskClient, db_session: Session, scrape_token: str) -> None:
    now = utcnow()
    db_session.add_all([
        JobRecord(handler="x.y", queue="ai", payload={}, status=JobStatus.QUEUED, created_at=now - timedelta(seconds=600)),
        JobRecord(handler="x.y", queue="ai", payload={}, status=JobStatus.QUEUED, created_at=now - timedelta(seconds=5)),
        JobRecord(handler="x.y", queue="billing", payload={}, status=JobStatus.FAILED, created_at=now),
    ])
    db_session.flush()
    samples = scrape(client)
    assert value(samples, "hospital_job_queue_depth", queue="ai") == 2
    assert 590 <= value(samples, "hospital_job_oldest_queued_age_seconds", queue="ai") < 700
    assert value(samples, "hospital_job_failed", queue="billing") == 1
    assert value(samples, "hospital_job_queue_depth", queue="notify") == 0
    assert value(samples, "hospital_metrics_database_up") == 1
    assert ("hospital_studies_awaiting_reconciliation", ()) in samples


# --- request ids ---------------------------------------------------------------------------------

def test_request_id_is_taken_from_the_header_or_generated(client: FlaskClient, db_session: Session) -> None:
    forwarded = client.get("/healthz", headers={"X-Request-ID": "edge-4f2a9c1d"})
    assert forwarded.headers["X-Request-ID"] == "edge-4f2a9c1d"
    generated = client.get("/healthz")
    assert len(generated.headers["X-Request-ID"]) == 32
    smuggled = client.get("/healthz", headers={"X-Request-ID": "bad id; with=spaces"})
    assert smuggled.headers["X-Request-ID"] != "bad id; with=spaces"


def test_a_job_caused_by_a_request_runs_under_its_request_id(
    app: Flask, db_session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    with app.test_request_context("/api/x", headers={"X-Request-ID": "req-0123456789"}):
        app.preprocess_request()
        record = jobs.enqueue(db_session, "tests.hospital.test_observability.log_a_line", queue="default")
        db_session.flush()
        assert record.request_id == "req-0123456789"
    record_id = record.id
    with caplog.at_level(logging.INFO):
        jobs.run_job(record_id)
    lines = [r for r in caplog.records if r.getMessage() == "job line"]
    assert [getattr(r, "request_id", None) for r in lines] == ["req-0123456789"]
    assert logging_setup.current_request_id() is None


def log_a_line(session: Session) -> None:
    logging.getLogger(__name__).info("job line")


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("hospital.x", logging.INFO, __file__, 1, "stored %s", ("1.2.3",), None)
    with logging_setup.request_id_scope("dicom-abc"):
        logging_setup.RequestIdFilter().filter(record)
    line = json.loads(logging_setup.JsonFormatter().format(record))
    assert line["message"] == "stored 1.2.3" and line["request_id"] == "dicom-abc" and line["level"] == "INFO"


# --- readiness -------------------------------------------------------------------------------------

def test_liveness_stays_cheap_and_readiness_checks_what_requests_need(app: Flask, client: FlaskClient, tmp_path: Path) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"] == {"database": "ok", "redis": "skipped", "dicom_storage": "ok", "model_storage": "ok"}
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the volume should be")
    previous = app.config["DICOM_STORAGE_DIR"], app.config["REDIS_URL"]
    app.config["DICOM_STORAGE_DIR"] = blocker
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    app.extensions.pop("hospital.redis", None)
    try:
        failed = client.get("/readyz")
        assert failed.status_code == 503
        checks = failed.get_json()["checks"]
        assert checks["database"] == "ok"
        assert checks["dicom_storage"].startswith("failed") and checks["redis"].startswith("failed")
        assert client.get("/healthz").status_code == 200
    finally:
        app.config["DICOM_STORAGE_DIR"], app.config["REDIS_URL"] = previous
        app.extensions.pop("hospital.redis", None)


# --- alert rules -----------------------------------------------------------------------------------

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


def test_alert_rules_parse_and_name_only_metrics_we_export() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in alerts}
    assert {"HospitalNotReady", "HospitalHttpErrors", "HospitalJobsBacklog", "HospitalJobsFailing",
            "HospitalDicomStoreFailures", "HospitalReconciliationWaiting", "HospitalMetricsDatabaseDown",
            "HospitalStorageFillingUp", "HospitalStorageAlmostFull"} <= names
    exported = ("hospital_http_request", "hospital_job_", "hospital_dicom_", "hospital_ai_", "hospital_storage_volume_",
                "hospital_studies_awaiting_reconciliation", "hospital_metrics_database_up", "probe_success", "up")
    for rule in alerts:
        assert rule["expr"].strip() and rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"].startswith("docs/operations.md#")
        assert any(metric in rule["expr"] for metric in exported), rule["alert"]
    # Every runbook link names a section of docs/operations.md (GitHub's heading anchors).
    headings = {line.lstrip("#").strip().lower().replace(" ", "-")
                for line in (ROOT / "docs" / "operations.md").read_text().splitlines() if line.startswith("#")}
    missing = {rule["annotations"]["runbook"].split("#", 1)[1] for rule in alerts} - headings
    assert not missing, missing


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed here")
def test_alert_rules_pass_promtool() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the loop: figures move, and no patient data reaches a log line ----------------------------

def test_loop_moves_the_figures_and_logs_no_patient_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'hospital.db'}"
    upgrade(url)
    app = make_test_app(url, tmp_path, REDIS_URL=None, DICOM_STORAGE_DIR=tmp_path / "dicom", METRICS_TOKEN=TOKEN,
                       STUDY_QUIET_SECONDS=3)
    client = app.test_client()
    with app.app_context():
        before = scrape(client)
    with caplog.at_level(logging.DEBUG):
        summary, mrn, dicom_name = run_loop_in_process(app, tmp_path / "work")
    assert summary.report_status == "final"
    with app.app_context():
        after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("hospital_http_requests_total") > 20
    assert moved("hospital_http_request_duration_seconds_count", route="/api/referrals") >= 1
    assert moved("hospital_dicom_associations_total", outcome="accepted") >= 1
    assert moved("hospital_dicom_cstore_total", status="0x0000", category="success") == summary.instances_sent
    assert moved("hospital_ai_inference_seconds_count") == 1
    assert moved("hospital_ai_findings_per_study_count") == 1
    assert moved("hospital_ai_findings_per_study_sum") >= 1  # the phantom holds lesions the model finds
    assert value(after, "hospital_job_failed", queue="ai") == 0

    # Every log line of the loop, at DEBUG, every logger: none names the patient.
    with app.app_context(), get_db(app).session() as session:
        patient = session.scalars(select(Patient).where(Patient.mrn == mrn)).one()
        secrets = [mrn, patient.family_name, patient.given_name, dicom_name, patient.email or ""]
        if patient.birth_date is not None:
            secrets += [patient.birth_date.isoformat(), patient.birth_date.strftime("%Y%m%d")]
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 50
    for secret in filter(None, secrets):
        leaking = [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if secret in r.getMessage()]
        assert secret not in text, leaking[:5]
    # The association's lines carry its id; every job record names the request (or the background
    # run) that caused it.
    association_lines = [r for r in caplog.records if str(getattr(r, "request_id", "")).startswith("dicom-")]
    assert any("accepted" in r.getMessage() for r in association_lines)
    assert any(r.name.startswith("imaging_orders.archive") for r in association_lines)
    with app.app_context(), get_db(app).session() as session:
        ids = set(session.scalars(select(JobRecord.request_id)))
    assert any(i and len(i) == 32 for i in ids), ids  # the referral's, accepted over HTTP
    assert None not in ids, "every job record names what caused it"


# --- storage volumes (retention and storage) -------------------------------------------------------

def test_storage_volume_free_and_total_bytes_per_volume(app: Flask, client: FlaskClient, scrape_token: str) -> None:
    volumes = {"dicom": Path(app.config["DICOM_STORAGE_DIR"]), "models": Path(app.config["AI_MODELS_DIR"])}
    for directory in volumes.values():
        directory.mkdir(parents=True, exist_ok=True)
    samples = scrape(client)
    for volume, directory in volumes.items():
        usage = shutil.disk_usage(directory)
        size = value(samples, "hospital_storage_volume_size_bytes", volume=volume)
        free = value(samples, "hospital_storage_volume_free_bytes", volume=volume)
        assert size == usage.total
        assert abs(free - usage.free) < 0.05 * usage.total  # other writers on the machine move it a little
        assert value(samples, "hospital_storage_volume_up", volume=volume) == 1


def test_storage_volume_that_cannot_be_read_says_so(app: Flask, client: FlaskClient, scrape_token: str,
                                                      tmp_path: Path) -> None:
    previous = app.config["AI_MODELS_DIR"]
    app.config["AI_MODELS_DIR"] = tmp_path / "not-mounted"
    try:
        samples = scrape(client)
    finally:
        app.config["AI_MODELS_DIR"] = previous
    assert value(samples, "hospital_storage_volume_up", volume="models") == 0
    assert ("hospital_storage_volume_free_bytes", (("volume", "models"),)) not in samples
    assert value(samples, "hospital_storage_volume_up", volume="dicom") == 1
