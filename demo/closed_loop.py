"""One whole closed loop, driven the way real users and devices drive it: every step goes through
the HTTP API with each role's own bearer token, and the images travel over a real DICOM
association to the `hospital dicom` server.

Used by `hospital demo` and by the end-to-end tests; the callers choose how images are sent and
how background work is drained (inline jobs need nothing; RQ needs a worker).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from hospital.db import get_db
from hospital.seed import DEMO_PASSWORD, seed_demo
from synthetic.dicom_factory import write_ct_series
from synthetic.phantoms import make_ct_phantom

logger = logging.getLogger(__name__)

DEMO_MEDICATION_CODE = "J01CA04"
SendStudy = Callable[[list[Path]], None]
DrainJobs = Callable[[], None]
ReportStep = Callable[[str], None]


class ClosedLoopError(RuntimeError):
    """A step of the loop did not reach the state it should have; the message says which."""


class DicomPortInUse(ClosedLoopError):
    """Something already listens on the port our DICOM server was to use: whatever answers there
    is not ours, so the study must not be sent to it."""


@dataclass
class LoopSummary:
    referral_id: int = 0
    accession_number: str = ""
    appointment_id: int = 0
    study_id: int = 0
    instances_sent: int = 0
    report_id: int = 0
    report_status: str = ""
    findings: list[dict[str, Any]] = field(default_factory=list)
    consultation_id: int = 0
    medication_request_id: int = 0
    invoice_id: int = 0
    invoice_total_minor: int = 0
    invoice_status: str = ""
    currency: str = ""
    charges: list[dict[str, Any]] = field(default_factory=list)

    def render(self) -> str:
        whole, cents = divmod(self.invoice_total_minor, 100)
        lines = [
            "Closed loop complete:",
            f"  ServiceRequest/{self.referral_id} accession {self.accession_number} -> Appointment/{self.appointment_id}",
            f"  ImagingStudy/{self.study_id}: {self.instances_sent} CT instances received over DICOM C-STORE",
            f"  DiagnosticReport/{self.report_id} ({self.report_status}) with {len(self.findings)} finding(s):",
        ]
        for f in self.findings:
            confidence = "added by radiologist" if f["confidence"] is None else f"confidence {f['confidence']:.2f}"
            lines.append(
                f"    Observation/{f['id']}: {f['diameter_mm']:.0f} mm on slice {f['slice_index'] + 1}, box {f['box']}, "
                f"{confidence}, {f['review_status']}"
            )
        lines.append(f"  Encounter/{self.consultation_id} finished; MedicationRequest/{self.medication_request_id} dispensed")
        for c in self.charges:
            lines.append(f"  ChargeItem/{c['id']}: {c['display']} x{c['quantity']} = {c['total_minor']} {c['currency']} minor units")
        lines.append(f"  Invoice/{self.invoice_id}: total {whole}.{cents:02d} {self.currency} ({self.invoice_total_minor} minor units), "
                     f"{self.invoice_status}")
        return "\n".join(lines)


class ApiSession:
    """One user's bearer-token session against the app's HTTP API."""

    def __init__(self, client: FlaskClient, username: str, password: str = DEMO_PASSWORD) -> None:
        self.client = client
        self.username = username
        response = client.post("/api/auth/token", json={"username": username, "password": password})
        if response.status_code != 201:
            raise ClosedLoopError(f"{username} could not sign in: {response.get_data(as_text=True)}")
        self.headers = {"Authorization": f"Bearer {response.get_json()['access_token']}"}

    def call(self, method: str, url: str, expect: int = 200, **kwargs: Any) -> Any:
        response = self.client.open(url, method=method, headers=self.headers, **kwargs)
        if response.status_code != expect:
            raise ClosedLoopError(
                f"{self.username} {method} {url}: expected {expect}, got {response.status_code} "
                f"{response.get_data(as_text=True)[:500]}"
            )
        return response.get_json()


def _wait_for(description: str, probe: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClosedLoopError(f"timed out after {timeout:.0f} s waiting for {description}")
        time.sleep(interval)


def run_closed_loop(
    client: FlaskClient,
    *,
    send_study: SendStudy,
    drain_jobs: DrainJobs,
    work_dir: Path,
    imaging_centre_id: int,
    patient_id: int,
    pharmacy_id: int,
    patient_mrn: str,
    patient_dicom_name: str,
    phantom_seed: int = 30_003,  # not a training phantom; it holds a 21 mm and a 16 mm lesion
    timeout: float = 180.0,
    report_step: ReportStep = logger.info,
) -> LoopSummary:
    """Referral -> acceptance -> booking -> worklist -> C-STORE -> AI -> review and sign ->
    consultation, follow-up and prescription -> dispense -> charges -> invoice -> payment.

    ``report_step`` hears one line as each step is done (`hospital demo` prints them)."""
    clinician = ApiSession(client, "clinician")
    staff = ApiSession(client, "imaging_staff")
    patient = ApiSession(client, "patient")
    radiologist = ApiSession(client, "radiologist")
    pharmacist = ApiSession(client, "pharmacist")
    admin = ApiSession(client, "admin")
    summary = LoopSummary()

    referral = clinician.call("POST", "/api/referrals", 201, json={
        "patient_id": patient_id, "performer_organization_id": imaging_centre_id, "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest without contrast",
        "reason": "Persistent cough for 8 weeks; ex-smoker", "priority": "routine",
        "access_reason": "new patient at the practice",
    })
    summary.referral_id = referral["id"]
    accepted = staff.call("POST", f"/api/referrals/{referral['id']}/accept")
    summary.accession_number = accepted["accession_number"]
    report_step(f"referral ServiceRequest/{summary.referral_id} sent by the clinician, accepted by the imaging centre "
                f"as accession {summary.accession_number}")

    slots = patient.call("GET", f"/api/slots?organization_id={imaging_centre_id}&modality=CT")
    if not slots:
        raise ClosedLoopError("no free CT slots are offered")
    appointment = patient.call("POST", "/api/appointments", 201, json={"referral_id": referral["id"], "slot_id": slots[0]["id"]})
    summary.appointment_id = appointment["id"]
    day = appointment["start"][:10]
    worklist = staff.call("GET", f"/api/worklist?date={day}")
    if not any(e["accession_number"] == summary.accession_number for e in worklist["entries"]):
        raise ClosedLoopError(f"accession {summary.accession_number} is not on the {day} worklist")
    report_step(f"Appointment/{summary.appointment_id} booked by the patient; on the {day} modality worklist")

    phantom = make_ct_phantom(phantom_seed, n_lesions=3)
    files = write_ct_series(
        phantom, work_dir / "study", patient_id=patient_mrn, patient_name=patient_dicom_name,
        accession_number=summary.accession_number,
    )
    send_study(files)
    summary.instances_sent = len(files)
    report_step(f"{len(files)} CT images sent over DICOM C-STORE")

    def study_available() -> dict[str, Any] | None:
        studies = staff.call("GET", f"/api/studies?accession={summary.accession_number}")
        return next((s for s in studies if s["status"] == "available"), None)

    study = _wait_for("the study to be received and complete", study_available, timeout)
    summary.study_id = study["id"]
    report_step(f"ImagingStudy/{summary.study_id} received, matched to the referral and complete")
    drain_jobs()

    def preliminary_report() -> dict[str, Any] | None:
        reports = radiologist.call("GET", f"/api/reports?referral_id={referral['id']}")
        return reports[0] if reports else None

    report = _wait_for("the AI's preliminary report", preliminary_report, timeout)
    if report["status"] != "preliminary":
        raise ClosedLoopError(f"the AI report is {report['status']}, expected preliminary")
    report_step(f"AI read the study: preliminary DiagnosticReport/{report['id']} with {len(report['findings'])} finding(s)")
    for finding in report["findings"]:
        decision = "accepted" if (finding["confidence"] or 0) >= 0.5 else "rejected"
        radiologist.call("POST", f"/api/reports/{report['id']}/findings/{finding['id']}/review", json={"decision": decision})
    signed = radiologist.call("POST", f"/api/reports/{report['id']}/sign", json={})
    summary.report_id, summary.report_status, summary.findings = signed["id"], signed["status"], signed["findings"]
    report_step(f"radiologist reviewed every finding and signed the report ({summary.report_status})")
    drain_jobs()

    def consultation() -> dict[str, Any] | None:
        found = clinician.call("GET", "/api/consultations")
        return next((c for c in found if c["report_id"] == report["id"]), None)

    consult = _wait_for("the consultation to open", consultation, timeout)
    summary.consultation_id = consult["id"]
    report_step(f"consultation Encounter/{summary.consultation_id} opened for the clinician")
    medication = clinician.call("POST", f"/api/consultations/{consult['id']}/prescriptions", 201, json={
        "medication_code": DEMO_MEDICATION_CODE, "medication_display": "Amoxicillin 500 mg capsules, pack of 21",
        "dosage_text": "500 mg three times a day for 7 days", "quantity": 1, "refills": 0,
        "pharmacy_organization_id": pharmacy_id,
    })
    summary.medication_request_id = medication["id"]
    clinician.call("POST", f"/api/consultations/{consult['id']}/finish", json={"note": "Findings discussed; repeat CT planned."})
    pharmacist.call("POST", f"/api/medication-requests/{medication['id']}/dispense", 201, json={})
    report_step(f"MedicationRequest/{summary.medication_request_id} prescribed, consultation finished, "
                f"medication dispensed by the pharmacy")
    drain_jobs()

    expected_lines = {"scan", "ai-analysis", "consultation", "medication"}

    def all_charged() -> list[dict[str, Any]] | None:
        items = admin.call("GET", f"/api/charge-items?patient_id={patient_id}")
        mine = [i for i in items if i["invoice_id"] is None]
        return mine if {i["service_line"] for i in mine} >= expected_lines else None

    charged = _wait_for("a charge for every service", all_charged, timeout)
    report_step(f"{len(charged)} services charged")
    invoice = admin.call("POST", "/api/invoices", 201, json={"patient_id": patient_id})
    summary.invoice_id, summary.invoice_total_minor = invoice["id"], invoice["total_minor"]
    summary.currency, summary.charges = invoice["currency"], invoice["items"]
    payment = {"amount_minor": invoice["patient_due_minor"], "currency": invoice["currency"],
               "idempotency_key": f"demo-card-{invoice['id']}"}
    # Posted twice, as a flaky network would: the second is the same payment, not another.
    patient.call("POST", f"/api/invoices/{invoice['id']}/payments", 201, json=payment)
    paid = patient.call("POST", f"/api/invoices/{invoice['id']}/payments", 201, json=payment)
    summary.invoice_status = paid["status"]
    report_step(f"Invoice/{summary.invoice_id} issued and paid by the patient (the payment posted twice counts once)")
    return summary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refuse_taken_port(host: str, port: int) -> None:
    """Raise DicomPortInUse when something already listens on host:port."""
    with socket.socket() as sock:
        # SO_REUSEADDR: a port our last run left in TIME_WAIT is free; one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DicomPortInUse(f"cannot listen on DICOM port {port} on {host}: {exc.strerror}") from exc


def send_with_pynetdicom(host: str, port: int, called_ae: str, files: list[Path], calling_ae: str = "DEMO_CT") -> None:
    """Send files over one association, as a modality does; any non-success status is an error."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ClosedLoopError(f"no DICOM association with {called_ae}@{host}:{port}")
    try:
        for path in files:
            status = assoc.send_c_store(dcmread(path))
            if not status or status.Status != 0x0000:
                raise ClosedLoopError(f"C-STORE of {path.name} answered {status}")
    finally:
        assoc.release()


def wait_for_dicom(host: str, port: int, called_ae: str, timeout: float = 60.0,
                   server: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until C-ECHO succeeds; with ``server``, fail as soon as that process has exited."""
    ae = AE(ae_title="DEMO_ECHO")
    ae.add_requested_context(Verification)

    def echo_ok() -> bool:
        if server is not None and server.poll() is not None:
            raise ClosedLoopError(f"the DICOM server {called_ae} exited with status {server.returncode} before answering")
        try:  # a plain TCP probe first, so pynetdicom does not log every refused attempt
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            return False
        assoc = ae.associate(host, port, ae_title=called_ae)
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and status.Status == 0x0000

    _wait_for(f"the DICOM server {called_ae}@{host}:{port}", echo_ok, timeout, interval=0.5)


@contextmanager
def dicom_server_process(env: dict[str, str], port: int, ae_title: str,
                         quiet: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """Run `hospital dicom` in its own process, as in production, and stop it afterwards.

    Refuses a port something already listens on (DicomPortInUse): our server could not bind it,
    and the echo we wait for would come from a stranger, who would then be sent the study."""
    refuse_taken_port("127.0.0.1", port)
    process = subprocess.Popen(
        [sys.executable, "-m", "hospital.cli", "dicom", "--host", "127.0.0.1", "--port", str(port), "--ae-title", ae_title],
        env=env,
        # Its stdout only says "DICOM node stopped"; warnings and errors go to stderr, kept either way.
        stdout=subprocess.DEVNULL if quiet else None,
    )
    try:
        wait_for_dicom("127.0.0.1", port, ae_title, server=process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def run_demo(app: Flask, *, dicom_port: int, verbose: bool = False, report_step: ReportStep = logger.info) -> LoopSummary:
    """`hospital demo`: start the DICOM server, seed, run the loop with inline or RQ jobs.

    Quiet unless ``verbose``: the DICOM server logs warnings only, not a line per instance."""
    ae_title = app.config["DICOM_AE_TITLE"]
    env = {**os.environ, "DATABASE_URL": app.config["DATABASE_URL"], "STUDY_QUIET_SECONDS": "1",
           "DICOM_STORAGE_DIR": str(app.config["DICOM_STORAGE_DIR"]), "SECRET_KEY": app.config["SECRET_KEY"],
           "LOG_LEVEL": "INFO" if verbose else "WARNING"}
    for key in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"):
        if app.config.get(key):
            env[key] = app.config[key]
    with dicom_server_process(env, dicom_port, ae_title, quiet=not verbose), tempfile.TemporaryDirectory() as tmp, \
            app.app_context():
        report_step(f"DICOM node {ae_title} listening on 127.0.0.1:{dicom_port}")
        with get_db(app).transaction() as session:
            seed = seed_demo(session, app)
            ids = dict(centre=seed.imaging_centre.id, patient=seed.patient.id, pharmacy=seed.pharmacy.id,
                       mrn=seed.patient.mrn, name=seed.patient.dicom_name)
        report_step("demo organisations, users, schedules and AI model seeded")
        return run_closed_loop(
            app.test_client(),
            send_study=lambda files: send_with_pynetdicom("127.0.0.1", dicom_port, ae_title, files),
            drain_jobs=lambda: None,  # inline jobs are done when the call returns; RQ needs `hospital worker`
            work_dir=Path(tmp), imaging_centre_id=ids["centre"], patient_id=ids["patient"],
            pharmacy_id=ids["pharmacy"], patient_mrn=ids["mrn"], patient_dicom_name=ids["name"],
            report_step=report_step,
        )
