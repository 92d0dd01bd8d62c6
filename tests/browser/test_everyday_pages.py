"""The everyday pages outside the main loop, in headless Chromium: the clinician and the patient
writing to each other (the patient on a phone), imaging staff checking a patient in at the
worklist, and an administrator setting a price in the catalog."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from ai_services.models import ReportStatus, ReviewStatus
from followup.service import open_consultation
from hospital.db import get_db
from tests.browser.conftest import (
    LiveSite,
    accepted_referral,
    booked_appointment,
    has_horizontal_scroll,
    login,
    screenshot,
)
from tests.factories import make_preliminary_report

pytestmark = pytest.mark.browser


def flash(page: Any) -> Any:
    return page.locator(".flash")


def nav(page: Any, label: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()


def make_consultation(site: LiveSite) -> int:
    """The consultation a radiologist's signature opens, for the demo patient and clinician."""
    with site.app.app_context(), get_db(site.app).transaction() as session:
        report = make_preliminary_report(session, site.demo, [(10, 10, 14, 14)])
        for finding in report.findings:
            finding.review_status = ReviewStatus.ACCEPTED
        report.status = ReportStatus.FINAL
        consultation = open_consultation(session, report.id)
        assert consultation is not None
        return consultation.id


def test_clinician_and_patient_write_to_each_other(browser: Any, site: LiveSite) -> None:
    consultation_id = make_consultation(site)
    clinician = login(browser, site, "clinician")
    clinician.goto(f"/consultations/{consultation_id}")
    expect(clinician.locator("#messages .empty")).to_have_text("No messages yet.")
    clinician.get_by_label("Write a message to the patient").fill("The nodule is small. Shall we talk on Thursday?")
    clinician.get_by_role("button", name="Send", exact=True).click()
    expect(flash(clinician)).to_have_text("Message sent.")
    mine = clinician.locator("#message-thread li").last
    expect(mine).to_contain_text("You")
    expect(mine.locator(".receipt")).to_have_text("not read yet")

    # The patient, on a phone: the unread message is flagged in the list and read in the thread.
    patient = login(browser, site, "patient", width=375, height=800)
    nav(patient, "Consultations 1 new")  # the menu link carries the unread count
    unread = patient.locator(f"#consultation-{consultation_id} .unread")
    expect(unread).to_have_text("1 unread message")
    assert not has_horizontal_scroll(patient)
    unread.click()
    expect(patient.locator("#message-thread li").first).to_contain_text("Shall we talk on Thursday?")
    expect(patient.locator("#message-thread li").first).to_contain_text("Clinician")
    patient.get_by_role("button", name="Send", exact=True).click()  # empty: the browser's own check stops it
    expect(patient.locator("#message-thread li")).to_have_count(1)
    patient.get_by_label("Write a message to your clinician").fill("Thursday at 10 works for me.")
    patient.get_by_role("button", name="Send", exact=True).click()
    expect(flash(patient)).to_have_text("Message sent.")
    expect(patient.locator("#message-thread li")).to_have_count(2)
    assert not has_horizontal_scroll(patient)
    screenshot(patient, "patient-messages-phone")
    nav(patient, "Consultations")
    expect(patient.locator(f"#consultation-{consultation_id} .unread")).to_have_count(0)

    # Back at the clinician: the reply, and a read receipt on the first message.
    nav(clinician, "Consultations")
    expect(clinician.locator(f"#consultation-{consultation_id} .unread")).to_have_text("1 unread message")
    clinician.goto(f"/consultations/{consultation_id}")
    expect(clinician.locator("#message-thread li").last).to_contain_text("Thursday at 10 works for me.")
    expect(clinician.locator("#message-thread li").first.locator(".receipt")).to_have_text("read")
    screenshot(clinician, "clinician-messages")


def test_staff_check_a_booked_patient_in_at_the_worklist(browser: Any, site: LiveSite) -> None:
    referral = accepted_referral(site, "Follow-up of a lung nodule")
    appointment = booked_appointment(site, referral)

    staff = login(browser, site, "imaging_staff")
    staff.goto(f"/worklist?date={appointment['start'][:10]}")
    row = staff.locator(f"#worklist tr[data-referral-id='{referral['id']}']")
    expect(row.locator("td[data-label=Appointment] .badge")).to_have_text("Booked")
    expect(row.locator("td[data-label=Images]")).to_contain_text("not arrived")
    row.get_by_role("button", name="Check in Alex Rivera").click()
    expect(flash(staff)).to_have_text("Alex Rivera checked in.")
    expect(staff).to_have_url(re.compile(rf"/worklist\?date={appointment['start'][:10]}$"))  # the same day again
    expect(row.locator("td[data-label=Appointment] .badge")).to_have_text("Checked in")
    expect(row.get_by_role("button", name="Check in Alex Rivera")).to_have_count(0)
    screenshot(staff, "staff-checked-in")
    appointments = site.api("GET", "/api/appointments", site.token("patient"))
    assert [a["status"] for a in appointments if a["id"] == appointment["id"]] == ["arrived"]


def test_admin_sets_a_price_and_a_refused_one_keeps_what_was_typed(browser: Any, site: LiveSite) -> None:
    admin = login(browser, site, "admin")
    admin.on("dialog", lambda dialog: dialog.accept())  # "a price in force cannot be taken back"
    nav(admin, "Price catalog")
    form = admin.locator("#price-form")
    form.get_by_label("Service code").fill("IMG-MR")
    form.get_by_label("Service name").fill("MR brain without contrast")
    form.get_by_label("Service line").select_option("scan")
    form.get_by_label("Organisation").select_option(label="Riverside Imaging Centre")
    form.get_by_label("Price", exact=False).first.fill("-310.00")  # negative: refused, nothing lost
    form.get_by_label("Starts on (UTC)").fill("2030-01-01")
    form.get_by_role("button", name="Save price").click()
    expect(flash(admin)).to_contain_text("cannot be negative")
    expect(form.get_by_label("Service name")).to_have_value("MR brain without contrast")
    expect(form.get_by_label("Organisation")).to_have_value(str(site.demo.imaging_centre.id))
    expect(admin.locator("#catalog")).not_to_contain_text("MR brain")

    form.get_by_label("Price", exact=False).first.fill("310.00")
    form.get_by_role("button", name="Save price").click()
    expect(flash(admin)).to_have_text("Price saved.")
    row = admin.locator("#catalog tbody tr").filter(has_text="MR brain without contrast")
    expect(row).to_contain_text("€310.00")
    expect(row).to_contain_text(re.compile(r"Jan 1, 2030|1 Jan 2030"))  # as Babel writes it
    expect(form.get_by_label("Service code")).to_have_value("")  # a saved price leaves an empty form
    screenshot(admin, "admin-catalog")
