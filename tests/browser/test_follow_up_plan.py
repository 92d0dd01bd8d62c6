"""The follow-up plan and paying, walked in Chromium: the clinician changes the plan at a desk
(adds a repeat scan from a template, brings it forward, adds and cancels a lab test with a
confirmation); the patient, on a phone (390x844), books the repeat scan from the plan, sees the
booking on the task, pays an invoice after a confirmation step and gets a receipt. Every new page
passes the axe-core WCAG AA audit."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from babel.dates import format_date
from playwright.sync_api import expect

from ai_services.models import ReportStatus, ReviewStatus
from billing import jobs
from followup.service import open_consultation
from hospital.clock import utcnow
from hospital.db import get_db
from tests.browser.conftest import LiveSite, has_horizontal_scroll, login, screenshot
from tests.browser.test_accessibility import audit
from tests.factories import make_preliminary_report, study_completed

pytestmark = pytest.mark.browser


def consultation_with_a_charged_scan(site: LiveSite) -> int:
    """A signed report's consultation for the demo patient and clinician; the scan is charged."""
    with site.app.app_context(), get_db(site.app).transaction() as session:
        report = make_preliminary_report(session, site.demo, [(10, 10, 14, 14)])
        for finding in report.findings:
            finding.review_status = ReviewStatus.ACCEPTED
        report.status = ReportStatus.FINAL
        jobs.charge_scan(session, study_completed(session, report.study_id))
        consultation = open_consultation(session, report.id)
        assert consultation is not None
        return consultation.id


def test_the_clinician_changes_the_plan_and_the_patient_books_and_pays_on_a_phone(browser: Any, site: LiveSite) -> None:
    consultation_id = consultation_with_a_charged_scan(site)
    axe = Axe()
    problems: list[str] = []

    # The clinician, at a desk: a repeat CT from a template, brought forward, and a lab test cancelled.
    clinician = login(browser, site, "clinician")
    clinician.goto(f"/consultations/{consultation_id}")
    clinician.get_by_role("link", name="Open and change the plan").click()
    expect(clinician).to_have_url(re.compile(r"/care-plans/\d+$"))
    plan_url = clinician.url
    clinician.get_by_label("From a template").select_option(label="Repeat scan in 3 months")
    clinician.get_by_role("button", name="Add the task").click()
    expect(clinician.locator(".flash")).to_have_text(
        "Task added: Repeat the scan in 3 months. It is ordered: the patient can book it from the plan.")
    repeat = clinician.locator("#plan-tasks > li", has_text="Repeat the scan in 3 months")
    expect(repeat.locator(".badge")).to_have_text("Ordered")
    soon = (utcnow() + timedelta(days=5)).date()
    repeat.get_by_text("Change this task").click()
    repeat.get_by_label("Due date").fill(soon.isoformat())
    repeat.get_by_role("button", name="Save changes").click()
    expect(clinician.locator(".flash")).to_have_text("Task changed: Repeat the scan in 3 months.")
    expect(repeat).to_contain_text(f"Due {format_date(soon, 'full', locale='en')}")

    clinician.get_by_label("From a template").select_option(label="Lab test in 1 week")
    clinician.get_by_role("button", name="Add the task").click()
    lab = clinician.locator("#plan-tasks > li", has_text="Blood test at the clinic's laboratory")
    expect(lab.locator(".badge")).to_have_text("To do")
    problems += audit(axe, clinician, "clinician plan (desktop)")
    screenshot(clinician, "clinician-follow-up-plan")
    lab.get_by_text("Change this task").click()
    lab.get_by_role("link", name="Cancel this task…").click()
    expect(clinician.get_by_role("heading", name="Cancel a follow-up task")).to_be_visible()
    problems += audit(axe, clinician, "cancel task confirmation")
    clinician.get_by_label("Reason for the patient").fill("Your GP already took the blood test last week")
    asked: list[str] = []
    clinician.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    clinician.get_by_role("button", name="Confirm: cancel the task").click()
    expect(clinician).to_have_url(plan_url)
    expect(clinician.locator(".flash")).to_have_text("Task cancelled: Blood test at the clinic's laboratory.")
    assert asked == ["Cancel this task? It cannot be reopened."], asked
    expect(lab.locator(".badge")).to_have_text("Cancelled")
    expect(lab.locator(".task-reason")).to_have_text("Cancelled: Your GP already took the blood test last week")

    # The patient, on a phone: the plan, the repeat scan booked from it.
    patient = login(browser, site, "patient", width=390, height=844)
    patient.goto(f"/consultations/{consultation_id}")
    patient.get_by_role("link", name="Open your plan (book a repeat scan)").click()
    expect(patient).to_have_url(plan_url)
    expect(patient.locator("#add-task-form")).to_have_count(0)
    mine = patient.locator("#plan-tasks > li", has_text="Repeat the scan in 3 months")
    picker = mine.locator("form.slot-picker")
    expect(picker).to_contain_text("choose a day, then a time")
    problems += audit(axe, patient, "patient plan (phone)")
    assert not has_horizontal_scroll(patient)
    screenshot(patient, "patient-plan-phone")
    first_time = picker.locator("label.slot").first
    chosen = first_time.inner_text().strip()
    first_time.click()
    picker.get_by_role("button", name="Book this time").click()
    expect(patient.locator(".flash")).to_contain_text(re.compile(rf"^Repeat scan booked for .+ at {re.escape(chosen)}\.$"))
    expect(mine.locator(".task-appointment")).to_contain_text("Booked:")
    expect(mine.locator(".task-appointment")).to_contain_text(chosen)
    expect(mine.locator("form.slot-picker")).to_have_count(0)
    assert not has_horizontal_scroll(patient)

    # Paying: an invoice for the scan, a confirmation, then a receipt to print.
    invoice = site.api("POST", "/api/invoices", site.token("admin"), {"patient_id": site.demo.patient.id})
    patient.goto("/invoices")
    card = patient.locator(f"#invoice-{invoice['id']}")
    expect(card.locator("h2 .badge")).to_have_text("To pay")
    card.get_by_role("button", name=re.compile(r"^Pay ")).click()
    expect(patient.get_by_role("heading", name=re.compile(r"^You are about to pay "))).to_be_visible()
    problems += audit(axe, patient, "pay confirmation (phone)")
    assert not has_horizontal_scroll(patient)
    patient.get_by_role("button", name=re.compile(r"^Confirm: pay ")).click()
    expect(patient).to_have_url(re.compile(rf"/invoices/{invoice['id']}/receipts/\d+$"))
    expect(patient.get_by_role("heading", name=re.compile(r"^Receipt \d+$"))).to_be_visible()
    expect(patient.locator("#receipt-due")).to_have_text("€0.00")
    expect(patient.get_by_role("button", name="Print or save this receipt")).to_be_visible()
    problems += audit(axe, patient, "receipt (phone)")
    assert not has_horizontal_scroll(patient)
    screenshot(patient, "patient-receipt-phone")
    patient.get_by_role("link", name="Back to my invoices").click()
    badge = patient.locator(f"#invoice-{invoice['id']} h2 .badge")
    expect(badge).to_have_text("Paid")
    expect(badge).to_have_class(re.compile(r"\bgood\b"))
    expect(patient.locator(f"#invoice-{invoice['id']}").get_by_role("button", name=re.compile(r"^Pay "))).to_have_count(0)
    assert problems == [], "\n".join(problems)
