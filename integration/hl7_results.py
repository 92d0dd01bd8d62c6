"""Results out: a signed (or amended) report becomes an ORU^R01 for every configured destination.

`queue_results` (the `ReportSigned` handler) writes one `hl7_outbound` row per destination with
the message built once, and a job per row; `deliver_result` sends it over MLLP and reads the
ACK. A destination that does not answer AA/CA makes the job fail, and the job bus runs it again
(RQ's retries); on the bus's last run the row is given up as a dead letter (status `dead`, with the
last error, logged and audited), which an administrator resends with `hospital hl7 resend`.

The message: PID (MRN, name, birth date, sex); ORC/OBR with the placer order number the order
came with (our `SR<referral id>` for referrals typed here) and the AccessionNumber as the filler
number, OBR-25 F (final) or C (amended); OBX 1 the conclusion as text; one NM OBX per finding the
radiologist kept (its diameter in mm, OBX-4 the finding id, OBX-17 AI or radiologist); RP OBXs
linking the report page (with its image viewer), the report's PDF and the FHIR DiagnosticReport.
"""

from __future__ import annotations

import logging

import hl7
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ai_services.events import ReportAmended, ReportSigned
from ai_services.public import ReportSummary, report_pdf_path, report_summary
from hospital.audit import record_access
from hospital.clock import utcnow
from hospital.config import parse_host_ports
from hospital.db import get_db
from hospital.jobs import enqueue, runs_of_a_failing_job
from hospital.models import Patient
from integration.hl7_codec import escape, hl7_timestamp, new_control_id
from integration.hl7_patients import SOURCE
from integration.mllp import NotAcknowledged, send_message
from integration.models import Hl7Outbound, OutboundStatus, PlacerOrder
from referrals.public import referral_summary

logger = logging.getLogger(__name__)

SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


def parse_destinations(value: str) -> list[tuple[str, int]]:
    """`host:port,host:port` -> addresses; a malformed entry is a configuration error."""
    return parse_host_ports(value, "HL7_RESULT_DESTINATIONS")


def build_oru(session: Session, app: Flask, report: ReportSummary, control_id: str) -> str:
    patient = session.get(Patient, report.patient_id)
    assert patient is not None
    referral = referral_summary(session, report.referral_id) if report.referral_id is not None else None
    placer = session.scalar(select(PlacerOrder).where(PlacerOrder.referral_id == report.referral_id)) \
        if report.referral_id is not None else None
    placer_number = f"{escape(placer.placer_order_number)}^{escape(placer.sending_facility)}" if placer else (
        f"SR{report.referral_id}^{escape(app.config['HL7_FACILITY'])}" if report.referral_id else "")
    filler = escape(referral.accession_number or "") if referral else ""
    procedure = f"{escape(referral.modality)}^{escape(referral.procedure_description)}^L" if referral else "IMG^Imaging^L"
    signed = hl7_timestamp(report.signed_at) if report.signed_at else hl7_timestamp()
    result_status = "C" if report.status == "amended" else "F"
    base = app.config["PUBLIC_BASE_URL"]
    segments = [
        "|".join(["MSH", "^~\\&", escape(app.config["HL7_APPLICATION"]), escape(app.config["HL7_FACILITY"]), "", "",
                  hl7_timestamp(), "", "ORU^R01^ORU_R01", control_id, "P", "2.5"]),
        "|".join(["PID", "1", "", f"{escape(patient.mrn)}^^^{escape(app.config['HL7_FACILITY'])}^MR", "",
                  f"{escape(patient.family_name)}^{escape(patient.given_name)}", "",
                  patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "", SEX.get(patient.gender, "U")]),
        "|".join(["ORC", "RE", placer_number, filler, "", "CM"]),
        "|".join(["OBR", "1", placer_number, filler, procedure, "", "", signed] + [""] * 14
                 + [signed, "", escape(referral.modality) if referral else "", result_status]),
        "|".join(["OBX", "1", "TX", "IMP^Impression^L", "", escape(report.conclusion or "(no conclusion)"),
                  "", "", "", "", "", result_status]),
    ]
    for text in report.addenda:  # after the original, which they never replace
        segments.append("|".join(["OBX", str(len(segments) - 3), "TX", "ADDENDUM^Addendum^L", "", escape(text),
                                  "", "", "", "", "", result_status]))
    for finding in report.kept_findings:
        method = "AI^AI detection^L" if finding.from_ai else "RAD^Radiologist^L"
        segments.append("|".join(["OBX", str(len(segments) - 3), "NM", "LESION-DIAM^Lesion diameter^L",
                                  str(finding.finding_id), f"{finding.diameter_mm:.1f}", "mm^millimetre^UCUM",
                                  "", "", "", "", result_status, "", "", "", "", "", method]))
    # RP: pointer ^ application ^ type of data ^ subtype. The report page holds the image viewer.
    for code, url, kind in (("REPORT^Report page^L", f"{base}/reports/{report.report_id}", "TEXT^HTML"),
                            ("PDF^Report PDF^L", f"{base}{report_pdf_path(report.report_id)}", "APPLICATION^PDF"),
                            ("FHIR^DiagnosticReport^L", f"{base}/fhir/DiagnosticReport/{report.report_id}", "TEXT^HTML")):
        segments.append("|".join(["OBX", str(len(segments) - 3), "RP", code, "", f"{escape(url)}^^{kind}",
                                  "", "", "", "", "", result_status]))
    return "\r".join(segments) + "\r"


def queue_results(session: Session, app: Flask, event: ReportSigned | ReportAmended) -> list[int]:
    """One outbound ORU per destination for the report as signed (result status F) or as amended by
    an addendum (C, one message per addendum); a second delivery of the event finds its rows and
    queues nothing again."""
    destinations = parse_destinations(app.config["HL7_RESULT_DESTINATIONS"])
    occasion = f"amended:{event.addendum_id}" if isinstance(event, ReportAmended) else "signed"
    report = report_summary(session, event.report_id)
    if report is None or not report.signed or not destinations:
        return []
    queued = []
    for host, port in destinations:
        destination = f"{host}:{port}"
        exists = session.scalar(select(Hl7Outbound.id).where(
            Hl7Outbound.report_id == report.report_id, Hl7Outbound.occasion == occasion,
            Hl7Outbound.destination == destination))
        if exists is not None:
            continue
        control_id = new_control_id()
        row = Hl7Outbound(report_id=report.report_id, occasion=occasion, patient_id=report.patient_id,
                          destination=destination, control_id=control_id,
                          message=build_oru(session, app, report, control_id))
        session.add(row)
        session.flush()
        enqueue(session, "integration.jobs.deliver_result", queue="notify", outbound_id=row.id)
        record_access(session, None, "E", "DiagnosticReport", report.report_id, patient_id=report.patient_id,
                      source=SOURCE, description=f"ORU^R01 {control_id} queued for {destination}")
        queued.append(row.id)
    return queued


def _start_attempt(app: Flask, outbound_id: int) -> int | None:
    """Count one attempt, committed before it (a failure that rolls the job back still counts);
    None when the row is no longer waiting to be sent."""
    with get_db(app).transaction() as session:
        row = session.get(Hl7Outbound, outbound_id, with_for_update=True)
        if row is None or row.status is not OutboundStatus.PENDING:
            return None
        row.attempts += 1
        return row.attempts


def _check_ack(ack: bytes, control_id: str) -> None:
    try:
        parsed = hl7.parse(ack.decode("utf-8").replace("\n", "\r"))
        code, acked = str(parsed["MSA.F1"]), str(parsed["MSA.F2"])
    except Exception as exc:  # noqa: BLE001 - an unreadable answer is no acknowledgement
        raise NotAcknowledged(f"unreadable acknowledgement: {exc}") from exc
    if acked != control_id:
        raise NotAcknowledged(f"acknowledgement is for {acked!r}, not {control_id}")
    if code not in ("AA", "CA"):
        text = ""
        try:
            text = str(parsed["MSA.F3"])
        except (KeyError, IndexError):
            pass
        raise NotAcknowledged(f"answered {code}: {text}".strip())


def deliver_result(session: Session, app: Flask, outbound_id: int) -> None:
    attempt = _start_attempt(app, outbound_id)
    if attempt is None:
        return
    row = session.get(Hl7Outbound, outbound_id)
    assert row is not None
    host, _, port = row.destination.rpartition(":")
    try:
        ack = send_message(host, int(port), row.message.encode("utf-8"),
                           timeout=float(app.config["HL7_SEND_TIMEOUT_SECONDS"]))
        _check_ack(ack, row.control_id)
    except NotAcknowledged as exc:
        error = f"attempt {attempt}: {exc}"[:400]
        if attempt >= runs_of_a_failing_job(app):
            row.status, row.last_error = OutboundStatus.DEAD, error
            record_access(session, None, "E", "DiagnosticReport", row.report_id, patient_id=row.patient_id,
                          source=SOURCE, outcome=8,
                          description=f"ORU^R01 {row.control_id} to {row.destination} given up: {error}")
            logger.error("ORU^R01 %s to %s given up after %d attempts: %s", row.control_id, row.destination,
                         attempt, exc)
            return
        with get_db(app).transaction() as note_session:
            noted = note_session.get(Hl7Outbound, outbound_id, with_for_update=True)
            if noted is not None:
                noted.last_error = error
        logger.warning("ORU^R01 %s to %s not delivered (%s); the job bus retries", row.control_id,
                       row.destination, error)
        raise
    row.status, row.sent_at, row.last_error = OutboundStatus.SENT, utcnow(), None
    record_access(session, None, "E", "DiagnosticReport", row.report_id, patient_id=row.patient_id, source=SOURCE,
                  description=f"ORU^R01 {row.control_id} delivered to {row.destination}")


def resend_dead_letter(session: Session, outbound_id: int) -> Hl7Outbound:
    """An administrator sends a given-up result again (the same message and control id)."""
    row = session.get(Hl7Outbound, outbound_id, with_for_update=True)
    if row is None:
        raise LookupError(f"outbound HL7 message {outbound_id} does not exist")
    if row.status is not OutboundStatus.DEAD:
        raise ValueError(f"outbound HL7 message {outbound_id} is {row.status.value}, not a dead letter")
    row.status, row.attempts = OutboundStatus.PENDING, 0
    enqueue(session, "integration.jobs.deliver_result", queue="notify", outbound_id=row.id)
    record_access(session, None, "E", "DiagnosticReport", row.report_id, patient_id=row.patient_id, source=SOURCE,
                  description=f"ORU^R01 {row.control_id} to {row.destination} resent by an administrator")
    return row
