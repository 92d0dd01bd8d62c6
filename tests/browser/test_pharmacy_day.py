"""The pharmacist's day in Chromium, at desktop and at phone width: the queue, a partial supply
confirmed before it is handed over, an item out of stock until a lot is delivered, prescriptions
returned to the prescriber (one with a code from before the formulary); and the prescriber, who
sees the pharmacy's reason and is refused a prescription once the consultation is finished."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from ai_services.models import DiagnosticReport, ReportStatus, ReviewStatus
from followup.models import MedicationRequest
from followup.service import open_consultation
from hospital.clock import utcnow
from hospital.db import get_db
from tests.browser.conftest import LiveSite, has_horizontal_scroll, login, make_report_with_key_images, screenshot

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": 1280, "phone": 390}
AMOXICILLIN = "Amoxicillin 500 mg capsules, pack of 21"
PARACETAMOL = "Paracetamol 500 mg tablets"
ETHYLMORPHINE = "Ethylmorphine oral solution, 100 ml"


def open_consultation_for_a_signed_report(site: LiveSite) -> int:
    report_id = make_report_with_key_images(site)
    with site.app.app_context(), get_db(site.app).transaction() as session:
        report = session.get(DiagnosticReport, report_id)
        assert report is not None
        for finding in report.findings:
            finding.review_status = ReviewStatus.ACCEPTED
        report.status = ReportStatus.FINAL
        consultation = open_consultation(session, report_id)
        assert consultation is not None
        return consultation.id


def flash(page: Any) -> Any:
    return page.locator(".flash")


def prescribe(page: Any, medication: str, code: str, quantity: int) -> None:
    page.get_by_label("Medication").select_option(label=f"{medication} (ATC {code})")
    page.get_by_label("Dosage instructions").fill("As directed on the label")
    page.get_by_label("Quantity").fill(str(quantity))
    page.get_by_role("button", name="Send prescription").click()
    expect(flash(page)).to_contain_text("sent to the pharmacy")


def row_of(page: Any, medication: str) -> Any:
    return page.locator("#dispense-queue tbody tr").filter(has_text=medication)


def prescription_id(row: Any) -> str:
    return str(row.get_attribute("id")).removeprefix("rx-")


def dispense(page: Any, medication: str, quantity: int) -> None:
    """From the queue: the quantity, the confirmation page, then confirm."""
    row = row_of(page, medication)
    rx = prescription_id(row)
    row.get_by_label("Quantity").fill(str(quantity))
    row.get_by_role("button", name=f"Dispense prescription {rx}").click()
    expect(page.get_by_role("heading", level=2)).to_contain_text(f"Hand over {quantity} × {medication}")
    page.get_by_role("button", name=f"Confirm: dispense {quantity}").click()


def return_to_prescriber(page: Any, medication: str, reason: str | None) -> str:
    row = row_of(page, medication)
    rx = prescription_id(row)
    row.get_by_role("link", name=f"Return prescription {rx} to the prescriber").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Return prescription {rx} to the prescriber")
    if reason is not None:
        page.get_by_label("Reason for the prescriber").fill(reason)
    page.get_by_role("button", name="Confirm: return to the prescriber").click()
    expect(flash(page)).to_have_text(f"Prescription {rx} returned to the prescriber.")
    return rx


@pytest.mark.parametrize("width_name", list(WIDTHS))
def test_the_pharmacists_day_and_the_prescriber_refused_on_a_finished_consultation(
    browser: Any, site: LiveSite, width_name: str
) -> None:
    width = WIDTHS[width_name]
    consultation_id = open_consultation_for_a_signed_report(site)
    url = f"/consultations/{consultation_id}"
    with site.app.app_context(), get_db(site.app).transaction() as session:
        # Written before the formulary: a free-text code the pharmacy cannot dispense.
        session.add(MedicationRequest(
            consultation_id=consultation_id, patient_id=site.demo.patient.id,
            prescriber_id=site.demo.users["clinician"].practitioner_id, pharmacy_organization_id=site.demo.pharmacy.id,
            medication_code="amoxicillin", medication_display="amoxicillin (typed)", dosage_text="tds", quantity=1))

    # The prescriber picks from the formulary.
    clinician = login(browser, site, "clinician", width=width)
    clinician.goto(url)
    prescribe(clinician, AMOXICILLIN, "J01CA04", 3)
    prescribe(clinician, PARACETAMOL, "N02BE01", 2)
    prescribe(clinician, ETHYLMORPHINE, "R05DA01", 1)

    pharmacist = login(browser, site, "pharmacist", width=width)
    pharmacist.get_by_role("navigation", name="Main").get_by_role("link", name="Dispense queue", exact=True).click()
    queue = pharmacist.locator("#dispense-queue")
    for medication in (AMOXICILLIN, PARACETAMOL, ETHYLMORPHINE, "amoxicillin (typed)"):
        expect(queue).to_contain_text(medication)
    expect(row_of(pharmacist, "amoxicillin (typed)")).to_contain_text("not in the formulary")
    expect(row_of(pharmacist, "amoxicillin (typed)").get_by_role("button")).to_have_count(0)
    assert not has_horizontal_scroll(pharmacist), "the queue scrolls sideways"
    screenshot(pharmacist, f"pharmacist-queue-{width_name}")

    # A partial supply: 2 of 3, confirmed first.
    dispense(pharmacist, AMOXICILLIN, 2)
    expect(flash(pharmacist)).to_have_text(f"Dispensed 2 × {AMOXICILLIN} to Alex Rivera; 1 still to supply.")
    expect(row_of(pharmacist, AMOXICILLIN)).to_contain_text("2 dispensed, 1 to go")

    # Nothing in stock until a lot is delivered, then it goes.
    dispense(pharmacist, PARACETAMOL, 2)
    expect(flash(pharmacist)).to_have_text("out of stock: N02BE01 has 0 unit(s) on hand, 2 needed")
    pharmacist.get_by_role("navigation", name="Main").get_by_role("link", name="Stock", exact=True).click()
    pharmacist.get_by_label("Medication").select_option(label=f"{PARACETAMOL} (ATC N02BE01)")
    pharmacist.get_by_label("Lot number").fill("PCM-2611")
    pharmacist.get_by_label("Quantity received").fill("20")
    expiry = (utcnow().date() + timedelta(days=365)).isoformat()
    pharmacist.get_by_label("Expiry date").fill(expiry)
    pharmacist.get_by_role("button", name="Add to stock").click()
    expect(flash(pharmacist)).to_contain_text(f"Received 20 × {PARACETAMOL}, lot PCM-2611")
    expect(pharmacist.locator("#stock-N02BE01")).to_contain_text(f"Lot PCM-2611: 20, expires {expiry}")
    assert not has_horizontal_scroll(pharmacist), "the stock page scrolls sideways"
    screenshot(pharmacist, f"pharmacist-stock-{width_name}")
    pharmacist.get_by_role("navigation", name="Main").get_by_role("link", name="Dispense queue", exact=True).click()
    dispense(pharmacist, PARACETAMOL, 2)
    expect(flash(pharmacist)).to_have_text(f"Dispensed 2 × {PARACETAMOL} to Alex Rivera.")

    # Back to the prescriber, with a reason; the one that cannot be dispensed has its reason written already.
    returned = return_to_prescriber(pharmacist, ETHYLMORPHINE, "Patient reports an opioid allergy; please choose another")
    return_to_prescriber(pharmacist, "amoxicillin (typed)", None)
    expect(queue).not_to_contain_text(ETHYLMORPHINE)
    expect(queue).not_to_contain_text("amoxicillin (typed)")
    screenshot(pharmacist, f"pharmacist-after-returns-{width_name}")

    # The prescriber sees why; a page left open after the consultation is finished is refused.
    clinician.goto(url)
    expect(clinician.locator(f"#prescription-{returned}")).to_contain_text(
        "Returned by the pharmacy: Patient reports an opioid allergy; please choose another")
    expect(clinician.locator(f"#prescription-{returned} .badge")).to_have_text("Returned by the pharmacy")
    stale = clinician.context.new_page()
    stale.goto(url)
    clinician.get_by_label("Visit note").fill("Cough treated; allergy noted, alternative to follow.")
    clinician.get_by_role("button", name="Finish consultation").click()
    expect(flash(clinician)).to_contain_text("Consultation finished")
    expect(clinician.locator("#prescribe-form")).to_have_count(0)
    expect(clinician.get_by_text(re.compile("This consultation is finished: no new prescriptions"))).to_be_visible()
    stale.get_by_label("Medication").select_option(label=f"{AMOXICILLIN} (ATC J01CA04)")
    stale.get_by_label("Dosage instructions").fill("One capsule three times daily")
    stale.get_by_role("button", name="Send prescription").click()
    expect(flash(stale)).to_have_text(f"consultation {consultation_id} is finished: prescribe in an open consultation")
    screenshot(stale, f"clinician-prescribing-refused-{width_name}")
    for page in (clinician, pharmacist):
        page.context.close()
