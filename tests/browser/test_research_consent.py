"""A patient on a phone says yes, then no, to research use of their images, in headless Chromium;
each choice is what the FHIR Consent record says afterwards."""

from __future__ import annotations

from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from tests.browser.conftest import LiveSite, has_horizontal_scroll, login
from tests.browser.test_accessibility import audit

pytestmark = pytest.mark.browser


def test_a_patient_chooses_and_changes_their_mind_about_research(browser: Any, site: LiveSite) -> None:
    page = login(browser, site, "patient", width=375, height=800)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Research", exact=True).click()
    expect(page.locator("#consent-now")).to_contain_text("You have not chosen yet")

    page.get_by_label("Yes, my images may be used").check()
    page.get_by_role("button", name="Save my choice").click()
    expect(page.locator(".flash")).to_contain_text("Your images may now be used for research")
    expect(page.locator("#consent-now")).to_contain_text("You said yes")
    assert audit(Axe(), page, "research consent after yes") == []
    assert not has_horizontal_scroll(page)

    page.get_by_label("No, do not use my images").check()
    page.get_by_role("button", name="Save my choice").click()
    expect(page.locator(".flash")).to_contain_text("will not be used in any research dataset made from now on")
    expect(page.locator("#consent-now")).to_contain_text("You said no")

    token = site.token("patient")
    bundle = site.api("GET", f"/fhir/Consent?patient=Patient/{site.demo.patient.id}&_sort=_id", token)
    assert [e["resource"]["provision"]["type"] for e in bundle["entry"]] == ["permit", "deny"]
    assert [e["resource"]["status"] for e in bundle["entry"]] == ["inactive", "active"]
