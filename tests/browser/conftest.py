"""Browser-test fixtures: the real app served over HTTP from a thread, on the run's database
(really committed, emptied afterwards), driven by headless Chromium through Playwright.

Chromium is Debian's (`/usr/bin/chromium`); Playwright's own download is not used. Screenshots
of each main page go to `artifacts/screenshots/` for a human to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from werkzeug.serving import make_server

from hospital.db import get_db
from hospital.jobs import publish
from hospital.seed import DEMO_PASSWORD, DemoSeed, seed_demo
from synthetic.phantoms import make_ct_phantom
from tests.conftest import make_test_app
from tests.factories import analysis_completed, make_preliminary_report, store_report_slices

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CHROMIUM_EXECUTABLE", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
# Generous for a cold page, short enough that a broken page fails fast.
TIMEOUT_MS = 8000


@dataclass
class LiveSite:
    app: Flask
    base_url: str
    demo: DemoSeed

    def url(self, path: str) -> str:
        return self.base_url + path

    def api(self, method: str, path: str, token: str | None = None, body: dict[str, Any] | None = None) -> Any:
        """A JSON API call (bearer token, so no cookie and no CSRF token)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - our own local server
            return json.loads(response.read() or b"null")

    def token(self, username: str) -> str:
        return str(self.api("POST", "/api/auth/token", body={"username": username, "password": DEMO_PASSWORD})["access_token"])


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright_sync.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def served(app: Flask) -> Iterator[LiveSite]:
    """`app`, seeded with the demo, served over HTTP from a thread until the block ends."""
    with app.app_context(), get_db(app).transaction() as session:
        demo = seed_demo(session, app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LiveSite(app, f"http://127.0.0.1:{server.server_port}", demo)
    finally:
        server.shutdown()
        thread.join(5)
        get_db(app).engine.dispose()


@pytest.fixture()
def site(live_database: str, tmp_path: Path) -> Iterator[LiveSite]:
    """The site with jobs run inline: the pages' own behaviour, without worker processes."""
    with served(make_test_app(live_database, tmp_path)) as live:
        yield live


def accepted_referral(site: LiveSite, reason: str, priority: str = "routine") -> dict[str, Any]:
    """A CT chest referral for the demo patient, sent by the clinician and accepted by the centre
    through the JSON API (the pages that do this have their own tests); returns it accepted."""
    demo = site.demo
    referral = site.api("POST", "/api/referrals", site.token("clinician"), {
        "patient_id": demo.patient.id, "performer_organization_id": demo.imaging_centre.id, "modality": "CT",
        "body_part": "CHEST", "procedure_description": "CT chest without contrast", "reason": reason, "access_reason": "new patient referred to me",
        "priority": priority,
    })
    return dict(site.api("POST", f"/api/referrals/{referral['id']}/accept", site.token("imaging_staff")))


def booked_appointment(site: LiveSite, referral: dict[str, Any]) -> dict[str, Any]:
    """The patient books the first free CT slot for `referral`; returns the appointment."""
    token = site.token("patient")
    slots = site.api("GET", f"/api/slots?organization_id={site.demo.imaging_centre.id}&modality=CT", token)
    return dict(site.api("POST", "/api/appointments", token, {"referral_id": referral["id"], "slot_id": slots[0]["id"]}))


def new_page(browser: Any, site: LiveSite, *, width: int = 1280, height: int = 900) -> Any:
    context = browser.new_context(viewport={"width": width, "height": height}, base_url=site.base_url)
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


def login(browser: Any, site: LiveSite, username: str, **viewport: int) -> Any:
    """A fresh browser context signed in through the login form."""
    page = new_page(browser, site, **viewport)
    page.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(site.url("/"))
    return page


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def has_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth > window.innerWidth"))


def make_report_with_key_images(site: LiveSite) -> int:
    """A preliminary AI report on `demo.patient` with two findings over real DICOM slices of a
    synthetic chest CT (so the key images render), its AI charge priced; returns the report id."""
    phantom = make_ct_phantom(3, n_slices=10, size=256, n_lesions=2)
    lesions = sorted(phantom.lesions, key=lambda lesion: -lesion.diameter_mm)[:2]
    boxes = []
    for lesion in lesions:
        _, y, x = lesion.centre_zyx
        radius = max(3, int(lesion.diameter_mm / phantom.pixel_spacing_mm / 2) + 2)
        boxes.append((int(x) - radius, int(y) - radius, int(x) + radius, int(y) + radius))
    # Finding n lies on slice n: put each lesion's slice first.
    order = [round(lesion.centre_zyx[0]) for lesion in lesions] + list(range(phantom.shape[0] - len(lesions)))
    volume = np.stack([phantom.volume_hu[z] for z in order])
    storage = Path(site.app.config["DICOM_STORAGE_DIR"])
    with site.app.app_context(), get_db(site.app).transaction() as session:
        demo = site.demo
        report = make_preliminary_report(session, demo, boxes)
        store_report_slices(session, storage, report, volume, pixel_spacing_mm=phantom.pixel_spacing_mm,
                            slice_thickness_mm=phantom.slice_thickness_mm)
        # What the analysis job would have announced: the AI analysis is billed.
        publish(session, analysis_completed(session, report))
        report_id = report.id
    return report_id


def publish_docs_screenshots(names: dict[str, str]) -> None:
    """Copy chosen screenshots into docs/screenshots for the README (only when asked: it is tracked)."""
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") != "1":
        return
    target = ROOT / "docs" / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    for source, dest in names.items():
        shutil.copyfile(SCREENSHOTS / f"{source}.png", target / f"{dest}.png")

