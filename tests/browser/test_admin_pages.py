"""The administrator's pages in headless Chromium: accounts (unlock, create, the first sign-in's
password change, deactivate) and a new imaging centre set up from nothing until a patient books
its scanner and its staff see the examination on their worklist, on the centre's own clock."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from babel.dates import format_date
from playwright.sync_api import expect

from hospital import clock
from hospital.seed import DEMO_PASSWORD
from tests.browser.conftest import (
    LiveSite,
    has_horizontal_scroll,
    login,
    new_page,
    publish_docs_screenshots,
    screenshot,
)

pytestmark = pytest.mark.browser

TEMPORARY = "Temporary-pass-2026"
CHOSEN = "my-own-long-password"
LOCAL_TIME = r"CES?T"  # Berlin's zone abbreviation, winter or summer


def nav(page: Any, label: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()


def flash(page: Any) -> Any:
    return page.locator(".flash")


def sign_in(browser: Any, site: LiveSite, username: str, password: str) -> Any:
    page = new_page(browser, site)
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    return page


def choose_own_password(page: Any) -> None:
    """The first sign-in with a temporary password: held at the password page until it is changed."""
    expect(page).to_have_url(re.compile(r"/account/password$"))
    expect(page.get_by_role("navigation", name="Main").get_by_role("link")).to_have_count(0)
    page.get_by_label("Current password").fill(TEMPORARY)
    page.get_by_label("New password", exact=False).first.fill(CHOSEN)
    page.get_by_label("New password again").fill(CHOSEN)
    page.get_by_role("button", name="Change password").click()
    expect(flash(page)).to_have_text("Your password is changed.")


def create_account(admin: Any, username: str, role: str, organisation: str, names: tuple[str, str] | None = None) -> None:
    nav(admin, "Users")
    admin.get_by_role("link", name="New account").click()
    admin.get_by_label("Username").fill(username)
    admin.get_by_label("Role").select_option(role)
    if names:
        admin.get_by_label("Given name").fill(names[0])
        admin.get_by_label("Family name").fill(names[1])
    choices = admin.get_by_label("Organisation")
    choices.select_option(choices.locator("option", has_text=organisation).get_attribute("value"))
    admin.get_by_label("Temporary password").fill(TEMPORARY)
    admin.get_by_role("button", name="Create account").click()
    expect(flash(admin)).to_contain_text(f"Account {username} created")


def test_admin_unlocks_creates_and_deactivates_accounts(browser: Any, site: LiveSite) -> None:
    # Five wrong passwords lock patient2's account; the right one is then refused too.
    locked_out = new_page(browser, site)
    for _ in range(5):
        locked_out.goto("/login")
        locked_out.get_by_label("Username").fill("patient2")
        locked_out.get_by_label("Password").fill("wrong-password")
        locked_out.get_by_role("button", name="Sign in").click()
    locked_out.get_by_label("Password").fill(DEMO_PASSWORD)
    locked_out.get_by_role("button", name="Sign in").click()
    # The page says no more than for a wrong password (no hint that the username exists).
    expect(locked_out.get_by_role("alert")).to_contain_text("unknown username or wrong password")

    admin = login(browser, site, "admin")
    nav(admin, "Users")
    row = admin.locator("#users tbody tr").filter(has=admin.get_by_role("link", name="patient2", exact=True))
    expect(row.locator(".badge").first).to_have_text("locked")
    screenshot(admin, "admin-users")
    row.get_by_role("button", name="Unlock patient2").click()
    expect(flash(admin)).to_have_text("patient2 is unlocked and may sign in again.")
    expect(row.locator(".badge").first).to_have_text("active")
    locked_out.get_by_label("Password").fill(DEMO_PASSWORD)
    locked_out.get_by_role("button", name="Sign in").click()
    expect(locked_out.get_by_role("heading", level=1)).to_have_text("Welcome, Sam Okafor")  # by name, not username

    # A new radiologist: a temporary password that works for nothing but choosing their own.
    create_account(admin, "r.okafor", "radiologist", "Riverside Imaging Centre", ("Ngozi", "Okafor"))
    screenshot(admin, "admin-user-created")
    nav(admin, "Users")
    new_row = admin.locator("#users tbody tr").filter(has=admin.get_by_role("link", name="r.okafor", exact=True))
    expect(new_row).to_contain_text("Ngozi Okafor")
    expect(new_row).to_contain_text("temporary password")
    radiologist = sign_in(browser, site, "r.okafor", TEMPORARY)
    radiologist.goto("/reading")
    expect(radiologist).to_have_url(re.compile(r"/account/password$"))
    choose_own_password(radiologist)
    nav(radiologist, "Reading list")
    expect(radiologist.get_by_role("heading", level=1)).to_contain_text("Reading list")

    # Deactivated: the open session ends at the next page, and signing in is refused.
    admin.get_by_role("link", name="r.okafor", exact=True).click()
    admin.once("dialog", lambda dialog: dialog.accept())  # it asks first
    admin.get_by_role("button", name="Deactivate r.okafor").click()
    expect(flash(admin)).to_contain_text("r.okafor is deactivated")
    radiologist.reload()
    expect(radiologist).to_have_url(re.compile(r"/login"))
    again = sign_in(browser, site, "r.okafor", CHOSEN)
    expect(again.get_by_role("alert")).to_contain_text("unknown username or wrong password")


def test_a_new_centre_is_set_up_booked_and_worked_on_its_own_clock(browser: Any, site: LiveSite) -> None:
    admin = login(browser, site, "admin")
    nav(admin, "Imaging centres")
    admin.get_by_label("Name", exact=True).fill("Harbour Imaging")
    admin.get_by_label("AE title").fill("HARBOUR")
    admin.get_by_label("Time zone").fill("Europe/Berlin")
    admin.get_by_role("button", name="Create centre").click()
    expect(flash(admin)).to_contain_text("Imaging centre Harbour Imaging created")
    expect(admin.get_by_role("heading", level=1)).to_have_text("Harbour Imaging")

    scanner = admin.locator("form").filter(has=admin.get_by_role("heading", name="Add a scanner"))
    scanner.get_by_label("Name", exact=True).fill("MR scanner 1")
    scanner.get_by_label("Modality", exact=True).select_option("MR")
    scanner.get_by_label("Room").fill("Room 3")
    scanner.get_by_label("Station AE title").fill("HARBOURMR1")
    scanner.get_by_role("button", name="Add scanner").click()
    expect(flash(admin)).to_contain_text("MR scanner 1 added (MR, station AE title HARBOURMR1)")

    tomorrow = clock.local_date(clock.utcnow(), "Europe/Berlin") + timedelta(days=1)
    opening = admin.locator("form").filter(has=admin.get_by_role("button", name="Open slots"))

    def open_a_week() -> None:
        """Every day of the week after today, 08:00 to 12:00 Berlin time, an hour a slot."""
        opening.get_by_label("From").fill(tomorrow.isoformat())
        opening.get_by_label("To (inclusive)").fill((tomorrow + timedelta(days=6)).isoformat())
        for day in ("Saturday", "Sunday"):
            opening.get_by_label(day).check()
        opening.get_by_label("Opening time").fill("08:00")
        opening.get_by_label("Closing time").fill("12:00")
        opening.get_by_label("Slot length (minutes)").fill("60")
        opening.get_by_role("button", name="Open slots").click()

    open_a_week()
    expect(flash(admin)).to_have_text("28 slots opened.")
    open_a_week()  # the same week again: nothing new
    expect(flash(admin)).to_contain_text("0 slots opened. 28 skipped because the scanner already has a slot then")
    expect(admin.locator("table").filter(has_text="MR scanner 1").first).to_contain_text("28")
    screenshot(admin, "admin-centre")
    admin.set_viewport_size({"width": 375, "height": 800})
    assert not has_horizontal_scroll(admin), "the centre page scrolls sideways at phone width"
    admin.set_viewport_size({"width": 1280, "height": 900})

    create_account(admin, "harbour.tech", "imaging_staff", "Harbour Imaging")

    # The clinician can send a referral there at once.
    clinician = login(browser, site, "clinician")
    nav(clinician, "New referral")
    clinician.get_by_label("Patient", exact=True).select_option(label="Rivera, Alex (MRN-1001)")
    clinician.get_by_label("Access reason").fill("New patient at the practice")
    clinician.get_by_label("Imaging centre").select_option(label="Harbour Imaging")
    clinician.get_by_label("Modality").select_option("MR")
    clinician.get_by_label("Body part").fill("HEAD")
    clinician.get_by_label("Examination", exact=True).fill("MR brain without contrast")
    clinician.get_by_label("Reason for the examination").fill("Recurrent headaches for three months")
    clinician.get_by_role("button", name="Send referral").click()
    expect(flash(clinician)).to_contain_text("sent to Harbour Imaging")

    # Its new technologist: own password first, then the referral to accept.
    staff = sign_in(browser, site, "harbour.tech", TEMPORARY)
    choose_own_password(staff)
    nav(staff, "Referrals to accept")
    staff.get_by_role("button", name=re.compile(r"^Accept referral")).click()
    expect(flash(staff)).to_contain_text("accepted: accession")

    # The patient books it: the slots read on the centre's clock, 08:00 to 11:00.
    patient = login(browser, site, "patient")
    nav(patient, "Appointments")
    offers = patient.locator("form[id^='book-form-'] .slot-chip")
    expect(offers).to_have_count(28)
    days = patient.locator("form[id^='book-form-'] .slot-day h3")
    expect(days).to_have_count(7)  # grouped by the day they fall on in Berlin
    expect(days.first).to_have_text(format_date(tomorrow, "full", locale="en"))
    expect(offers.first).to_have_text("08:00")
    offers.first.click()
    patient.get_by_role("button", name="Book the chosen time").click()
    expect(flash(patient)).to_contain_text("Appointment booked")
    expect(patient.locator("#appointments")).to_contain_text(re.compile(rf"08:00 {LOCAL_TIME}"))

    # On the technologist's worklist for that local day, at 08:00 in Room 3 on station HARBOURMR1.
    staff.goto(f"/worklist?date={tomorrow.isoformat()}")
    row = staff.locator("#worklist tbody tr").first
    expect(row.locator("td[data-label=Time]")).to_have_text(re.compile(rf"^08:00 {LOCAL_TIME}$"))
    expect(row).to_contain_text("Room 3 / HARBOURMR1")
    expect(row).to_contain_text("MR brain without contrast")
    screenshot(staff, "staff-worklist-new-centre")
    publish_docs_screenshots({"admin-centre": "admin-centre"})
