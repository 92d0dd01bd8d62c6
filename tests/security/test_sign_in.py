"""Sign-in hardening (issue 13): where `next=` may send a user after signing in; lockout that
expires by itself, one answer for every failure, failures audited, tokens revoked on lock; the
client address behind a trusted proxy."""

from __future__ import annotations

import html
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from hospital.audit import OUTCOME_DENIED
from hospital.auth import (
    FIRST_LOCK_SECONDS,
    MAX_FAILED_LOGINS,
    MAX_LOCK_SECONDS,
    SIGN_IN_FAILED,
    lock_seconds,
)
from hospital.clock import utcnow
from hospital.models import AuditEvent, User
from hospital.seed import DEMO_PASSWORD, DemoSeed
from tests.conftest import make_test_app
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


# --- lockout: temporary, with backoff, one answer for every failure, audited, tokens revoked ---


def token_attempt(client: FlaskClient, username: str, password: str) -> Any:
    return client.post("/api/auth/token", json={"username": username, "password": password})


def test_every_failed_sign_in_gets_the_same_answer(client: FlaskClient, demo: DemoSeed) -> None:
    for _ in range(MAX_FAILED_LOGINS):
        token_attempt(client, "radiologist", "wrong")
    answers = {
        "unknown user": token_attempt(client, "nobody-by-this-name", "wrong"),
        "wrong password": token_attempt(client, "clinician", "wrong"),
        "locked, right password": token_attempt(client, "radiologist", DEMO_PASSWORD),
    }
    assert {r.status_code for r in answers.values()} == {401}
    assert len({r.get_json()["detail"] for r in answers.values()}) == 1, {k: r.get_json() for k, r in answers.items()}
    page = client.get("/login").get_data(as_text=True)
    token = csrf_token_of(page)
    pages = [client.post("/login", data={"username": u, "password": p, "csrf_token": token}).get_data(as_text=True)
             for u, p in (("nobody-by-this-name", "x"), ("radiologist", DEMO_PASSWORD))]
    assert all(html.escape(SIGN_IN_FAILED, quote=True) in p or SIGN_IN_FAILED in p for p in pages)


def test_a_lock_expires_by_itself_and_doubles_on_the_next_failure(
    client: FlaskClient, db_session: Session, demo: DemoSeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [utcnow()]
    monkeypatch.setattr("hospital.auth.utcnow", lambda: now[0])
    for _ in range(MAX_FAILED_LOGINS):
        assert token_attempt(client, "admin", "wrong").status_code == 401
    assert token_attempt(client, "admin", DEMO_PASSWORD).status_code == 401  # locked
    now[0] += timedelta(seconds=FIRST_LOCK_SECONDS + 1)
    assert token_attempt(client, "admin", "wrong").status_code == 401  # the lock ended; this failure re-locks
    db_session.expire_all()
    admin = db_session.scalar(select(User).where(User.username == "admin"))
    assert admin is not None and admin.locked_until == now[0] + timedelta(seconds=2 * FIRST_LOCK_SECONDS)
    now[0] += timedelta(seconds=FIRST_LOCK_SECONDS + 1)
    assert token_attempt(client, "admin", DEMO_PASSWORD).status_code == 401  # still locked: it doubled
    now[0] += timedelta(seconds=FIRST_LOCK_SECONDS)
    assert token_attempt(client, "admin", DEMO_PASSWORD).status_code == 201  # no administrator needed
    db_session.expire_all()
    assert (admin.failed_logins, admin.locked_until) == (0, None)
    assert lock_seconds(MAX_FAILED_LOGINS + 20) == MAX_LOCK_SECONDS


def test_locking_revokes_tokens_and_failures_are_audited(
    as_role: Any, client: FlaskClient, db_session: Session, demo: DemoSeed
) -> None:
    radiologist = as_role("radiologist")
    assert radiologist.get("/api/me").status_code == 200
    token_attempt(client, "no-such-user", "x")
    for _ in range(MAX_FAILED_LOGINS):
        token_attempt(client, "radiologist", "wrong")
    assert radiologist.get("/api/me").status_code == 401
    denied = db_session.scalars(select(AuditEvent).where(
        AuditEvent.outcome == OUTCOME_DENIED, AuditEvent.description.startswith("sign-in failed"))).all()
    assert len(denied) == MAX_FAILED_LOGINS + 1
    assert {e.user_id for e in denied} == {None, demo.users["radiologist"].id}
    assert "locked" in denied[-1].description and "1 token(s) revoked" in denied[-1].description


def test_behind_a_trusted_proxy_each_client_has_its_own_login_bucket(
    database_url: str, tmp_path: Any, db_session: Session, demo: DemoSeed
) -> None:
    proxied = make_test_app(database_url, tmp_path, LOGIN_ATTEMPTS_PER_MINUTE=2, TRUSTED_PROXIES=1)
    client = proxied.test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    for client_ip in ("203.0.113.7", "203.0.113.7"):
        response = client.post("/api/auth/token", json={"username": "x", "password": "y"},
                               headers={"X-Forwarded-For": client_ip}, environ_base=proxy)
        assert response.status_code == 401
    assert client.post("/api/auth/token", json={"username": "x", "password": "y"},
                       headers={"X-Forwarded-For": "203.0.113.7"}, environ_base=proxy).status_code == 429
    other = client.post("/api/auth/token", json={"username": "x", "password": "y"},
                        headers={"X-Forwarded-For": "198.51.100.9"}, environ_base=proxy)
    assert other.status_code == 401  # another client behind the same proxy is not throttled
