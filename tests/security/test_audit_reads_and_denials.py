"""What the audit trail records (issue 13, findings 7 and 8): a denial names the patient whose
record was targeted, and opening a report is one read, not one per slice or key image scrolled."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.audit import OUTCOME_DENIED, OUTCOME_SUCCESS
from hospital.clock import utcnow
from hospital.models import AuditEvent
from hospital.seed import DemoSeed
from tests.ai_services.test_report_pages import store_slices
from tests.factories import make_preliminary_report
from tests.security.care_world import make_care_world


def audit_rows(session: Session, **where: Any) -> list[AuditEvent]:
    session.expire_all()
    statement = select(AuditEvent).order_by(AuditEvent.id)
    for name, value in where.items():
        statement = statement.where(getattr(AuditEvent, name) == value)
    return list(session.scalars(statement))


def test_a_denial_names_the_targeted_patient(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    world = make_care_world(db_session, demo)
    db_session.commit()
    report_id = world.report.id
    assert as_role("clinician").get(f"/fhir/DiagnosticReport/{report_id}").status_code == 403  # no relationship
    assert as_role("pharmacist").get(f"/api/reports/{report_id}").status_code == 403  # role may not see reports
    denials = audit_rows(db_session, outcome=OUTCOME_DENIED, entity_type="DiagnosticReport")
    assert [d.user_id for d in denials] == [demo.users["clinician"].id, demo.users["pharmacist"].id]
    assert {d.patient_id for d in denials} == {demo.patient.id}


def test_scrolling_a_report_s_slices_is_one_read(
    as_role: Any, app: Flask, db_session: Session, demo: DemoSeed
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    store_slices(db_session, app, demo, report)
    db_session.commit()
    radiologist = as_role("radiologist")
    assert radiologist.get(f"/api/reports/{report.id}").status_code == 200  # opening the report
    for index in range(10):
        assert radiologist.get(f"/reports/{report.id}/slices/{index}.png").status_code == 200
    finding = report.findings[0]
    assert radiologist.get(f"/reports/{report.id}/findings/{finding.id}/image.png").status_code == 200
    reads = audit_rows(db_session, entity_type="DiagnosticReport", entity_id=str(report.id), action="R")
    assert [(r.user_id, r.outcome) for r in reads] == [(demo.users["radiologist"].id, OUTCOME_SUCCESS)]


def test_an_image_fetched_without_a_recent_read_is_a_read(
    as_role: Any, app: Flask, db_session: Session, demo: DemoSeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    store_slices(db_session, app, demo, report)
    db_session.commit()
    clinician, radiologist = as_role("clinician"), as_role("radiologist")
    assert radiologist.get(f"/reports/{report.id}/slices/0.png").status_code == 200  # no read yet: this is one
    assert clinician.get(f"/reports/{report.id}/slices/0.png").status_code == 200  # another user: their own
    assert radiologist.get(f"/reports/{report.id}/slices/1.png").status_code == 200  # covered by the first
    idle = app.config["SESSION_IDLE_MINUTES"]
    later = utcnow() + timedelta(minutes=idle + 1)
    monkeypatch.setattr("hospital.records.utcnow", lambda: later)
    assert radiologist.get(f"/reports/{report.id}/slices/2.png").status_code == 200  # a new sitting
    reads = audit_rows(db_session, entity_type="DiagnosticReport", entity_id=str(report.id), action="R")
    radiologist_id, clinician_id = demo.users["radiologist"].id, demo.users["clinician"].id
    assert [r.user_id for r in reads] == [radiologist_id, clinician_id, radiologist_id]
    assert all(r.patient_id == demo.patient.id for r in reads)


def test_a_refused_image_fetch_is_still_audited(as_role: Any, app: Flask, db_session: Session, demo: DemoSeed) -> None:
    report = make_preliminary_report(db_session, demo, [(4, 4, 12, 12)])
    store_slices(db_session, app, demo, report)
    db_session.commit()
    assert as_role("patient2").get(f"/reports/{report.id}/slices/0.png").status_code == 403
    denials = audit_rows(db_session, outcome=OUTCOME_DENIED, entity_type="DiagnosticReport")
    assert [(d.user_id, d.patient_id) for d in denials] == [(demo.users["patient2"].id, demo.patient.id)]
