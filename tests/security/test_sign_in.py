"""Sign-in hardening (issue 13): where `next=` may send a user after signing in."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from hospital.seed import DEMO_PASSWORD, DemoSeed
from tests.referrals.test_referral_pages import csrf_token_of


def sign_in_with_next(client: FlaskClient, next_param: str) -> str:
    token = csrf_token_of(client.get("/login").get_data(as_text=True))
    response = client.post(f"/login?next={next_param}",
                           data={"username": "clinician", "password": DEMO_PASSWORD, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    return response.headers["Location"]


@pytest.mark.parametrize("next_param", [
    "/%09/evil.example", "/%0a/evil.example", "/%0d%0a/evil.example", "%09//evil.example", "/%5Cevil.example",
    "%5C%5Cevil.example", "//evil.example", "https://evil.example/", "https:evil.example", "/%20/evil.example",
    "javascript:alert(1)", "%2F%2Fevil.example", "/\\/evil.example",
])
def test_next_never_leaves_the_site(client: FlaskClient, demo: DemoSeed, next_param: str) -> None:
    location = sign_in_with_next(client, next_param)
    assert location == "/", f"next={next_param} sent the user to {location!r}"


def test_next_keeps_a_same_site_path(client: FlaskClient, demo: DemoSeed) -> None:
    assert sign_in_with_next(client, "/referrals%3Fstatus%3Dactive") == "/referrals?status=active"
