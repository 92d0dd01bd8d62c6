"""Prometheus metrics: what an operator watches, in the exposition format, at `/metrics`.

Two kinds of figure:

- counted where they happen (HTTP latency and status per url rule, DICOM associations, C-STORE
  results by status, AI inference time and findings per study), with prometheus-client's
  objects defined here. Under gunicorn, and whenever several processes share a machine (the web
  workers, RQ work horses, the DICOM node), set `PROMETHEUS_MULTIPROC_DIR` to an empty directory
  before they start: each process writes its values there and `/metrics` adds them all up
  (prometheus-client's multiprocess mode; `deploy/run-production.sh` sets it up);
- read from the database at scrape time (job queue depth, age of the oldest queued job, failed
  jobs per queue from the durable `job_record` table; studies waiting in reconciliation, which
  the imaging stage registers with `register_gauge`; the AI's drift per model version and centre,
  registered with `register_gauge_families`), so they are right whichever process did
  the work, and survive restarts and an emptied Redis.

`/metrics` carries no patient data, but it does say how busy the hospital is: it answers only a
bearer token equal to `METRICS_TOKEN`, a client address in `METRICS_ALLOW_IPS` (addresses or
networks, comma-separated), or a signed-in administrator. Scrapes are not audited (no patient
data; one row per 15 s would drown the trail).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hospital.auth import load_current_user
from hospital.clock import utcnow
from hospital.db import get_db
from hospital.errors import Forbidden, Unauthenticated
from hospital.jobs import QUEUES
from hospital.models import JobRecord, JobStatus, Role

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

HTTP_REQUEST_SECONDS = Histogram(
    "hospital_http_request_duration_seconds", "Time to answer an HTTP request, by url rule.",
    ["method", "route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_REQUESTS = Counter(
    "hospital_http_requests", "HTTP requests answered, by url rule and status code.", ["method", "route", "status"],
)
FHIR_INVALID_OUTPUT = Counter(
    "hospital_fhir_invalid_output", "Our own FHIR resources that failed validation when checked (1 in "
    "FHIR_OUTPUT_CHECK_EVERY is), by resource type: a mapping writes invalid FHIR.", ["resource_type"],
)
DICOM_ASSOCIATIONS = Counter(
    "hospital_dicom_associations", "DICOM associations, by outcome (accepted, rejected, aborted, released).",
    ["outcome"],
)
DICOM_STORES = Counter(
    "hospital_dicom_cstore", "C-STORE requests answered, by DICOM status (0x0000 success, 0xB... warning, "
    "0xA.../0xC... failure) and its category.", ["status", "category"],
)
AI_INFERENCE_SECONDS = Histogram(
    "hospital_ai_inference_seconds", "Time the model took to analyse one study.",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
AI_FINDINGS_PER_STUDY = Histogram(
    "hospital_ai_findings_per_study", "Findings the model flagged per analysed study.",
    buckets=(0, 1, 2, 3, 5, 8, 13, 21, 34),
)

_UNMATCHED_ROUTE = "<unmatched>"
_GAUGES_KEY = "hospital.metrics.gauges"
_FAMILIES_KEY = "hospital.metrics.gauge_families"


@dataclass(frozen=True)
class ScrapeGauge:
    """A figure read from the database at each scrape."""

    name: str
    documentation: str
    read: Callable[[Session], float]


def register_gauge(app: Flask, name: str, documentation: str, read: Callable[[Session], float]) -> None:
    """A stage adds a figure it owns (e.g. studies waiting in reconciliation) without the core
    knowing its tables."""
    app.extensions[_GAUGES_KEY].append(ScrapeGauge(name, documentation, read))


def register_gauge_families(app: Flask, read: Callable[[Session], Iterable[Metric]]) -> None:
    """A stage adds labelled figures it owns (the AI's drift per model version and centre), read
    together at each scrape from one query of its tables."""
    app.extensions[_FAMILIES_KEY].append(read)


def status_category(status: int) -> str:
    """PS3.7 Annex C: 0x0000 success, 0x0001/0xBxxx warning, 0xFF00/0xFF01 pending, else failure."""
    if status == 0x0000:
        return "success"
    if status == 0x0001 or (status & 0xF000) == 0xB000:
        return "warning"
    if status in (0xFF00, 0xFF01):
        return "pending"
    if status == 0xFE00:
        return "cancel"
    return "failure"


def count_cstore(status: int) -> None:
    DICOM_STORES.labels(status=f"0x{status:04X}", category=status_category(status)).inc()


def observe_inference(seconds: float, findings: int) -> None:
    AI_INFERENCE_SECONDS.observe(seconds)
    AI_FINDINGS_PER_STUDY.observe(findings)


class JobRecordCollector(Collector):
    """Job queue figures from `job_record`, read at scrape time, plus the stages' own gauges."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("hospital_job_queue_depth", "Job records waiting to run (queued), per queue.",
                                  labels=["queue"])
        oldest = GaugeMetricFamily("hospital_job_oldest_queued_age_seconds",
                                   "Age of the oldest queued job record, per queue (0 when none waits).",
                                   labels=["queue"])
        running = GaugeMetricFamily("hospital_job_running", "Job records running now, per queue.", labels=["queue"])
        failed = GaugeMetricFamily("hospital_job_failed", "Job records that failed and were not re-run, per queue.",
                                   labels=["queue"])
        up = GaugeMetricFamily("hospital_metrics_database_up", "1 if the scrape could read the database.")
        extra: list[GaugeMetricFamily] = []
        try:
            now = utcnow()
            with get_db(self.app).session() as session:
                rows = session.execute(
                    select(JobRecord.queue, JobRecord.status, func.count(), func.min(JobRecord.created_at))
                    .where(JobRecord.status.in_((JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED)))
                    .group_by(JobRecord.queue, JobRecord.status)
                ).all()
                figures: dict[tuple[str, JobStatus], tuple[int, float]] = {}
                for queue, status, count, first in rows:
                    age = (now - first) / timedelta(seconds=1) if first is not None else 0.0
                    figures[(queue, status)] = (int(count), max(0.0, age))
                for gauge in self.app.extensions[_GAUGES_KEY]:
                    family = GaugeMetricFamily(gauge.name, gauge.documentation)
                    family.add_metric([], float(gauge.read(session)))
                    extra.append(family)
                for read in self.app.extensions[_FAMILIES_KEY]:
                    extra.extend(read(session))
        except Exception:  # noqa: BLE001 - a scrape must answer even when the database does not
            logger.exception("metrics could not read the database")
            up.add_metric([], 0)
            yield up
            return
        for queue in sorted(set(QUEUES) | {q for q, _ in figures}):
            depth.add_metric([queue], figures.get((queue, JobStatus.QUEUED), (0, 0.0))[0])
            oldest.add_metric([queue], figures.get((queue, JobStatus.QUEUED), (0, 0.0))[1])
            running.add_metric([queue], figures.get((queue, JobStatus.RUNNING), (0, 0.0))[0])
            failed.add_metric([queue], figures.get((queue, JobStatus.FAILED), (0, 0.0))[0])
        up.add_metric([], 1)
        yield from (depth, oldest, running, failed, up, *extra)


# The volumes an operator must not let fill: the DICOM store (a full one refuses C-STOREs with
# 0xA700) and the model files. Keyed by the label, valued by the config key holding the directory.
STORAGE_VOLUMES = {"dicom": "DICOM_STORAGE_DIR", "models": "AI_MODELS_DIR"}


class StorageVolumeCollector(Collector):
    """Size and free space of each storage volume, read with statvfs at scrape time (cheap)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("hospital_storage_volume_size_bytes", "Size of the filesystem holding the volume.",
                                 labels=["volume"])
        free = GaugeMetricFamily("hospital_storage_volume_free_bytes",
                                 "Bytes free for this process on the filesystem holding the volume.", labels=["volume"])
        up = GaugeMetricFamily("hospital_storage_volume_up", "1 if the volume's directory could be read.",
                               labels=["volume"])
        for volume, key in STORAGE_VOLUMES.items():
            try:
                usage = shutil.disk_usage(self.app.config[key])
            except (OSError, KeyError, TypeError):
                # Not mounted or not there: readiness fails too; the alert rule sees up == 0.
                up.add_metric([volume], 0)
                continue
            size.add_metric([volume], usage.total)
            free.add_metric([volume], usage.free)
            up.add_metric([volume], 1)
        yield from (size, free, up)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


def exposition(app: Flask) -> bytes:
    """The whole scrape: this process's (or every process's) counters and the database figures."""
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(JobRecordCollector(app))
    scraped.register(StorageVolumeCollector(app))
    if multiprocess_dir():
        counted = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(counted)  # type: ignore[no-untyped-call]
        return generate_latest(counted) + generate_latest(scraped)
    return generate_latest(REGISTRY) + generate_latest(scraped)


def _allowed_networks(raw: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip()]


def scrape_allowed() -> bool:
    """A scraper with the configured token, from an allowed address, or a signed-in administrator."""
    token = current_app.config.get("METRICS_TOKEN") or ""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return True
    allowed = _allowed_networks(current_app.config.get("METRICS_ALLOW_IPS") or "")
    if allowed and request.remote_addr:
        try:
            address = ipaddress.ip_address(request.remote_addr)
        except ValueError:
            address = None
        if address is not None and any(address in network for network in allowed):
            return True
    try:
        user = load_current_user()
    except Unauthenticated:
        # A scraper with a wrong token gets a plain 403, not the sign-in page's redirect.
        return False
    return user is not None and user.role is Role.ADMIN


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    if not scrape_allowed():
        if "Authorization" not in request.headers and g.get("current_user") is None:
            # No credentials at all: a plain 401 a scraper understands, not the sign-in redirect.
            return Response("metrics need METRICS_TOKEN, an address in METRICS_ALLOW_IPS, or an administrator\n",
                            status=401, mimetype="text/plain", headers={"WWW-Authenticate": "Bearer"})
        raise Forbidden("metrics need METRICS_TOKEN, an address in METRICS_ALLOW_IPS, or an administrator")
    return Response(exposition(current_app._get_current_object()), mimetype=CONTENT_TYPE_LATEST)  # type: ignore[attr-defined]


def _route_label() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else _UNMATCHED_ROUTE


def init_app(app: Flask) -> None:
    """Time every request by its url rule (never the raw path: ids would explode the series)."""
    app.extensions[_GAUGES_KEY] = []
    app.extensions[_FAMILIES_KEY] = []
    app.register_blueprint(bp)

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            route = _route_label()
            HTTP_REQUEST_SECONDS.labels(request.method, route).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response
