"""SMART on FHIR in a real browser: an administrator registers an app on its page; a patient opens
the app's authorization link, signs in, reads the consent screen (axe-audited) and allows it, and
the browser lands on the app's redirect URI with a code that Authlib's client exchanges."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.integrations.requests_client import OAuth2Session
from axe_playwright_python.sync_playwright import Axe

from hospital.seed import DEMO_PASSWORD
from tests.browser.conftest import LiveSite, login, new_page
from tests.browser.test_accessibility import audit

pytestmark = pytest.mark.browser

REDIRECT = "http://127.0.0.1:9/callback"


def test_admin_registers_an_app_and_a_patient_allows_it(browser: Any, site: LiveSite) -> None:
    admin = login(browser, site, "admin")
    admin.goto("/admin/smart-apps")
    assert audit(Axe(), admin, "SMART apps") == []
    admin.get_by_label("Name (shown on the consent screen)").fill("My results")
    admin.get_by_label("Scopes it may ask for, separated by spaces").fill("launch/patient patient/*.rs")
    admin.get_by_label("Redirect URIs (user-facing apps), one per line").fill(REDIRECT)
    admin.get_by_role("button", name="Register").click()
    notice = admin.get_by_text(re.compile("its client_id is")).inner_text()
    client_id = notice.rsplit(" ", 1)[-1]

    app = OAuth2Session(client_id, redirect_uri=REDIRECT, scope="launch/patient patient/*.rs",
                        code_challenge_method="S256", token_endpoint_auth_method="none")
    verifier = "p" * 60
    url, _ = app.create_authorization_url(site.url("/oauth/authorize"), code_verifier=verifier,
                                          aud=site.url("/fhir"))
    page = new_page(browser, site)
    page.route("http://127.0.0.1:9/**", lambda route: route.fulfill(status=200, body="the app"))
    page.goto(url)
    page.get_by_label("Username").fill("patient")
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Allow My results to use your account?").wait_for()
    assert "Read, search all record types of the selected patient" in page.locator("#consent-scopes").inner_text()
    assert audit(Axe(), page, "consent") == []
    page.get_by_role("button", name="Allow", exact=True).click()
    page.wait_for_url(re.compile(r"^http://127\.0\.0\.1:9/callback\?"))
    assert "code" in parse_qs(urlsplit(page.url).query)
    token = app.fetch_token(site.url("/oauth/token"), authorization_response=page.url, code_verifier=verifier)
    assert token["patient"] == str(site.demo.patient.id)
