"""Sign-out ends the session everywhere (issue 13, finding 5): the signed cookie names a server-side
session record, and a copy of the cookie taken before signing out (or before the account was
deactivated, locked, or its password changed or reset) no longer signs anyone in."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.auth import MAX_FAILED_LOGINS
from hospital.models import BrowserSession
from hospital.seed import DEMO_PASSWORD, DemoSeed
from tests.referrals.test_referral_pages import csrf_token_of, sign_in

PAGE = "/referrals"  # any page of the clinician's
NEW_PASSWORD = "a-brand-new-passphrase-42"


def copied_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def with_cookie(client: FlaskClient, value: str) -> FlaskClient:
    other = client.application.test_client()
    other.set_cookie("session", value)
    return other


def signed_in(client: FlaskClient) -> bool:
    return client.get(PAGE).status_code == 200


def sign_out(client: FlaskClient) -> None:
    token = csrf_token_of(client.get("/account/password").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302


def test_a_cookie_copied_before_sign_out_no_longer_works(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    stolen = copied_cookie(client)
    assert signed_in(with_cookie(client, stolen))
    sign_out(client)
    assert not signed_in(client)
    assert not signed_in(with_cookie(client, stolen))
    assert with_cookie(client, stolen).get("/api/me").status_code == 401


def test_sign_out_ends_only_that_browser_s_session(client: FlaskClient, demo: DemoSeed) -> None:
    other = client.application.test_client()
    sign_in(client, "clinician")
    sign_in(other, "clinician")
    sign_out(client)
    assert signed_in(other)


def test_the_record_is_marked_revoked_and_holds_no_usable_id(
    client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    sign_in(client, "clinician")
    record = db_session.scalars(
        select(BrowserSession).where(BrowserSession.user_id == demo.users["clinician"].id)
    ).one()
    assert record.revoked_at is None
    assert record.session_sha256 not in copied_cookie(client)
    sign_out(client)
    db_session.expire_all()
    assert db_session.get(BrowserSession, record.id).revoked_at is not None  # type: ignore[union-attr]


def _admin_post(admin: FlaskClient, url: str, **data: str) -> None:
    token = csrf_token_of(admin.get("/admin/users").get_data(as_text=True))
    response = admin.post(url, data={"csrf_token": token, "confirmed": "yes", **data})
    assert response.status_code == 302, response.get_data(as_text=True)


def test_deactivation_and_a_reset_password_end_every_session(client: FlaskClient, demo: DemoSeed) -> None:
    admin = client.application.test_client()
    sign_in(admin, "admin")
    clinician_id = demo.users["clinician"].id
    sign_in(client, "clinician")
    _admin_post(admin, f"/admin/users/{clinician_id}", action="reset_password", temporary_password=NEW_PASSWORD)
    assert not signed_in(client)

    sign_in(client, "radiologist")
    radiologist_id = demo.users["radiologist"].id
    _admin_post(admin, f"/admin/users/{radiologist_id}", action="deactivate")
    _admin_post(admin, f"/admin/users/{radiologist_id}", action="reactivate")
    assert not signed_in(client)  # reactivating does not bring old sessions back


def test_a_password_change_ends_the_other_sessions_but_keeps_this_one(client: FlaskClient, demo: DemoSeed) -> None:
    elsewhere = client.application.test_client()
    sign_in(elsewhere, "clinician")
    sign_in(client, "clinician")
    before = copied_cookie(client)
    token = csrf_token_of(client.get("/account/password").get_data(as_text=True))
    response = client.post("/account/password", data={
        "csrf_token": token, "current_password": DEMO_PASSWORD, "new_password": NEW_PASSWORD,
        "confirm_password": NEW_PASSWORD,
    })
    assert response.status_code == 302, response.get_data(as_text=True)
    assert signed_in(client)
    assert not signed_in(elsewhere)
    assert not signed_in(with_cookie(client, before))  # the session id was replaced too


def test_a_lockout_ends_every_session(client: FlaskClient, demo: DemoSeed) -> None:
    sign_in(client, "clinician")
    attacker: Any = client.application.test_client()
    for _ in range(MAX_FAILED_LOGINS):
        attacker.post("/api/auth/token", json={"username": "clinician", "password": "wrong"})
    assert not signed_in(client)
