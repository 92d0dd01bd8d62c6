"""A patient's phone (390x844) in each language: they switch the language on the page, read their
signed report and save it as a PDF, write to their clinician, see the unread badge, pay an invoice
after a confirmation, and download the receipt. (Booking, moving and cancelling with confirmation
in both languages: test_phone_booking.py.)

The words expected are looked up in the app's own catalogs for the language, and for Chinese are
checked to be Chinese, so the test follows the translations without copying them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from followup.models import Consultation
from hospital import i18n
from hospital.db import get_db
from tests.browser.conftest import LiveSite, has_horizontal_scroll, login, screenshot
from tests.browser.test_follow_up_plan import consultation_with_a_charged_scan

pytestmark = pytest.mark.browser
HAN = re.compile(r"[\u4e00-\u9fff]")


def signed_report_with_consultation(site: LiveSite) -> tuple[int, int]:
    """test_follow_up_plan's signed report with its consultation and charged scan: (report, consultation)."""
    consultation_id = consultation_with_a_charged_scan(site)
    with site.app.app_context(), get_db(site.app).transaction() as session:
        consultation = session.get(Consultation, consultation_id)
        assert consultation is not None
        return consultation.report_id, consultation_id


def words(site: LiveSite, locale: str, message: str, **values: Any) -> str:
    """`message` as the app says it in `locale`; for Chinese, checked to be Chinese."""
    with site.app.test_request_context("/"), i18n.in_locale(locale):
        said = i18n.gettext(message, **values)
    if locale == "zh_CN":
        assert HAN.search(said), f"{message!r} has no Chinese translation: {said!r}"
    return said


def overflowing(page: Any) -> list[str]:
    """The elements wider than the phone's screen, to say what made the page scroll sideways."""
    return list(page.evaluate("""() => [...document.querySelectorAll('main *')]
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
        .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)).slice(0, 8)"""))


def pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.parametrize("locale", ["en", "zh_CN"])
def test_a_patient_reads_writes_pays_and_keeps_papers_on_a_phone(browser: Any, site: LiveSite, locale: str,
                                                                 tmp_path: Path) -> None:
    report_id, consultation_id = signed_report_with_consultation(site)
    invoice = site.api("POST", "/api/invoices", site.token("admin"), {"patient_id": site.demo.patient.id})
    patient = login(browser, site, "patient", width=390, height=844)
    patient.context.set_default_timeout(15000)

    # The switch on the page (the browser asks for English).
    if locale == "zh_CN":
        patient.get_by_role("button", name="中文").click()
    expect(patient.locator("html")).to_have_attribute("lang", "zh-CN" if locale == "zh_CN" else "en")
    expect(patient.get_by_role("button", name="Sign out" if locale == "en" else words(site, locale, "Sign out"))
           ).to_be_visible()

    # The signed report, and its PDF.
    patient.goto(f"/reports/{report_id}")
    assert not has_horizontal_scroll(patient), overflowing(patient)
    screenshot(patient, f"patient-report-phone-{locale}")
    with patient.expect_download() as report_download:
        patient.locator(f"a[href^='/reports/{report_id}/report.pdf']").click()
    report_pdf = tmp_path / "report.pdf"
    report_download.value.save_as(report_pdf)
    text = pdf_text(report_pdf)
    assert words(site, locale, "Imaging report") in text and site.demo.patient.display_name in text

    # A message to the clinician.
    patient.goto(f"/consultations/{consultation_id}")
    patient.locator("#message-body").fill("Is the finding serious? 请问严重吗？")
    patient.locator("#message-form button[value='message']").click()
    expect(patient.locator(".flash")).to_have_text(words(site, locale, "Message sent."))
    expect(patient.locator("#message-thread")).to_contain_text("请问严重吗？")
    assert not has_horizontal_scroll(patient)

    # Paying: a confirmation first, then the receipt, then its PDF.
    patient.goto("/invoices")
    card = patient.locator(f"#invoice-{invoice['id']}")
    card.locator("button[type='submit']").first.click()
    due = patient.locator("#pay-heading")
    expect(due).to_have_text(re.compile("^" + re.escape(words(site, locale, "You are about to pay %(amount)s", amount="@")
                                                         ).replace("@", ".+") + "$"))
    assert not has_horizontal_scroll(patient)
    patient.locator("form button[type='submit']", has_text=re.compile(
        re.escape(words(site, locale, "Confirm: pay %(amount)s", amount="@")).replace("@", ".+"))).click()
    expect(patient).to_have_url(re.compile(rf"/invoices/{invoice['id']}/receipts/\d+$"))
    payment_id = int(patient.url.rsplit("/", 1)[1])
    expect(patient.get_by_role("heading", level=1)).to_have_text(words(site, locale, "Receipt %(number)s",
                                                                       number=payment_id))
    screenshot(patient, f"patient-receipt-phone-{locale}")
    with patient.expect_download() as receipt_download:
        patient.get_by_role("link", name=words(site, locale, "Download the receipt (PDF)")).click()
    receipt_pdf = tmp_path / "receipt.pdf"
    receipt_download.value.save_as(receipt_pdf)
    assert words(site, locale, "Receipt %(id)s", id=payment_id) in pdf_text(receipt_pdf)
    assert not has_horizontal_scroll(patient)

    # The clinician answers; the patient's menu shows it is waiting.
    clinician = login(browser, site, "clinician")
    clinician.goto(f"/consultations/{consultation_id}")
    clinician.locator("#message-body").fill("Small, we will watch it.")
    clinician.locator("#message-form button[value='message']").click()
    patient.goto("/")
    expect(patient.locator("nav .badge-count").first).to_be_visible()
