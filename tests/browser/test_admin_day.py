"""The administrator's day in headless Chromium, at desktop and at phone width: revenue for a
period and its CSV in major units, a price changed in place as a German keyboard types it
("165,00"), a patient account linked to a record found by name, a clinician whose time zone comes
from the picker, and the audit log paged past its first page and exported; the filters' boxes do
not overlap and nothing scrolls sideways; every changed page passes the axe-core audit."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from billing.service import AI_ANALYSIS_CODE, BillableEvent, charge, scan_code
from hospital.db import get_db
from hospital.models import Patient
from tests.browser.conftest import TIMEOUT_MS, LiveSite, has_horizontal_scroll, login, screenshot
from tests.browser.test_accessibility import audit

pytestmark = pytest.mark.browser

TEMPORARY = "Temporary-pass-2026"
WIDTHS = {"desktop": 1280, "phone": 390}


def nav(page: Any, label: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()


def flash(page: Any) -> Any:
    return page.locator(".flash")


def prepare(site: LiveSite) -> None:
    """A CT in January and an AI analysis in February 2030, and a patient record with no account."""
    with site.app.app_context(), get_db(site.app).transaction() as session:
        demo = site.demo
        charge(session, BillableEvent("day:ct", demo.patient.id, scan_code("CT"), demo.imaging_centre.id,
                                      "ImagingStudy/day-ct", datetime(2030, 1, 20, 9, 0, tzinfo=UTC)))
        charge(session, BillableEvent("day:ai", demo.patient.id, AI_ANALYSIS_CODE, None, "DiagnosticReport/day-ai",
                                      datetime(2030, 2, 10, 9, 0, tzinfo=UTC), ai_attributed=True))
        session.add(Patient(mrn="MRN-7007", family_name="Nakamura", given_name="Kei"))


def admin_page(browser: Any, site: LiveSite, width: int) -> Any:
    """The admin, signed in, in a browser that reads German first (Accept-Language: de-DE)."""
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=site.base_url, locale="de-DE",
                                  accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("demo-password-1")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(site.url("/"))
    page.on("dialog", lambda dialog: dialog.accept())  # irreversible actions ask first; the admin agrees
    return page


def downloaded_csv(page: Any, link: Any) -> list[dict[str, str]]:
    with page.expect_download() as info:
        link.click()
    return list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))


def boxes_overlap(page: Any, form: str) -> list[str]:
    """Pairs of the form's fields whose boxes overlap on screen."""
    boxes = page.locator(f"{form} input:not([type=hidden]), {form} select, {form} button").evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect(); return [e.name || e.textContent, r.left, r.top, r.right, r.bottom]; })")
    overlaps = []
    for i, (name_a, *a) in enumerate(boxes):
        for name_b, *b in boxes[i + 1:]:
            if a[0] < b[2] - 1 and b[0] < a[2] - 1 and a[1] < b[3] - 1 and b[1] < a[3] - 1:
                overlaps.append(f"{name_a} / {name_b}")
    return overlaps


def revenue_for_february(page: Any, width_name: str) -> None:
    nav(page, "Revenue")
    page.get_by_label("From").fill("2030-02-28")
    page.get_by_label("To", exact=False).fill("2030-02-01")
    page.get_by_role("button", name="Show revenue").click()
    expect(page.get_by_role("alert")).to_have_text("The “to” date is before the “from” date.")
    page.get_by_label("From").fill("2030-02-01")
    page.get_by_label("To", exact=False).fill("2030-02-28")
    page.get_by_role("button", name="Show revenue").click()
    section = page.locator("#revenue-service_line")
    expect(section).to_contain_text("€25.00")
    expect(section).not_to_contain_text("€150.00")  # January's CT is outside the period
    expect(section).to_contain_text("Of which AI-enabled")
    rows = downloaded_csv(page, section.get_by_role("link", name="Download CSV of revenue by service line"))
    assert rows == [{"service_line": "ai-analysis", "currency": "EUR", "charges": "1", "total": "25.00",
                     "ai_enabled": "25.00"}]
    assert not boxes_overlap(page, "#revenue-range")
    screenshot(page, f"admin-revenue-range-{width_name}")


def change_the_ct_price(page: Any, width_name: str, typed: str, shown: str) -> None:
    nav(page, "Price catalog")
    row = page.locator("#catalog tbody tr").filter(has_text="CT examination (Riverside tariff)").filter(
        has=page.get_by_text("Change price"))
    row.get_by_text("Change price").click()
    row.get_by_label("New price in EUR").fill("-1,00")
    row.get_by_role("button", name="Save new price").click()
    expect(flash(page)).to_contain_text("cannot be negative")
    row = page.locator("#catalog tbody tr").filter(has=page.locator("details[open]"))
    expect(row.get_by_label("New price in EUR")).to_have_value("-1,00")  # kept as typed
    row.get_by_label("New price in EUR").fill(typed)
    row.get_by_label("From", exact=False).fill("2031-01-01" if width_name == "desktop" else "2032-01-01")
    row.get_by_role("button", name="Save new price").click()
    expect(flash(page)).to_contain_text(f"CT examination (Riverside tariff): €{shown} from")
    expect(page.locator("#catalog")).to_contain_text(f"€{shown}")
    screenshot(page, f"admin-price-changed-{width_name}")


def create_patient_account_by_search(page: Any) -> None:
    nav(page, "Users")
    page.get_by_role("link", name="New account").click()
    expect(page.get_by_label("Find the patient")).to_be_hidden()  # no role chosen: no role's fields
    page.get_by_label("Username").fill("kei.nakamura")
    page.get_by_label("Role").select_option("patient")
    expect(page.get_by_label("Given name")).to_be_hidden()
    expect(page.get_by_label("Organisation")).to_be_hidden()
    page.get_by_label("Find the patient").fill("nakam")
    page.get_by_label("Find the patient").press("Enter")
    choice = page.get_by_role("radio", name=re.compile("Kei Nakamura"))
    expect(choice).to_be_checked()  # the one match is chosen
    expect(page.get_by_label("Username")).to_have_value("kei.nakamura")  # the form kept what was typed
    page.get_by_label("Temporary password").fill(TEMPORARY)
    page.get_by_role("button", name="Create account").click()
    expect(flash(page)).to_contain_text("Account kei.nakamura created as a patient")
    expect(page.locator("#account-summary")).to_contain_text("MRN-7007")


def create_clinician_with_zone(page: Any, site: LiveSite) -> None:
    nav(page, "Users")
    page.get_by_role("link", name="New account").click()
    page.get_by_label("Username").fill("g.hopper")
    page.get_by_label("Role").select_option("clinician")
    expect(page.get_by_label("Find the patient")).to_be_hidden()
    page.get_by_label("Given name").fill("Grace")
    page.get_by_label("Family name").fill("Hopper")
    organisations = page.get_by_label("Organisation")
    expect(organisations.locator("option:not([hidden])")).to_have_text(["none", "Hillside Family Practice (clinic)"])
    organisations.select_option(label="Hillside Family Practice (clinic)")
    zone = page.get_by_label("Time zone")
    assert zone.get_attribute("list") == "zones"
    assert page.locator("#zones option[value='Europe/Berlin']").count() == 1
    zone.fill("Berlin time")
    page.get_by_label("Temporary password").fill(TEMPORARY)
    page.get_by_role("button", name="Create account").click()
    expect(flash(page)).to_contain_text("'Berlin time' is not an IANA time zone")
    page.get_by_label("Time zone").fill("Europe/Berlin")
    page.get_by_label("Temporary password").fill(TEMPORARY)
    page.get_by_role("button", name="Create account").click()
    expect(flash(page)).to_contain_text("Account g.hopper created as a clinician")
    expect(page.locator("#account-summary")).to_contain_text("Europe/Berlin")


def audit_pages_and_export(page: Any, width_name: str) -> None:
    nav(page, "Audit log")
    page.get_by_label("User", exact=False).fill("admin")
    page.get_by_role("button", name="Search").click()
    first = page.locator("#audit tbody tr").all_inner_texts()
    assert len(first) == 5
    page.get_by_role("link", name="Older").click()
    expect(page).to_have_url(re.compile(r"before=\d+"))
    older = page.locator("#audit tbody tr").all_inner_texts()
    assert older and not set(older) & set(first)
    rows = downloaded_csv(page, page.get_by_role("link", name="Export these rows as CSV"))
    assert len(rows) > 10 and {r["user"] for r in rows} == {"admin"}
    assert [int(r["id"]) for r in rows] == sorted((int(r["id"]) for r in rows), reverse=True)
    assert not boxes_overlap(page, "form.filters"), f"audit filters overlap at {width_name}"
    screenshot(page, f"admin-audit-{width_name}")


def test_the_administrators_day_at_desktop_and_phone_width(
    browser: Any, site: LiveSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hospital.admin_pages.MAX_ROWS", 5)  # the server runs in this process
    prepare(site)
    desktop = admin_page(browser, site, WIDTHS["desktop"])
    revenue_for_february(desktop, "desktop")
    change_the_ct_price(desktop, "desktop", "165,00", "165.00")
    create_patient_account_by_search(desktop)
    create_clinician_with_zone(desktop, site)
    audit_pages_and_export(desktop, "desktop")

    phone = admin_page(browser, site, WIDTHS["phone"])
    revenue_for_february(phone, "phone")
    assert not has_horizontal_scroll(phone)
    change_the_ct_price(phone, "phone", "170.00", "170.00")  # a dot reads as well for a German reader
    assert not has_horizontal_scroll(phone)
    audit_pages_and_export(phone, "phone")
    assert not has_horizontal_scroll(phone)

    # The pages this day touched pass the WCAG 2.1 AA audit at both widths, filled in.
    axe = Axe()
    problems: list[str] = []
    for path in ("/admin/revenue?from=2030-02-01&to=2030-02-28", "/admin/revenue?from=2030-02-28&to=2030-02-01",
                 "/admin/catalog", "/admin/users/new", "/admin/users/new?role=clinician",
                 "/admin/users/new?role=patient&step=find_patient&patient_query=a", "/admin/audit?user=admin",
                 "/admin/billing"):
        desktop.goto(path)
        desktop.locator("details").evaluate_all("els => els.forEach(e => e.open = true)")
        for width_name, width in WIDTHS.items():
            desktop.set_viewport_size({"width": width, "height": 900})
            problems += audit(axe, desktop, f"{path} ({width_name})")
            if width_name == "phone" and has_horizontal_scroll(desktop):
                problems.append(f"{path}: scrolls sideways at phone width")
    assert not problems, "\n".join(problems)


def test_the_account_form_works_without_a_script(browser: Any, site: LiveSite) -> None:
    prepare(site)
    context = browser.new_context(viewport={"width": 390, "height": 900}, base_url=site.base_url,
                                  java_script_enabled=False)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("demo-password-1")
    page.get_by_role("button", name="Sign in").click()
    page.goto("/admin/users/new")
    page.get_by_label("Username").fill("kei.n")
    page.get_by_label("Role").select_option("patient")
    expect(page.get_by_label("Find the patient")).to_be_hidden()
    page.get_by_role("button", name="Show the fields for this role").click()
    page.get_by_label("Find the patient").fill("Nakamura")
    page.get_by_role("button", name="Search patients").click()
    expect(page.get_by_role("radio", name=re.compile("Kei Nakamura"))).to_be_checked()
    expect(page.get_by_label("Given name")).to_be_hidden()
    page.get_by_label("Temporary password").fill(TEMPORARY)
    page.get_by_role("button", name="Create account").click()
    expect(flash(page)).to_contain_text("Account kei.n created as a patient")
    assert not has_horizontal_scroll(page)

    # An irreversible action without a script to ask in a dialog: the server asks on a page of its
    # own, and the account is deactivated only once that page's button is pressed.
    page.goto("/admin/users")
    page.get_by_role("link", name="kei.n", exact=True).click()
    page.get_by_role("button", name="Deactivate kei.n").click()
    expect(page.get_by_role("heading", name="Please confirm")).to_be_visible()
    expect(page.locator("#question")).to_contain_text("Deactivate kei.n? They are signed out everywhere")
    page.get_by_role("link", name="No, go back").click()
    expect(page.get_by_role("button", name="Deactivate kei.n")).to_be_visible()  # nothing changed
    page.get_by_role("button", name="Deactivate kei.n").click()
    page.get_by_role("button", name="Yes, deactivate kei.n").click()
    expect(flash(page)).to_contain_text("kei.n is deactivated")
    expect(page.get_by_role("button", name="Reactivate kei.n")).to_be_visible()


def test_the_servers_own_question_passes_the_audit(browser: Any, site: LiveSite) -> None:
    page = login(browser, site, "admin", width=390)
    page.goto(f"/admin/users/{site.demo.users['clinician'].id}")
    page.locator("#deactivate").evaluate("form => form.removeAttribute('data-confirm')")  # as if no script ran
    page.get_by_role("button", name="Deactivate clinician").click()
    expect(page.get_by_role("heading", name="Please confirm")).to_be_visible()
    assert audit(Axe(), page, "confirmation page") == []
    assert not has_horizontal_scroll(page)
