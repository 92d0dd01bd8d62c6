"""The load client the chaos benchmarks and tests drive the hospital with, and the reconciliation
that checks what they leave behind: what a referring clinician, imaging staff, a patient and a CT
scanner do all day (referral, acceptance, slot search, booking, worklist, a CT study by C-STORE),
recording only what the hospital acknowledged, so the reconciliation can demand exactly that."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, tuple_

from ai_services.models import DiagnosticReport
from billing.models import ChargeItem, ServiceLine
from demo.closed_loop import send_with_pynetdicom
from hospital.models import AuditEvent, JobRecord, JobStatus
from hospital.seed import DEMO_PASSWORD
from imaging_orders.archive.models import ImagingStudy
from synthetic.dicom_factory import write_ct_series
from synthetic.phantoms import make_ct_phantom

AE_TITLE = "HOSPITAL"


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    conflicts: int = 0
    accessions_sent: list[str] = field(default_factory=list)
    instances_sent: int = 0
    events: list[str] = field(default_factory=list)
    # (action, entity type, entity id) of every audit row a 2xx answer promises was written.
    audited: list[tuple[str, str, str]] = field(default_factory=list)

    def timed(self, name: str, seconds: float) -> None:
        with self.lock:
            self.requests += 1
            self.latencies.setdefault(name, []).append(seconds)

    def expect_audit(self, action: str, entity_type: str, entity_id: object) -> None:
        with self.lock:
            self.audited.append((action, entity_type, str(entity_id)))


class Api:
    def __init__(self, base: str, username: str, stats: Stats) -> None:
        self.base, self.stats = base, stats
        token = self.call("POST", "/api/auth/token", {"username": username, "password": DEMO_PASSWORD}, name="login")[1]
        self.headers = {"Authorization": f"Bearer {token['access_token']}"}

    def call(self, method: str, path: str, body: Any = None, name: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={**getattr(self, "headers", {}), "Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        except OSError as exc:
            self.stats.timed(name or path, time.perf_counter() - started)
            with self.stats.lock:
                self.stats.failures.append(f"{method} {path}: {type(exc).__name__}")
            return 0, None
        self.stats.timed(name or path, time.perf_counter() - started)
        if status >= 500:
            with self.stats.lock:
                self.stats.failures.append(f"{method} {path}: {status}")
        try:
            return status, (json.loads(payload) if payload else None)
        except ValueError:  # a balancer's own error page (502, 503) is not JSON
            return status, None


def client_loop(base: str, dicom_port: int, ids: dict[str, Any], deadline: float, stats: Stats, work: Path,
                n_slices: int, seed: int, dicom_host: str = "127.0.0.1", think_seconds: float = 0.0) -> None:
    """One clinic's day, round after round until `deadline`, pausing `think_seconds` after each
    round and a little after a failed one (as people and scanners do: nobody retries in a loop)."""
    rng = random.Random(seed)
    clinician, staff, patient = (Api(base, u, stats) for u in ("clinician", "imaging_staff", "patient"))
    n = 0
    failures_seen = 0
    while time.monotonic() < deadline:
        n += 1
        if n > 1:
            with stats.lock:
                failed_last_round, failures_seen = len(stats.failures) > failures_seen, len(stats.failures)
            time.sleep(think_seconds + (0.5 if failed_last_round else 0.0))
        status, referral = clinician.call("POST", "/api/referrals", {
            "patient_id": ids["patient"], "performer_organization_id": ids["centre"], "modality": "CT",
            "body_part": "CHEST", "procedure_description": "CT chest", "reason": "load test", "priority": "routine",
            "access_reason": "load test",
        }, name="POST /api/referrals")
        if status != 201:
            continue
        stats.expect_audit("C", "ServiceRequest", referral["id"])
        # A read: its audit row is written in the group commit just before the answer leaves.
        status, _ = clinician.call("GET", f"/fhir/ServiceRequest/{referral['id']}", name="GET /fhir/ServiceRequest")
        if status == 200:
            stats.expect_audit("R", "ServiceRequest", referral["id"])
        status, accepted = staff.call("POST", f"/api/referrals/{referral['id']}/accept", name="POST accept")
        if status != 200:
            continue
        stats.expect_audit("U", "ServiceRequest", referral["id"])
        status, slots = patient.call("GET", f"/api/slots?organization_id={ids['centre']}&modality=CT", name="GET /api/slots")
        if status == 200 and slots:
            status, booked = patient.call("POST", "/api/appointments", {"referral_id": referral["id"],
                                          "slot_id": rng.choice(slots[:20])["id"]}, name="POST /api/appointments")
            if status == 201:
                stats.expect_audit("C", "Appointment", booked["id"])
            if status == 409:
                with stats.lock:
                    stats.conflicts += 1
        staff.call("GET", "/api/worklist", name="GET /api/worklist")
        files = write_ct_series(make_ct_phantom(30_003 + n % 7, n_slices=n_slices, n_lesions=2), work / f"{seed}-{n}",
                                patient_id=ids["mrn"], patient_name=ids["name"], accession_number=accepted["accession_number"])
        started = time.perf_counter()
        try:
            send_with_pynetdicom(dicom_host, dicom_port, AE_TITLE, files, calling_ae="LOADCT")
            stats.timed("C-STORE study", time.perf_counter() - started)
            with stats.lock:
                stats.accessions_sent.append(accepted["accession_number"])
                stats.instances_sent += len(files)
        except Exception as exc:  # noqa: BLE001 - counted as a failure of the run
            with stats.lock:
                stats.failures.append(f"C-STORE: {exc}"[:200])
        for path in files:
            path.unlink(missing_ok=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


def reconcile(database_url: str, accessions: list[str], audited: list[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """What became of the acknowledged work: each acknowledged study stored, with exactly one report,
    one scan charge and one AI charge; no report or charge twice anywhere; each promised audit row
    there."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        studies = dict(conn.execute(select(ImagingStudy.accession_number, ImagingStudy.id)
                                    .where(ImagingStudy.accession_number.in_(accessions))).all())
        reports = dict(conn.execute(select(DiagnosticReport.study_id, func.count()).group_by(DiagnosticReport.study_id)).all())
        charges = dict(conn.execute(select(ChargeItem.event_key, func.count()).group_by(ChargeItem.event_key)).all())
        scan = conn.scalar(select(func.count()).select_from(ChargeItem).where(ChargeItem.service_line == ServiceLine.SCAN))
        ai = conn.scalar(select(func.count()).select_from(ChargeItem).where(ChargeItem.service_line == ServiceLine.AI_ANALYSIS))
        jobs = dict(conn.execute(select(JobRecord.status, func.count()).group_by(JobRecord.status)).all())
        open_jobs = [f"{r.id} {r.handler} {r.queue} {getattr(r.status, 'value', r.status)} attempts={r.attempts} "
                     f"created={r.created_at:%H:%M:%S} started={r.started_at and f'{r.started_at:%H:%M:%S}'}"
                     for r in conn.execute(select(JobRecord).where(JobRecord.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                                           .order_by(JobRecord.id).limit(10)).all()]
        wanted = sorted(set(audited or []))
        present: set[tuple[str, str, str]] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            present |= {tuple(row) for row in conn.execute(  # type: ignore[misc]
                select(AuditEvent.action, AuditEvent.entity_type, AuditEvent.entity_id).distinct()
                .where(tuple_(AuditEvent.action, AuditEvent.entity_type, AuditEvent.entity_id).in_(chunk))).all()}
    engine.dispose()
    study_ids = set(studies.values())
    with_one = {study for study in study_ids if reports.get(study) == 1 and charges.get(f"scan:ImagingStudy/{study}") == 1
                and charges.get(f"ai-analysis:ImagingStudy/{study}") == 1}
    return {
        "studies_sent": len(accessions), "studies_received": len(studies), "lost_studies": len(set(accessions) - set(studies)),
        "studies_with_report": len(set(reports) & study_ids), "studies_without_report": len(study_ids - set(reports)),
        "studies_with_one_report_and_charges": len(with_one),
        "studies_incomplete": sorted(study_ids - with_one)[:20],
        "duplicate_reports": sum(count - 1 for count in reports.values() if count > 1),
        "duplicate_charges": sum(count - 1 for count in charges.values() if count > 1),
        "scan_charges": scan, "ai_charges": ai,
        "audit_rows_expected": len(wanted), "audit_rows_missing": len(set(wanted) - present),
        "jobs": {str(getattr(status, "value", status)): count for status, count in jobs.items()},
        "open_jobs": open_jobs,  # the first few still queued or running, to tell why a drain did not end
    }


def record_section(path: Path, heading: str, lines: list[str]) -> None:
    """Replace the section `heading` ("## ...") of a results file with `lines`, or append it; the
    other sections stay as they are."""
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    start = existing.find(heading)
    if start == -1:
        updated = existing.rstrip("\n") + "\n\n" + "\n".join(lines)
    else:
        end = existing.find("\n## ", start + 1)
        updated = existing[:start] + "\n".join(lines) + ("" if end == -1 else existing[end:])
    path.write_text(updated)
