"""No protected health information in the logs: a piece of the loop (referral, booking, images
received, AI reading, sign-off, consultation) runs with every log record captured, and none may
name the patient, their MRN, email or birth date. Logs travel to places records never should."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from hospital.clock import utcnow
from hospital.models import Patient
from hospital.seed import DemoSeed
from imaging_orders.archive.ingest import complete_quiet_studies, store_instance
from synthetic.dicom_factory import write_ct_series
from synthetic.phantoms import make_ct_phantom


def phi_of(demo: DemoSeed) -> list[str]:
    patient = demo.patient
    values = [patient.family_name, patient.given_name, patient.mrn, patient.email or "", patient.dicom_name]
    if patient.birth_date is not None:
        values += [patient.birth_date.isoformat(), patient.birth_date.strftime("%Y%m%d")]
    return [v for v in values if v]


def test_a_loop_through_the_api_and_dicom_logs_no_phi(
    app: Flask, demo: DemoSeed, as_role: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hospital")
    for stage in ("referrals", "imaging_orders", "ai_services", "followup", "billing"):
        caplog.set_level(logging.DEBUG, logger=stage)
    caplog.set_level(logging.INFO)
    clinician, staff, patient, radiologist = (as_role(r) for r in ("clinician", "imaging_staff", "patient", "radiologist"))

    referral = clinician.post("/api/referrals", json={
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest", "reason": "cough", "access_reason": "new patient", "priority": "routine",
    }).get_json()
    accession = staff.post(f"/api/referrals/{referral['id']}/accept").get_json()["accession_number"]
    slot = patient.get(f"/api/slots?organization_id={demo.imaging_centre.id}&modality=CT").get_json()[0]
    assert patient.post("/api/appointments", json={"referral_id": referral["id"], "slot_id": slot["id"]}).status_code == 201
    files = write_ct_series(make_ct_phantom(30_003, n_lesions=3), tmp_path / "study", patient_id=demo.patient.mrn,
                            patient_name=demo.patient.dicom_name, accession_number=accession)
    for path in files:
        store_instance(app, path.read_bytes(), transfer_syntax_uid=None, calling_ae="CT1")
    store_instance(app, files[0].read_bytes(), transfer_syntax_uid=None, calling_ae="CT1")  # a duplicate
    assert complete_quiet_studies(app, now=utcnow() + timedelta(hours=1))  # inline: the AI reads it now
    (report,) = radiologist.get(f"/api/reports?referral_id={referral['id']}").get_json()
    for finding in report["findings"]:
        decision = "accepted" if (finding["confidence"] or 0) >= 0.5 else "rejected"
        radiologist.post(f"/api/reports/{report['id']}/findings/{finding['id']}/review", json={"decision": decision})
    assert radiologist.post(f"/api/reports/{report['id']}/sign", json={}).status_code == 200
    assert clinician.get("/api/consultations").get_json()
    patient.get(f"/fhir/Patient/{demo.patient.id}")
    patient.get(f"/fhir/Patient/{demo.other_patient.id}")  # a denial is logged and audited

    assert caplog.records, "nothing was logged; the test would prove nothing"
    leaks = [
        f"{record.name}: {text[:200]}"
        for record in caplog.records
        for text in [record.getMessage() + (record.exc_text or "")]
        if any(value.lower() in text.lower() for value in phi_of(demo))
    ]
    assert not leaks, "\n".join(leaks)


def test_database_errors_show_the_sql_but_never_the_values(app: Flask, demo: DemoSeed, db_session: Any) -> None:
    """A database error must not carry the statement's values. (PostgreSQL's own DETAIL may name
    the conflicting key, which is why errors_http logs constraint and data errors by type only.)"""
    with pytest.raises(IntegrityError) as caught:
        db_session.execute(insert(Patient).values(mrn=demo.patient.mrn, family_name="Zyxwvutson", given_name="Q"))
    assert "INSERT INTO patient" in str(caught.value)
    assert "Zyxwvutson" not in str(caught.value) and "parameters hidden" in str(caught.value)
