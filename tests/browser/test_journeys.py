"""Each role's main journey through the web pages, in headless Chromium: real clicks and form
fills over the real app and database, from a clinician's referral to the patient's invoice."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
from playwright.sync_api import expect

from ai_services.models import AnalysisJob, AnalysisStatus
from hospital.clock import utcnow
from hospital.db import get_db
from imaging_orders.archive.models import ImagingStudy, StudyStatus
from referrals.models import Referral
from tests.browser.conftest import (
    LiveSite,
    has_horizontal_scroll,
    login,
    make_report_with_key_images,
    new_page,
    publish_docs_screenshots,
    screenshot,
)

pytestmark = pytest.mark.browser


def nav(page: Any, label: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()


def flash(page: Any) -> Any:
    return page.locator(".flash")


def start_analysis(site: LiveSite, referral_id: int) -> int:
    """The modality has sent the images and the AI is part-way through them (what the DICOM
    receiver and the worker would have written); returns the analysis job id."""
    with site.app.app_context(), get_db(site.app).transaction() as session:
        referral = session.get(Referral, referral_id)
        assert referral is not None
        study = ImagingStudy(
            study_instance_uid=f"1.2.826.0.1.3680043.8.498.77{referral_id}", accession_number=referral.accession_number,
            referral_id=referral.id, patient_id=referral.patient_id, organization_id=referral.performer_organization_id,
            status=StudyStatus.AVAILABLE, completed_at=utcnow(),
        )
        session.add(study)
        session.flush()
        job = AnalysisJob(study_id=study.id, status=AnalysisStatus.RUNNING, slices_done=3, slices_total=10)
        session.add(job)
        session.flush()
        return job.id


def finish_analysis(site: LiveSite, job_id: int) -> None:
    with site.app.app_context(), get_db(site.app).transaction() as session:
        job = session.get(AnalysisJob, job_id)
        job.slices_done = 10
        job.status = AnalysisStatus.COMPLETED


def test_closed_loop_journey_through_the_pages(browser: Any, site: LiveSite) -> None:
    # Clinician: a referral through the form, then its status in "My referrals".
    clinician = login(browser, site, "clinician")
    nav(clinician, "New referral")
    clinician.get_by_label("Patient", exact=True).select_option(label="Rivera, Alex (MRN-1001)")
    clinician.get_by_label("Access reason").fill("New patient at the practice")
    clinician.get_by_label("Priority").select_option("urgent")
    clinician.get_by_label("Reason for the examination").fill("Persistent cough for six weeks; ex-smoker")
    screenshot(clinician, "clinician-new-referral")
    clinician.get_by_role("button", name="Send referral").click()
    expect(clinician).to_have_url(site.url("/referrals"))
    expect(flash(clinician)).to_contain_text("sent to Riverside Imaging Centre")
    row = clinician.locator("#referrals tbody tr").first
    expect(row).to_contain_text("Alex Rivera")
    expect(row.locator(".badge")).to_have_text("Waiting for acceptance")
    referral_id = int(row.locator("td").first.inner_text())
    screenshot(clinician, "clinician-referrals")

    # Imaging staff: accept it from the incoming list.
    staff = login(browser, site, "imaging_staff")
    nav(staff, "Referrals to accept")
    expect(staff.locator(f"#referral-{referral_id}")).to_contain_text("Persistent cough")
    screenshot(staff, "staff-incoming")
    staff.get_by_role("button", name=f"Accept referral {referral_id}").click()
    expect(flash(staff)).to_contain_text(re.compile(r"accepted: accession ACC\d+"))
    expect(staff.locator(".empty")).to_contain_text("No referrals are waiting")
    clinician.reload()
    expect(clinician.locator(f"#referral-{referral_id} .badge")).to_have_text("Accepted: to be booked")

    # Patient: book the first open slot.
    patient = login(browser, site, "patient")
    nav(patient, "Appointments")
    first_time = patient.locator("form[id^='book-form-'] .slot-chip").first
    slot_label = first_time.inner_text().strip()  # "07:00", on the centre's clock
    screenshot(patient, "patient-booking")
    first_time.click()
    patient.get_by_role("button", name="Book the chosen time").click()
    expect(flash(patient)).to_contain_text("Appointment booked")
    expect(patient.locator("#appointments")).to_contain_text("CT chest without contrast")
    booked_day = date.fromisoformat(site.api("GET", "/api/appointments", site.token("patient"))[0]["start"][:10])

    # Imaging staff: the day's worklist, with study arrival and AI progress updating live.
    job_id = start_analysis(site, referral_id)
    nav(staff, "Worklist")
    if booked_day != utcnow().date():
        staff.get_by_label("Day", exact=True).fill(booked_day.isoformat())
        staff.get_by_role("button", name="Show").click()
    entry = staff.locator(f"#worklist tr[data-referral-id='{referral_id}']")
    expect(entry).to_contain_text("Alex Rivera")
    expect(entry).to_contain_text(slot_label)  # the booked time
    expect(entry).to_contain_text("complete")
    progress = entry.locator(".ai-label")
    expect(progress).to_have_text("AI running 3/10 slices")
    staff.evaluate("window.__notReloaded = true")
    screenshot(staff, "staff-worklist")
    finish_analysis(site, job_id)
    expect(progress).to_have_text("AI completed 10/10 slices")
    assert staff.evaluate("window.__notReloaded") is True, "the progress must update without a reload"
    staff.set_viewport_size({"width": 375, "height": 800})
    assert not has_horizontal_scroll(staff), "the worklist scrolls sideways at phone width"
    screenshot(staff, "staff-worklist-phone")

    # Radiologist: the most urgent report from the reading list; window presets; decide; sign.
    report_id = make_report_with_key_images(site)
    radiologist = login(browser, site, "radiologist")
    nav(radiologist, "Reading list")
    expect(radiologist.locator("#reading-list tbody tr").first).to_contain_text("urgent")
    radiologist.get_by_role("link", name=f"Report {report_id}").click()
    expect(radiologist.get_by_role("heading", level=1)).to_contain_text(f"Report {report_id}")
    images = radiologist.locator("img.key-image")
    expect(images).to_have_count(2)
    radiologist.get_by_role("navigation", name="Window presets").get_by_role("link", name="soft tissue").click()
    expect(images.first).to_have_attribute("src", re.compile(r"window=soft_tissue"))
    for image in images.all():  # rendered PNGs of the 256 x 256 slices, not broken images
        expect(image).to_have_js_property("complete", True)
        expect(image).to_have_js_property("naturalWidth", 256)
    screenshot(radiologist, "radiologist-report")
    first, second = radiologist.locator("section.finding").evaluate_all("els => els.map(e => e.id.split('-')[1])")
    radiologist.get_by_role("button", name="Sign report").click()
    expect(flash(radiologist)).to_contain_text("have no decision yet")
    radiologist.get_by_role("button", name=f"Accept finding {first}").click()
    expect(flash(radiologist)).to_have_text(f"Finding {first} accepted.")
    expect(radiologist).to_have_url(re.compile(rf"window=soft_tissue&slice=\d+#finding-{first}$"))
    radiologist.get_by_role("button", name=f"Reject finding {second}").click()
    expect(flash(radiologist)).to_have_text(f"Finding {second} rejected.")
    radiologist.get_by_label("Conclusion").fill("One nodule in the right lung; follow-up CT advised.")
    radiologist.get_by_role("button", name="Sign report").click()
    # Signing cannot be undone: a preview of what will be signed, then the confirmation.
    expect(radiologist.locator("#preview-conclusion")).to_have_text("One nodule in the right lung; follow-up CT advised.")
    radiologist.get_by_role("button", name="Confirm and sign").click()
    expect(flash(radiologist)).to_contain_text("Report signed")
    expect(radiologist.get_by_role("heading", level=1).locator(".badge")).to_have_text("Signed")
    expect(radiologist.get_by_role("button", name="Sign report")).to_have_count(0)

    # Clinician: the consultation opened by the signature, its follow-up plan; prescribe; finish.
    nav(clinician, "Consultations")
    card = clinician.locator("section.card").first
    expect(card).to_contain_text("Urgent")
    card.get_by_role("link", name="Open, prescribe or finish").click()
    expect(clinician.locator("#plan")).to_contain_text("Repeat CT chest")
    # From the formulary; priced in the demo catalog, so the dispense is billed.
    clinician.get_by_label("Medication").select_option(label="Amoxicillin 500 mg capsules, pack of 21 (ATC J01CA04)")
    clinician.get_by_label("Dosage instructions").fill("One capsule three times daily for 7 days")
    clinician.get_by_label("Quantity").fill("1")
    clinician.get_by_role("button", name="Send prescription").click()
    expect(flash(clinician)).to_contain_text("sent to the pharmacy")
    expect(clinician.locator("#prescriptions")).to_contain_text("Amoxicillin")
    clinician.get_by_label("Visit note").fill("Discussed the nodule; repeat CT booked in three months.")
    clinician.get_by_role("button", name="Finish consultation").click()
    expect(flash(clinician)).to_contain_text("Consultation finished")
    screenshot(clinician, "clinician-consultation")
    clinician.get_by_role("link", name=f"Open report {report_id}").click()
    expect(clinician.get_by_text("Signed by Rosa Ray")).to_be_visible()  # the name, not the username

    # Pharmacist: dispense it.
    pharmacist = login(browser, site, "pharmacist")
    nav(pharmacist, "Dispense queue")
    expect(pharmacist.locator("#dispense-queue")).to_contain_text("Amoxicillin")
    screenshot(pharmacist, "pharmacist-queue")
    pharmacist.locator("#dispense-queue").get_by_role("button", name=re.compile("Dispense prescription")).click()
    pharmacist.get_by_role("button", name="Confirm: dispense 1").click()
    expect(flash(pharmacist)).to_have_text("Dispensed 1 × Amoxicillin 500 mg capsules, pack of 21 to Alex Rivera.")
    expect(pharmacist.locator(".empty")).to_contain_text("Nothing to dispense")

    # Administrator: revenue from every step, the model registry, the audit trail.
    admin = login(browser, site, "admin")
    nav(admin, "Revenue")
    revenue = admin.locator("#revenue-service_line tbody")
    for line in ("AI analysis", "Consultation", "Medication"):
        expect(revenue).to_contain_text(line)
    screenshot(admin, "admin-revenue")
    admin.goto("/models")
    expect(admin.locator("#models")).to_contain_text("active")
    nav(admin, "Audit log")
    admin.get_by_label("Patient").fill("MRN-1001")
    admin.get_by_label("User").fill("pharmacist")
    admin.get_by_role("button", name="Search").click()
    expect(admin.locator("#audit tbody")).to_contain_text("MedicationDispense")
    expect(admin.locator("#audit tbody")).not_to_contain_text("clinician")
    screenshot(admin, "admin-audit")

    # Administrator: the billing office issues the invoice for everything the patient received.
    nav(admin, "Billing")
    expect(admin.locator("#unbilled")).to_contain_text("Alex Rivera")
    asked: list[str] = []
    admin.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))  # issuing asks first
    admin.get_by_role("button", name="Issue an invoice to Alex Rivera").click()
    expect(flash(admin)).to_contain_text(re.compile(r"^Invoice \d+ issued to Alex Rivera"))
    assert asked and "Alex Rivera" in asked[0], asked
    invoice = {"id": int(re.search(r"Invoice (\d+)", flash(admin).inner_text()).group(1))}
    expect(admin.locator(f"#invoice-{invoice['id']}")).to_contain_text("Open")  # open: the patient has not paid yet
    screenshot(admin, "admin-billing")

    # Patient: the invoice, and the signed report in plain language.
    nav(patient, "My invoices")
    expect(patient.locator(f"#invoice-{invoice['id']}")).to_contain_text("Amoxicillin")
    screenshot(patient, "patient-invoices")
    patient.locator(f"#invoice-{invoice['id']}").get_by_role("button", name="Pay").click()
    patient.get_by_role("button", name=re.compile(r"^Confirm: pay ")).click()  # paying asks first
    expect(patient.get_by_role("heading", name=re.compile(r"^Receipt \d+$"))).to_be_visible()
    patient.get_by_role("link", name="Back to my invoices").click()
    expect(patient.locator(f"#invoice-{invoice['id']} h2")).to_contain_text("Paid")
    expect(patient.locator(f"#invoice-{invoice['id']}")).to_contain_text("paid ")
    expect(patient.locator(f"#invoice-{invoice['id']}").get_by_role("button", name="Pay")).to_have_count(0)
    nav(patient, "Reports")
    patient.get_by_role("link", name=f"Report {report_id}").click()
    expect(patient.get_by_role("heading", name="What this means")).to_be_visible()
    expect(patient.locator(".plain")).to_contain_text("found 1 small area")
    expect(patient.locator("img.key-image")).to_have_count(1)  # the rejected finding is not shown
    screenshot(patient, "patient-report")

    publish_docs_screenshots({
        "clinician-referrals": "clinician-referrals", "staff-worklist": "worklist",
        "radiologist-report": "radiologist-report", "admin-revenue": "admin-revenue",
    })


def test_sign_in_errors_logout_not_found_and_phone_width(browser: Any, site: LiveSite) -> None:
    page = new_page(browser, site)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_label("Username").fill("clinician")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown username or wrong password")
    expect(page.get_by_label("Username")).to_have_value("clinician")
    screenshot(page, "login-failed")

    page.get_by_label("Password").fill(__import__("hospital.seed").seed.DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Ada Lovelace")

    # A forged sign-out (no CSRF token) is refused and the session stays.
    forged = page.request.post(site.url("/logout"), form={}, max_redirects=0)
    assert forged.status == 403
    assert "Traceback" not in forged.text()
    page.reload()
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Ada Lovelace")

    # A page that does not exist: a plain 404 page in plain words, no stack trace.
    response = page.goto("/no/such/page")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("We could not find this page")
    assert "Traceback" not in page.content()

    # Phone width: the home page and a table page do not scroll sideways.
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/")
    assert not has_horizontal_scroll(page)
    screenshot(page, "clinician-home-phone")
    page.goto("/referrals/new")
    assert not has_horizontal_scroll(page)

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/referrals")
    expect(page).to_have_url(re.compile(r"/login\?next="))
