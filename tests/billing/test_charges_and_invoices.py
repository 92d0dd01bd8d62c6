"""Charges: exactly one per billable event, priced from the catalog; invoices sum them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ai_services.models import ReportStatus, ReviewStatus
from billing import jobs
from billing.models import CatalogEntry, ChargeItem, ServiceLine
from billing.service import PriceNotFound, price_for, scan_code
from followup.service import open_consultation
from hospital.seed import DemoSeed
from tests.factories import analysis_completed, consultation_finished, make_preliminary_report, study_completed


def test_centre_price_wins_over_platform_price_within_its_dates(db_session: Session, demo: DemoSeed) -> None:
    when = datetime(2026, 6, 1, tzinfo=UTC)
    assert price_for(db_session, scan_code("CT"), demo.imaging_centre.id, when).unit_price_minor == 15000
    assert price_for(db_session, scan_code("CT"), None, when).unit_price_minor == 18000
    db_session.add(CatalogEntry(code=scan_code("CT"), display="CT 2027", service_line=ServiceLine.SCAN,
                                organization_id=demo.imaging_centre.id, unit_price_minor=16000, currency="EUR",
                                effective_from=datetime(2027, 1, 1, tzinfo=UTC)))
    db_session.flush()
    assert price_for(db_session, scan_code("CT"), demo.imaging_centre.id, when).unit_price_minor == 15000
    assert price_for(db_session, scan_code("CT"), demo.imaging_centre.id, datetime(2027, 2, 1, tzinfo=UTC)).unit_price_minor == 16000
    with pytest.raises(PriceNotFound):
        price_for(db_session, scan_code("PT"), demo.imaging_centre.id, when)


def test_each_billing_job_run_twice_charges_once(db_session: Session, demo: DemoSeed) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 30, 30)])
    for _ in range(2):
        jobs.charge_scan(db_session, study_completed(db_session, report.study_id))
        jobs.charge_ai_analysis(db_session, analysis_completed(db_session, report))
    items = db_session.scalars(select(ChargeItem).order_by(ChargeItem.id)).all()
    assert [(i.service_line, i.total_minor, i.ai_attributed) for i in items] == [
        (ServiceLine.SCAN, 15000, False), (ServiceLine.AI_ANALYSIS, 2500, True)]


def test_consultation_after_a_confirmed_ai_finding_is_ai_attributed(db_session: Session, demo: DemoSeed) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 30, 30)])
    report.findings[0].review_status = ReviewStatus.ACCEPTED
    report.status = ReportStatus.FINAL
    consultation = open_consultation(db_session, report.id)
    assert consultation is not None and open_consultation(db_session, report.id) is consultation
    consultation.ended_at = report.issued_at
    jobs.charge_consultation(db_session, consultation_finished(db_session, consultation))
    jobs.charge_consultation(db_session, consultation_finished(db_session, consultation))
    item = db_session.scalar(select(ChargeItem).where(ChargeItem.service_line == ServiceLine.CONSULTATION))
    assert item is not None and item.ai_attributed and item.total_minor == 6000
    assert db_session.scalar(select(func.count()).select_from(ChargeItem)) == 1


def test_invoice_gathers_unbilled_charges_once(as_role: Any, db_session: Session, demo: DemoSeed) -> None:
    report = make_preliminary_report(db_session, demo, [(10, 10, 30, 30)])
    jobs.charge_scan(db_session, study_completed(db_session, report.study_id))
    jobs.charge_ai_analysis(db_session, analysis_completed(db_session, report))
    db_session.commit()
    admin = as_role("admin")
    invoice = admin.post("/api/invoices", json={"patient_id": demo.patient.id})
    assert invoice.status_code == 201
    data = invoice.get_json()
    assert (data["total_minor"], data["currency"], len(data["items"])) == (17500, "EUR", 2)
    again = admin.post("/api/invoices", json={"patient_id": demo.patient.id})
    assert again.status_code == 409
    assert as_role("patient").get(f"/api/invoices/{data['id']}").status_code == 200
    assert as_role("patient2").get(f"/api/invoices/{data['id']}").status_code == 403
    assert as_role("clinician").post("/api/invoices", json={"patient_id": demo.patient.id}).status_code == 403
    revenue = {line["group"]: line for line in admin.get("/api/revenue").get_json()}
    assert revenue["ai-analysis"]["ai_attributed_minor"] == 2500 and revenue["scan"]["ai_attributed_minor"] == 0
