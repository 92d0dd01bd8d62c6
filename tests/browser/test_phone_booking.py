"""A patient books, moves and cancels a scan on a phone (390 x 844), once in English and once in
Chinese (chosen with the switch on the page): times picked from a calendar on the centre's clock,
nothing chosen for them, where to go and how to prepare shown with the booking, and moving and
cancelling each confirmed in a dialog before anything changes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import LiveSite, accepted_referral, has_horizontal_scroll, login, screenshot

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

WORDS = {
    "en": {
        "menu": "Appointments", "book": "Book the chosen time", "booked": "You are booked", "status": "Booked",
        "address": "12 Riverside Road", "preparation": "do not eat for 4 hours", "map": "Open the map",
        "change": "Change the time", "move": "Move to the chosen time", "moved": "Appointment moved to",
        "cancel": "Cancel the appointment", "cancelled": "Appointment cancelled", "cancelled_status": "Cancelled",
        "move_question": "Move your appointment", "cancel_question": "Cancel your CT chest without contrast on",
    },
    "zh_CN": {
        "menu": "预约", "book": "预约所选时间", "booked": "预约成功", "status": "已预约",
        "address": "滨江路12号", "preparation": "检查前4小时禁食", "map": "打开地图",
        "change": "更改时间", "move": "改到所选时间", "moved": "预约已改到",
        "cancel": "取消预约", "cancelled": "预约已取消", "cancelled_status": "已取消",
        "move_question": "确定将预约改到您选择的时间吗", "cancel_question": "确定取消",
    },
}


def free_ct_slot_ids(site: LiveSite) -> set[int]:
    slots = site.api("GET", f"/api/slots?organization_id={site.demo.imaging_centre.id}&modality=CT",
                     site.token("patient"))
    return {int(s["id"]) for s in slots}


@pytest.mark.parametrize("language", ["en", "zh_CN"])
def test_patient_books_moves_and_cancels_on_a_phone(browser: Any, site: LiveSite, language: str) -> None:
    words = WORDS[language]
    accepted_referral(site, "Repeat scan of a lung nodule")
    patient = login(browser, site, "patient", width=390, height=844)
    patient.goto("/appointments")
    if language == "zh_CN":
        patient.get_by_role("button", name="中文").click()
        expect(patient.locator("html")).to_have_attribute("lang", "zh-CN")
    patient.get_by_role("navigation").get_by_role("link", name=words["menu"], exact=True).click()

    # Booking: the centre's address, map and preparation above the calendar; no time chosen yet.
    booking = patient.locator("form[id^='book-form-']")
    section = patient.locator("section").filter(has=booking)
    expect(section).to_contain_text(words["address"])
    expect(section).to_contain_text(words["preparation"])
    expect(section.get_by_role("link", name=words["map"])).to_have_attribute("href", "https://www.openstreetmap.org/?mlat=31.2304&mlon=121.4737#map=17/31.2304/121.4737")
    expect(booking.locator("select")).to_have_count(0)
    expect(booking.locator("input[type=radio]:checked")).to_have_count(0)
    expect(booking.locator("details[open] h3")).to_have_count(1)  # the first day's times are open
    assert not has_horizontal_scroll(patient)
    screenshot(patient, f"patient-phone-booking-{language}")
    first_chip = booking.locator(".slot-chip").first
    first_slot_id = int(first_chip.locator("input").get_attribute("value"))
    first_time = first_chip.inner_text().strip()
    first_chip.click()
    expect(first_chip.locator("input")).to_be_checked()
    booking.get_by_role("button", name=words["book"]).click()

    done = patient.locator("#done")
    expect(done).to_contain_text(words["booked"])
    expect(done).to_contain_text(first_time)
    expect(done).to_contain_text(words["address"])
    expect(done).to_contain_text(words["preparation"])
    assert first_slot_id not in free_ct_slot_ids(site)
    card = patient.locator("#appointments > li").first
    expect(card.locator(".badge")).to_have_text(words["status"])
    assert not has_horizontal_scroll(patient)
    screenshot(patient, f"patient-phone-booked-{language}")

    # Move: a dialog asks first; the old time is free again and the new one taken.
    # The patient opens another day (late in the day the first one may hold a single time) and taps
    # a time there: only the first day's times are shown until a day is opened.
    card.get_by_text(words["change"]).click()
    other_day = card.locator("details.slot-day").nth(1)
    new_chip = other_day.locator(".slot-chip").nth(2)
    expect(new_chip).to_be_hidden()
    other_day.locator("summary").click()
    new_slot_id = int(new_chip.locator("input").get_attribute("value"))
    new_chip.click()
    asked: list[str] = []

    def agree(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    patient.once("dialog", agree)
    card.get_by_role("button", name=words["move"]).click()
    expect(patient.locator(".flash")).to_contain_text(words["moved"])
    assert asked and asked[0].startswith(words["move_question"]), asked
    free = free_ct_slot_ids(site)
    assert first_slot_id in free, "the time left behind is offered again"
    assert new_slot_id not in free, "the new time is taken"

    # Cancel: a dialog asks first, naming the examination.
    card = patient.locator("#appointments > li").first
    patient.once("dialog", agree)
    card.get_by_role("button", name=words["cancel"]).click()
    expect(patient.locator(".flash")).to_contain_text(words["cancelled"])
    assert len(asked) == 2 and asked[1].startswith(words["cancel_question"]), asked
    expect(patient.locator("#appointments > li").first.locator(".badge")).to_have_text(words["cancelled_status"])
    assert [a["status"] for a in site.api("GET", "/api/appointments", site.token("patient"))] == ["cancelled"]
    assert new_slot_id in free_ct_slot_ids(site)
    assert not has_horizontal_scroll(patient)
    screenshot(patient, f"patient-phone-cancelled-{language}")
