"""The administrator's HL7 page in headless Chromium, at desktop and at phone width: an order from
an unmapped centre is seen, its centre mapped on the code-map page, the order replayed (after the
browser asks), and it is accepted; in Chinese at phone width the page does not scroll sideways."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from hospital.db import get_db
from integration.hl7_inbound import receive_message
from referrals.models import Referral
from tests.browser.conftest import LiveSite, has_horizontal_scroll, login, screenshot
from tests.integration.test_hl7_listener import orm

pytestmark = pytest.mark.browser


def test_admin_maps_a_centre_and_replays_an_order(browser: Any, site: LiveSite) -> None:
    with site.app.app_context():
        receive_message(site.app, orm("CTRL-B1").replace("|RIS|RIVERSIDE|", "|RIS|NORTHSIDE|").encode())
    admin = login(browser, site, "admin")
    admin.goto("/admin/hl7")
    row = admin.locator("#messages tr", has_text="CTRL-B1")
    expect(row).to_contain_text("AE")
    expect(row).to_contain_text("NORTHSIDE")
    screenshot(admin, "hl7-admin")

    admin.get_by_role("link", name="Code maps").click()
    admin.locator("#centre-code").fill("NORTHSIDE")
    admin.locator("#map-centre").get_by_role("button", name="Save").click()
    expect(admin.locator("#code-maps tr[data-code='NORTHSIDE']")).to_be_visible()
    admin.locator("#provider-code").fill("P123")  # the ordering provider, too (the demo maps no codes)
    admin.locator("#provider-target").select_option(str(site.demo.users["clinician"].practitioner_id))
    admin.locator("#map-provider").get_by_role("button", name="Save").click()
    expect(admin.locator("#code-maps tr[data-code='P123']")).to_be_visible()

    admin.goto("/admin/hl7")
    admin.locator("#messages tr", has_text="CTRL-B1").get_by_role("link").click()
    expect(admin.locator("#raw")).to_contain_text("MSH|^~\\&|EPIC|GENHOSP|RIS|NORTHSIDE|")
    admin.once("dialog", lambda dialog: dialog.accept())  # it asks first
    admin.get_by_role("button", name="Replay").click()
    expect(admin.locator(".flash")).to_contain_text("accepted (AA)")
    expect(admin.get_by_role("button", name="Replay")).to_have_count(0)
    with get_db(site.app).transaction() as session:
        assert session.scalar(select(func.count()).select_from(Referral)) == 1


def test_the_hl7_page_at_phone_width_in_chinese(browser: Any, site: LiveSite) -> None:
    with site.app.app_context():
        receive_message(site.app, b"PID|1||X^^^^MR||Doe^Jane\rORC|NW|1\r")
    phone = login(browser, site, "admin", width=390, height=844)
    phone.get_by_role("button", name="中文").click()
    phone.goto("/admin/hl7")
    expect(phone.get_by_role("heading", name="HL7 消息")).to_be_visible()
    expect(phone.locator("#messages tr[data-message-id]")).to_have_count(1)
    assert not has_horizontal_scroll(phone), "the HL7 page scrolls sideways at phone width"
    phone.locator("#messages tr[data-message-id] a").click()
    # Measured once the message's page has loaded with its stylesheet, not mid-navigation.
    expect(phone.locator("#raw")).to_contain_text("PID|1||X^^^^MR")
    phone.wait_for_load_state("load")
    assert not has_horizontal_scroll(phone), "the raw message scrolls the whole page sideways at phone width"
    screenshot(phone, "hl7-message-phone-zh")
