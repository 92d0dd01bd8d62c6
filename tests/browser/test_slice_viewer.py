"""The radiologist's slice viewer on the report page, in headless Chromium: scroll through the
analysed series (buttons, wheel, keys, slider), change the window, outline a missed finding, and
keep the slice across the page's window links, decisions on findings and a reload."""

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
    page.evaluate("window.loadedOnce = true")  # gone if anything below reloads the page
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
    assert page.evaluate("window.loadedOnce === true"), "the viewer scrolls without reloading the page"
    assert page.url.endswith(f"/reports/{report_id}?window=soft_tissue&slice=5"), "the address bar follows the viewer"

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


def test_window_links_decisions_and_reload_keep_the_current_slice(browser: Any, site: LiveSite) -> None:
    report_id = make_report_with_key_images(site)
    page = login(browser, site, "radiologist")
    page.goto(f"/reports/{report_id}")
    image = page.locator("#slice-image")
    label = page.locator("#slice-viewer .slice-label")
    page.locator("#slice-range").fill("7")
    expect(label).to_have_text("7 / 10")

    presets = page.get_by_role("navigation", name="Window presets")
    expect(presets.get_by_role("link", name="bone")).to_have_attribute("href", re.compile(r"window=bone&slice=7$"))
    presets.get_by_role("link", name="bone").click()
    page.wait_for_url(re.compile(r"window=bone&slice=7"))
    expect(label).to_have_text("7 / 10")
    expect(image).to_have_attribute("src", re.compile(r"/slices/6\.png\?window=bone$"))
    expect(presets.get_by_role("link", name="bone")).to_have_attribute("aria-current", "true")

    # A window chosen in the viewer moves the page's window links and the key images along.
    page.get_by_role("group", name="Viewer window").get_by_role("button", name="soft tissue").click()
    expect(presets.get_by_role("link", name="soft tissue")).to_have_attribute("aria-current", "true")
    expect(presets.get_by_role("link", name="bone")).not_to_have_attribute("aria-current", "true")
    expect(page.locator("img.key-image").first).to_have_attribute("src", re.compile(r"window=soft_tissue"))

    page.locator("#slice-viewer .viewer-stage").press("ArrowUp")
    expect(label).to_have_text("6 / 10")
    page.get_by_role("button", name=re.compile(r"^Accept finding")).first.click()
    expect(page.locator(".flash")).to_contain_text("accepted")
    expect(label).to_have_text("6 / 10")
    expect(image).to_have_attribute("src", re.compile(r"/slices/5\.png\?window=soft_tissue$"))

    page.reload()
    expect(label).to_have_text("6 / 10")
    expect(image).to_have_attribute("src", re.compile(r"/slices/5\.png\?window=soft_tissue$"))
