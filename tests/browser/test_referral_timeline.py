"""A referral followed through the pages: the centre's desk books a slot for the patient (phone
width, as at a desk tablet), and the clinician opens the referral from their list and reads where it
stands, at desktop and phone width."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveSite, has_horizontal_scroll, login, screenshot

pytestmark = pytest.mark.browser


def test_the_desk_books_and_the_clinician_follows_the_referral(browser: Any, site: LiveSite) -> None:
    demo = site.demo
    referral = site.api("POST", "/api/referrals", site.token("clinician"), {
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest without contrast",
        "reason": "Weight loss and a cough for six weeks", "access_reason": "new patient referred to me",
        "priority": "urgent"})

    staff = login(browser, site, "imaging_staff", width=390, height=844)
    staff.goto("/incoming")
    triage = staff.locator(f"#referral-{referral['id']}")
    expect(triage).to_contain_text("Ada Lovelace")  # who sent it
    triage.get_by_role("button", name=f"Accept referral {referral['id']}").click()
    booking = staff.locator(f"#book-{referral['id']}")
    expect(booking).to_contain_text("CT chest without contrast")
    booking.get_by_role("button", name="Book the slot for Alex Rivera").click()
    expect(staff.locator(".flash")).to_have_text(f"Referral {referral['id']} booked for Alex Rivera.")
    assert not has_horizontal_scroll(staff)

    clinician = login(browser, site, "clinician")
    clinician.goto("/referrals")
    row = clinician.locator(f"#referral-{referral['id']}")
    expect(row).to_contain_text("Booked")
    row.get_by_role("link", name=f"Follow referral {referral['id']}").click()
    expect(clinician).to_have_url(re.compile(rf"/referrals/{referral['id']}$"))
    expect(clinician.locator("#referral-status")).to_have_text("Status: Booked")
    steps = clinician.locator("ol.timeline li")
    expect(steps).to_have_count(7)
    expect(steps.nth(2)).to_contain_text("Booked")
    expect(clinician.locator("ol.timeline li[aria-current=step]")).to_contain_text("Images received")
    expect(clinician.get_by_text("Weight loss and a cough for six weeks")).to_be_visible()
    screenshot(clinician, "referral-timeline")
    clinician.set_viewport_size({"width": 390, "height": 844})
    assert not has_horizontal_scroll(clinician)
    screenshot(clinician, "referral-timeline-phone")
