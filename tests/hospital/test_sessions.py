"""Browser sessions end: after `SESSION_IDLE_MINUTES` without a request and `SESSION_MAX_HOURS`
after signing in, with a notice on the sign-in page. Activity keeps a session alive (sliding),
without a new cookie on every response; a page's background polling does not; bearer tokens keep
their own lifetime and neither touch nor depend on the cookie.

Time is controlled by replacing `hospital.auth.utcnow` (the clock sessions and tokens read).
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from hospital.auth import BACKGROUND_REQUEST_HEADER, LAST_SEEN_STEP_SECONDS
from hospital.clock import utcnow
from hospital.config import load_config
from hospital.seed import DemoSeed
from tests.referrals.test_referral_pages import sign_in

PAGE = "/referrals"  # any page of the clinician's
IDLE_NOTICE = "You were signed out after 30 minutes without activity."
MAX_NOTICE = "You were signed out 12 hours after signing in. Sign in again to continue."


class FakeClock:
    """A 'now' that moves only when the test says so."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(utcnow())
    monkeypatch.setattr("hospital.auth.utcnow", fake)
    return fake


def sent_to_login(response: TestResponse) -> bool:
    return response.status_code == 302 and response.headers["Location"].startswith("/login?next=")


def login_page_text(client: FlaskClient) -> str:
    return html.unescape(client.get("/login").get_data(as_text=True))


def test_an_idle_session_ends_with_a_notice_on_the_sign_in_page(
    client: FlaskClient, demo: DemoSeed, clock: FakeClock
) -> None:
    sign_in(client, "clinician")
    assert client.get(PAGE).status_code == 200
    clock.advance(minutes=30)
    assert client.get(PAGE).status_code == 200  # exactly the limit is still allowed
    clock.advance(minutes=30, seconds=1)
    expired = client.get(PAGE)
    assert sent_to_login(expired) and expired.headers["Location"].startswith("/login?next=/referrals")
    assert IDLE_NOTICE in login_page_text(client)
    # The session is gone for good, and the notice is said once.
    assert sent_to_login(client.get(PAGE))
    assert IDLE_NOTICE not in login_page_text(client)
    sign_in(client, "clinician")
    assert client.get(PAGE).status_code == 200


def test_activity_keeps_the_session_alive_without_a_cookie_on_every_response(
    client: FlaskClient, demo: DemoSeed, clock: FakeClock
) -> None:
    sign_in(client, "clinician")
    assert client.get(PAGE).status_code == 200
    for _ in range(6):  # two hours in all, never 30 minutes apart
        clock.advance(minutes=20)
        response = client.get(PAGE)
        assert response.status_code == 200 and "Set-Cookie" in response.headers  # last-seen moved
    clock.advance(seconds=LAST_SEEN_STEP_SECONDS - 1)
    assert "Set-Cookie" not in client.get(PAGE).headers  # too soon to be worth a new cookie
    clock.advance(minutes=29)
    assert client.get(PAGE).status_code == 200  # idle counted from the last recorded request


def test_the_maximum_lifetime_ends_even_an_active_session(
    client: FlaskClient, demo: DemoSeed, clock: FakeClock
) -> None:
    sign_in(client, "clinician")
    for _ in range(28):  # 11 h 40 min of steady work
        clock.advance(minutes=25)
        assert client.get(PAGE).status_code == 200
    clock.advance(minutes=25)  # 12 h 5 min after signing in
    assert sent_to_login(client.get(PAGE))
    assert MAX_NOTICE in login_page_text(client)


def test_the_idle_limit_is_configurable(
    app: Flask, client: FlaskClient, demo: DemoSeed, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(app.config, "SESSION_IDLE_MINUTES", 1)
    sign_in(client, "clinician")
    clock.advance(seconds=61)
    assert sent_to_login(client.get(PAGE))
    assert "You were signed out after 1 minute without activity." in login_page_text(client)


def test_background_polling_does_not_keep_a_session_alive(
    client: FlaskClient, demo: DemoSeed, clock: FakeClock
) -> None:
    sign_in(client, "clinician")
    polling = {BACKGROUND_REQUEST_HEADER: "1"}
    for _ in range(2):
        clock.advance(minutes=14)
        poll = client.get("/api/me", headers=polling)
        assert poll.status_code == 200 and "Set-Cookie" not in poll.headers  # last-seen stays put
    clock.advance(minutes=3)
    # 31 minutes since the user last did anything: the poll itself finds the session over (the
    # page's script then reloads, which leads to the sign-in page with the notice).
    assert client.get("/api/me", headers=polling).status_code == 401
    assert sent_to_login(client.get(PAGE))
    assert IDLE_NOTICE in login_page_text(client)


def test_bearer_tokens_neither_expire_with_nor_refresh_the_cookie(
    client: FlaskClient, demo: DemoSeed, clock: FakeClock, as_role: Any
) -> None:
    api = as_role("radiologist")  # issued under the fake clock: an 8-hour token
    sign_in(client, "clinician")
    clock.advance(minutes=20)
    # A bearer call from the browser that holds the cookie: the token decides, the cookie is left as it is.
    me = client.get("/api/me", headers=api.headers)
    assert me.get_json()["role"] == "radiologist" and "Set-Cookie" not in me.headers
    clock.advance(minutes=15)
    assert sent_to_login(client.get(PAGE))  # 35 minutes since the cookie's last page
    clock.advance(hours=5)
    assert api.get("/api/me").status_code == 200  # idle means nothing to a token


def test_a_cookie_without_sign_in_times_is_signed_out(client: FlaskClient, demo: DemoSeed) -> None:
    with client.session_transaction() as cookie:
        cookie["user_id"] = demo.users["clinician"].id  # as signed in before sessions carried times
    assert sent_to_login(client.get(PAGE))
    assert "Your session has ended. Sign in again to continue." in login_page_text(client)


def test_session_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", "x")
    defaults = load_config()
    assert (defaults["SESSION_IDLE_MINUTES"], defaults["SESSION_MAX_HOURS"], defaults["SESSION_COOKIE_SECURE"]) == (
        30, 12, False)
    monkeypatch.setenv("SESSION_IDLE_MINUTES", "10")
    monkeypatch.setenv("SESSION_MAX_HOURS", "8")
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "true")
    configured = load_config()
    assert (configured["SESSION_IDLE_MINUTES"], configured["SESSION_MAX_HOURS"], configured["SESSION_COOKIE_SECURE"]) == (
        10, 8, True)
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "maybe")
    with pytest.raises(ValueError, match="SESSION_COOKIE_SECURE must be true or false"):
        load_config()
    monkeypatch.setenv("SESSION_COOKIE_SECURE", "off")
    monkeypatch.setenv("SESSION_IDLE_MINUTES", "0")
    with pytest.raises(ValueError, match="SESSION_IDLE_MINUTES must be at least 1"):
        load_config()
