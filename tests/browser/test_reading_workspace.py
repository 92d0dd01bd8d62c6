"""The radiologist's day in the reading workspace (issue 16), in headless Chromium at desktop and
phone width: the reading list in clinical order, a report read with its clinical question and a
prior side by side (synchronised scrolling), zoom, pan and window/level by drag, a distance
measured in mm, a finding's box dragged, signing through a preview and a confirmation, then an
addendum. Every new page passes the axe-core audit."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from ai_services.models import DiagnosticReport, ReportStatus, ReviewStatus
from hospital.db import get_db
from referrals.models import Priority, Referral
from tests.browser.conftest import ROOT, LiveSite, has_horizontal_scroll, login, make_report_with_key_images, screenshot
from tests.browser.test_accessibility import audit

pytestmark = pytest.mark.browser


def _set_referral(site: LiveSite, report_id: int, priority: Priority, procedure: str, reason: str) -> None:
    with site.app.app_context(), get_db(site.app).transaction() as session:
        report = session.get(DiagnosticReport, report_id)
        assert report is not None
        referral = session.get(Referral, report.referral_id)
        assert referral is not None
        referral.priority, referral.procedure_description, referral.reason = priority, procedure, reason


def _make_prior(site: LiveSite) -> int:
    """A signed report of the same patient, 180 days older."""
    prior_id = make_report_with_key_images(site)
    with site.app.app_context(), get_db(site.app).transaction() as session:
        report = session.get(DiagnosticReport, prior_id)
        assert report is not None
        for finding in report.findings:
            finding.review_status = ReviewStatus.ACCEPTED
        report.status = ReportStatus.FINAL
        report.conclusion = "Two small nodules; follow-up CT in six months."
        report.issued_at = report.issued_at - timedelta(days=180)
    return prior_id


def drag(page: Any, locator: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag between two points given as fractions of `locator`'s box."""
    box = locator.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1])
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1], steps=6)
    page.mouse.up()


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_radiologists_day_in_the_reading_workspace(browser: Any, site: LiveSite, width: int) -> None:
    desktop = width >= 1000
    prior_id = _make_prior(site)
    routine_id = make_report_with_key_images(site)
    _set_referral(site, routine_id, Priority.ROUTINE, "CT chest screening", "Smoker, screening")
    stat_id = make_report_with_key_images(site)
    _set_referral(site, stat_id, Priority.STAT, "CT chest follow-up", "Known nodules: growth?")
    axe = Axe()
    problems: list[str] = []
    page = login(browser, site, "radiologist", width=width, height=900)

    # The reading list: the stat order first though the AI finds the same in both, with its examination.
    page.goto("/reading")
    rows = page.locator("#reading-list tbody tr")
    expect(rows.nth(0)).to_contain_text(f"Report {stat_id}")
    expect(rows.nth(0)).to_contain_text("stat")
    expect(rows.nth(0)).to_contain_text("CT chest follow-up")
    expect(rows.nth(1)).to_contain_text(f"Report {routine_id}")
    problems += audit(axe, page, "reading list")
    page.get_by_role("link", name=f"Report {stat_id}", exact=True).click()

    # The clinical question, the priority and the prior, compared side by side.
    expect(page.locator("#clinical-question")).to_have_text("Known nodules: growth?")
    expect(page.locator(".reading-context")).to_contain_text("stat")
    priors = page.get_by_role("region", name="Prior reports of this patient")
    expect(priors.get_by_role("link", name=f"Report {prior_id}", exact=True)).to_be_visible()
    priors.get_by_role("link", name=f"Compare side by side with report {prior_id}").click()
    prior_image = page.locator("#prior-image")
    expect(prior_image).to_have_attribute("src", re.compile(rf"/reports/{prior_id}/slices/0\.png"))
    expect(page.locator("#slice-viewer .viewer-tools")).to_be_visible()  # the viewers' script has run
    page.locator("#slice-viewer .viewer-stage").press("ArrowDown")
    expect(prior_image).to_have_attribute("src", re.compile(rf"/reports/{prior_id}/slices/1\.png")), "the prior follows"
    page.locator("#slice-viewer .viewer-stage").press("ArrowUp")

    # Findings beside the viewer on a desktop, below it on a phone; nothing scrolls sideways.
    viewer_box = page.locator("#slice-viewer").bounding_box()
    finding_box = page.locator("section.finding").first.bounding_box()
    assert viewer_box and finding_box
    if desktop:
        assert finding_box["x"] >= viewer_box["x"] + viewer_box["width"], "findings sit beside the viewer"
        assert finding_box["y"] < viewer_box["y"] + viewer_box["height"], "...not under it"
    else:
        assert finding_box["y"] >= viewer_box["y"] + viewer_box["height"] - 1
        assert not has_horizontal_scroll(page)
    problems += audit(axe, page, "reading workspace with a prior")

    image = page.locator("#slice-image")
    canvas = page.locator("#slice-viewer .viewer-canvas")
    stage = page.locator("#slice-viewer .viewer-stage")
    readout = page.locator("#viewer-readout")
    tools = page.get_by_role("toolbar", name="Viewer tools")
    expect(image).to_have_js_property("naturalWidth", 256)

    # Zoom, then pan by drag.
    tools.get_by_role("button", name="Zoom in").click()
    tools.get_by_role("button", name="Zoom in").click()
    expect(canvas).to_have_attribute("style", re.compile(r"scale\(1\.5625\)"))
    tools.get_by_role("button", name="Pan").click()
    expect(tools.get_by_role("button", name="Pan")).to_have_attribute("aria-pressed", "true")
    before = canvas.get_attribute("style")
    drag(page, stage, (0.6, 0.6), (0.4, 0.45))
    assert canvas.get_attribute("style") != before, "the drag panned the image"
    tools.get_by_role("button", name="Reset view").click()
    expect(canvas).not_to_have_attribute("style", re.compile("scale"))

    # Free window/level by drag: the slice is rendered in the new window.
    tools.get_by_role("button", name="Window/level").click()
    drag(page, stage, (0.5, 0.5), (0.3, 0.6))
    expect(image).to_have_attribute("src", re.compile(r"wc=-?\d+&ww=\d+$"))
    expect(readout).to_contain_text("Window: centre")
    expect(image).to_have_js_property("naturalWidth", 256)

    # Measure 128 pixel columns (half the 256-pixel width): mm from the series' pixel spacing.
    tools.get_by_role("button", name="Measure").click()
    drag(page, image, (0.25, 0.5), (0.75, 0.5))
    column_mm = float(str(page.locator("#slice-viewer").get_attribute("data-pixel-spacing")).split(",")[1])
    measured = float(re.search(r"Distance: ([\d.]+) mm", readout.inner_text()).group(1))  # type: ignore[union-attr]
    assert abs(measured - 128 * column_mm) <= 2 * column_mm, (measured, column_mm)
    if desktop:
        screenshot(page, "reading-workspace")
        if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
            # The docs show what a reader sees on opening: the top of the page, the viewport only.
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(ROOT / "docs" / "reading-workspace.png"))

    # Drag the first finding's box 16 pixels right: its own edit form is posted.
    first, second = page.locator("section.finding").evaluate_all("els => els.map(e => e.dataset.findingId)")
    x0_before = int(page.locator(f"#x0-{first}").input_value())
    tools.get_by_role("button", name="Move box").click()
    moving = page.locator(f'.finding-box[data-finding-id="{first}"]')
    expect(moving).to_be_visible()
    image_box = image.bounding_box()
    assert image_box is not None
    drag(page, moving, (0.5, 0.5), (0.5 + 16 / 256 * image_box["width"] / moving.bounding_box()["width"], 0.5))
    expect(page.locator(".flash")).to_have_text(f"Finding {first} edited.")
    assert abs(int(page.locator(f"#x0-{first}").input_value()) - (x0_before + 16)) <= 1
    expect(page.locator(f"#finding-{first}")).to_contain_text("edited")

    # Sign: a preview of what will be signed, then the explicit confirmation.
    page.get_by_role("button", name=f"Accept finding {second}").click()
    expect(page.locator(".flash")).to_have_text(f"Finding {second} accepted.")
    page.get_by_label("Conclusion").fill("Two nodules, unchanged from the prior.")
    page.get_by_role("button", name="Sign report").click()
    expect(page.locator("#preview-conclusion")).to_have_text("Two nodules, unchanged from the prior.")
    expect(page.locator(".sign-preview")).to_contain_text(f"Finding {first}")
    problems += audit(axe, page, "sign preview")
    page.get_by_role("button", name="Confirm and sign").click()
    expect(page.locator(".flash")).to_contain_text("Report signed")
    expect(page.get_by_role("heading", level=1).locator(".badge")).to_have_text("Signed")

    # An addendum: the report is amended, the signed conclusion stays.
    page.get_by_label("Addendum", exact=True).fill("On review the second nodule is calcified: benign.")
    page.get_by_role("button", name="Add addendum").click()
    expect(page.locator(".flash")).to_contain_text("amended")
    expect(page.get_by_role("heading", level=1).locator(".badge")).to_have_text("Signed, amended")
    expect(page.locator("#addenda")).to_contain_text("calcified: benign")
    expect(page.locator(".report-text")).to_contain_text("Two nodules, unchanged from the prior.")
    problems += audit(axe, page, "amended report")
    if not desktop:
        assert not has_horizontal_scroll(page)
    page.context.close()
    assert not problems, "\n".join(problems)
