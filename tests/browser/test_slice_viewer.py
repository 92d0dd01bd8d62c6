"""The radiologist's slice viewer on the report page, in headless Chromium: scroll through the
analysed series (buttons, wheel, keys, slider), change the window, and outline a missed finding."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveSite, login, make_report_with_key_images, screenshot

pytestmark = pytest.mark.browser


def test_radiologist_scrolls_slices_and_adds_a_missed_finding(browser: Any, site: LiveSite) -> None:
    report_id = make_report_with_key_images(site)
    page = login(browser, site, "radiologist")
    page.goto(f"/reports/{report_id}")
    image = page.locator("#slice-image")
    label = page.locator("#slice-viewer .slice-label")
    expect(image).to_have_attribute("src", re.compile(r"/slices/0\.png\?window=lung$"))

    page.get_by_role("link", name="Next slice").click()
    expect(image).to_have_attribute("src", re.compile(r"/slices/1\.png"))
    expect(label).to_have_text("2 / 10")
    image.hover()
    page.mouse.wheel(0, 120)
    expect(image).to_have_attribute("src", re.compile(r"/slices/2\.png"))
    page.locator("#slice-viewer .viewer-stage").press("ArrowDown")
    expect(image).to_have_attribute("src", re.compile(r"/slices/3\.png"))
    page.get_by_role("link", name="Previous slice").click()
    expect(image).to_have_attribute("src", re.compile(r"/slices/2\.png"))
    page.locator("#slice-range").fill("5")
    expect(image).to_have_attribute("src", re.compile(r"/slices/4\.png"))
    page.get_by_role("group", name="Viewer window").get_by_role("button", name="soft tissue").click()
    expect(image).to_have_attribute("src", re.compile(r"/slices/4\.png\?window=soft_tissue$"))
    expect(image).to_have_js_property("complete", True)
    expect(image).to_have_js_property("naturalWidth", 256)
    assert page.url.endswith(f"/reports/{report_id}"), "the viewer scrolls without reloading the page"

    # Drag a rectangle: displayed pixels map to the 256 x 256 image's pixels.
    image.scroll_into_view_if_needed()
    box = image.bounding_box()
    assert box is not None
    scale = 256 / box["width"]
    page.mouse.move(box["x"] + 60 / scale, box["y"] + 70 / scale)
    page.mouse.down()
    page.mouse.move(box["x"] + 80 / scale, box["y"] + 95 / scale, steps=4)
    page.mouse.up()
    expect(page.locator("#slice-viewer .draw-box")).to_be_visible()
    values = [int(page.locator(f"#add-{name}").input_value()) for name in ("x0", "y0", "x1", "y1")]
    assert all(abs(got - want) <= 1 for got, want in zip(values, (60, 70, 80, 95), strict=True)), values
    expect(page.get_by_label("On slice")).to_have_value("5")
    screenshot(page, "radiologist-slice-viewer")
    page.get_by_role("button", name="Add finding").click()

    expect(page.locator(".flash")).to_contain_text("added on slice 5")
    added = page.locator("section.finding").filter(has_text="added by the radiologist")
    expect(added).to_have_count(1)
    expect(added).to_contain_text("Slice 5")
    expect(added.locator("img.key-image")).to_have_js_property("naturalWidth", 256)
    expect(image).to_have_attribute("src", re.compile(r"/slices/4\.png\?window=soft_tissue$"))
